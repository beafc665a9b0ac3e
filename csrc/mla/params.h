#pragma once
// Plain descriptions of MLA's fused latent epilogue (SPEC §3) for the CUDA kernels; no torch types.
//
// mla_norm_rope runs on each row of `dim` values after a projection GEMM:
//   cols [0, norm_dim)                   RMSNorm (fp32 statistics) times the norm weight;
//   cols [norm_dim, dim - 2·rope_pairs)  copied;
//   cols [dim - 2·rope_pairs, dim)       interleaved RoPE: pair (2i, 2i+1) rotated by angle i;
// and may write each token's row straight into a latent KV cache slot (bf16/fp16/fp32 rows of
// `dim` values, or SPEC §3's 656-byte FP8 rows quantised on the fly).

#include <cstdint>

#include "common/dtype.h"

namespace deepseek_attn {

enum class LatentCacheWrite : uint8_t { kNone, kRows, kFp8 };

// SPEC §3 FP8 row: 512 e4m3 values, four fp32 scales (one per 128), then 64 bf16 values.
struct LatentFp8RowLayout {
  static constexpr int kValues = 512;
  static constexpr int kGroup = 128;
  static constexpr int kRopeValues = 64;
  static constexpr int kScalesOffset = kValues;
  static constexpr int kRopeOffset = kScalesOffset + 4 * (kValues / kGroup);
  static constexpr int kRowBytes = kRopeOffset + 2 * kRopeValues;  // 656
};

struct NormRopeParams {
  const void* x = nullptr;            // (tokens, groups, dim), contiguous
  void* y = nullptr;                  // like x
  float* rstd = nullptr;              // (tokens, groups): 1/sqrt(mean(x²) + eps), or 1
  const void* norm_weight = nullptr;  // (norm_dim,) in x's dtype
  const float* cos = nullptr;         // (tokens, rope_pairs); tables and rstd are fp64 on CPU
                                      // for fp64 x
  const float* sin = nullptr;
  void* cache = nullptr;           // (cache_rows, dim) in x's dtype, or (cache_rows, 656) bytes
  const int64_t* slots = nullptr;  // (tokens,): the cache row of each token; others skipped
  int64_t cache_rows = 0;
  int64_t tokens = 0, groups = 1, dim = 0, norm_dim = 0, rope_pairs = 0;
  float eps = 1e-6f;
  LatentCacheWrite cache_write = LatentCacheWrite::kNone;
};

// The backward: dx from dy (the transposed rotation, the RMSNorm backward), and the norm
// weight's gradient as one partial row per worker, summed by the caller (deterministic).
struct NormRopeBwdParams {
  const void* dy = nullptr;  // (tokens, groups, dim), contiguous, x's dtype
  const void* x = nullptr;
  const void* norm_weight = nullptr;
  const float* rstd = nullptr;
  const float* cos = nullptr;
  const float* sin = nullptr;
  void* dx = nullptr;
  float* dweight_partials = nullptr;  // (workers, norm_dim), zeroed
  int64_t workers = 0;
  int64_t tokens = 0, groups = 1, dim = 0, norm_dim = 0, rope_pairs = 0;
};

}  // namespace deepseek_attn
