#pragma once
// Plain descriptions of the FP8 ops (SPEC §2) for the CUDA kernels; no torch types.

#include <cstdint>

namespace deepseek_attn {

// Input dtypes of the quantisers.
enum class Fp8Source { kFloat32, kBFloat16, kFloat16 };
// Output dtypes of fp8_gemm.
enum class Fp8GemmOut { kBFloat16, kFloat16, kFloat32 };

struct Fp8QuantizeParams {
  const void* x = nullptr;   // (rows, cols) contiguous
  uint8_t* payload = nullptr;  // (rows, cols) e4m3 bytes
  float* scales = nullptr;   // act: (rows, ceil(cols/group)); weight: (ceil(rows/b), ceil(cols/b))
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t group = 128;       // 1 x group for activations, group x group for weights
  bool ue8m0 = false;
};

struct Fp8GemmParams {
  const uint8_t* a = nullptr;  // (M, K) e4m3, row-major, K a multiple of 16
  const uint8_t* b = nullptr;  // (N, K) e4m3, row-major
  const float* a_scales = nullptr;  // (M, K/128 rounded up), contiguous
  const float* b_scales = nullptr;  // (ceil(N/128) or N, K/128 rounded up), contiguous
  void* out = nullptr;              // (M, N), contiguous
  int64_t m = 0, n = 0, k = 0, k_blocks = 0;
  bool b_row_scaled = false;        // 1x128 row scales instead of 128x128 blocks
};

}  // namespace deepseek_attn
