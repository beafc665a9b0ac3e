#pragma once
// Plain descriptions of the FP8 ops (SPEC §2) for the CUDA kernels; no torch types.

#include <cstdint>

#include "common/dtype.h"

namespace deepseek_attn {

// How fp8_gemm's B operand is scaled: one scale per 128 x 128 block (weights) or per 1 x 128
// row group (activations, as in weight gradients).
enum class Fp8BScaling { kBlock128, kRow };

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
  Fp8BScaling b_scaling = Fp8BScaling::kBlock128;
};

}  // namespace deepseek_attn
