#pragma once
// MLA's fused latent epilogue (SPEC §3) on CUDA: one warp per row of `dim` values.
//   norm_rope_kernel      sum of squares (warp shuffle), then one pass writing y = the norm
//                         times the weight | copied columns | interleaved RoPE, and the row's
//                         cache slot: the same values, or SPEC §3's FP8 row (four ue8m0-scaled
//                         e4m3 groups of 128 read back from y, then k_pe in bf16);
//   norm_rope_bwd_kernel  warps stride over rows; each adds its rows' weight gradient into its
//                         own partial row (no atomics: the caller's sum is deterministic).
// The FP8 rule and conversions are the quantisers' (fp8/kernels/quantize.cuh).

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "common/cuda_mma.cuh"
#include "common/element.cuh"
#include "fp8/kernels/quantize.cuh"
#include "mla/params.h"

namespace deepseek_attn {
namespace cuda {

constexpr int kNormRopeWarps = 8;

// One token's y row (already written by this warp) as SPEC §3's 656-byte FP8 row.
template <typename T>
__device__ __forceinline__ void write_latent_fp8_row(const T* y, uint8_t* row, int lane) {
  using Layout = LatentFp8RowLayout;
#pragma unroll
  for (int group = 0; group < Layout::kValues / Layout::kGroup; ++group) {
    float values[4];
    const int col = group * Layout::kGroup + lane * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) values[i] = float(y[col + i]);
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) amax = nan_propagating_absmax(amax, values[i]);
    const float scale = fp8_scale_from_amax(warp_amax(amax), true);
    store_e4m3<4>(row + col, values, scale);
    if (lane == 0) *reinterpret_cast<float*>(row + Layout::kScalesOffset + 4 * group) = scale;
  }
  const int col = Layout::kValues + 2 * lane;  // 32 lanes x 2 = the 64 k_pe values
  const __nv_bfloat16 pair[2] = {__nv_bfloat16(float(y[col])), __nv_bfloat16(float(y[col + 1]))};
  uint32_t bits;
  memcpy(&bits, pair, sizeof(bits));
  *reinterpret_cast<uint32_t*>(row + Layout::kRopeOffset + 4 * lane) = bits;
}

template <DType kType>
__global__ void __launch_bounds__(kNormRopeWarps * 32) norm_rope_kernel(const NormRopeParams p) {
  using T = Element<kType>;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kNormRopeWarps + threadIdx.x / 32;
  if (row >= p.tokens * p.groups) return;
  const int64_t token = row / p.groups;
  const T* x = static_cast<const T*>(p.x) + row * p.dim;
  T* y = static_cast<T*>(p.y) + row * p.dim;

  float rstd = 1.f;
  if (p.norm_dim > 0) {
    float sum = 0.f;
    for (int64_t c = lane; c < p.norm_dim; c += 32) sum += float(x[c]) * float(x[c]);
    rstd = __fdiv_rn(1.f, sqrtf(__fdiv_rn(warp_sum(sum), float(p.norm_dim)) + p.eps));
    const T* weight = static_cast<const T*>(p.norm_weight);
    for (int64_t c = lane; c < p.norm_dim; c += 32) y[c] = T(float(x[c]) * rstd * float(weight[c]));
  }
  if (lane == 0) p.rstd[row] = rstd;
  const int64_t rope0 = p.dim - 2 * p.rope_pairs;
  for (int64_t c = p.norm_dim + lane; c < rope0; c += 32) y[c] = x[c];
  for (int64_t i = lane; i < p.rope_pairs; i += 32) {
    const float x0 = float(x[rope0 + 2 * i]), x1 = float(x[rope0 + 2 * i + 1]);
    const float c = p.cos[token * p.rope_pairs + i], s = p.sin[token * p.rope_pairs + i];
    y[rope0 + 2 * i] = T(x0 * c - x1 * s);
    y[rope0 + 2 * i + 1] = T(x0 * s + x1 * c);
  }
  if (p.cache_write == LatentCacheWrite::kNone) return;
  const int64_t slot = p.slots[token];
  if (slot < 0 || slot >= p.cache_rows) return;  // empty or out of range: skipped (SPEC §0)
  __syncwarp();  // the row's y values, written by every lane, are read back below
  if (p.cache_write == LatentCacheWrite::kRows) {
    T* destination = static_cast<T*>(p.cache) + slot * p.dim;
    for (int64_t c = lane; c < p.dim; c += 32) destination[c] = y[c];
  } else {
    write_latent_fp8_row(y, static_cast<uint8_t*>(p.cache) + slot * LatentFp8RowLayout::kRowBytes,
                         lane);
  }
}

template <DType kType>
__global__ void __launch_bounds__(kNormRopeWarps * 32)
    norm_rope_bwd_kernel(const NormRopeBwdParams p) {
  using T = Element<kType>;
  const int lane = threadIdx.x % 32;
  const int64_t worker = int64_t(blockIdx.x) * kNormRopeWarps + threadIdx.x / 32;
  if (worker >= p.workers) return;
  const T* weight = static_cast<const T*>(p.norm_weight);
  float* dweight = p.dweight_partials + worker * p.norm_dim;
  const int64_t rope0 = p.dim - 2 * p.rope_pairs;
  for (int64_t row = worker; row < p.tokens * p.groups; row += p.workers) {
    const T* dy = static_cast<const T*>(p.dy) + row * p.dim;
    const T* x = static_cast<const T*>(p.x) + row * p.dim;
    T* dx = static_cast<T*>(p.dx) + row * p.dim;
    if (p.norm_dim > 0) {
      const float rstd = p.rstd[row];
      float dot = 0.f;
      for (int64_t c = lane; c < p.norm_dim; c += 32) {
        dot += float(dy[c]) * float(weight[c]) * float(x[c]) * rstd;
      }
      const float mean = __fdiv_rn(warp_sum(dot), float(p.norm_dim));
      for (int64_t c = lane; c < p.norm_dim; c += 32) {
        const float normed = float(x[c]) * rstd;
        dx[c] = T(rstd * (float(dy[c]) * float(weight[c]) - normed * mean));
        dweight[c] += float(dy[c]) * normed;
      }
    }
    for (int64_t c = p.norm_dim + lane; c < rope0; c += 32) dx[c] = dy[c];
    const int64_t token = row / p.groups;
    for (int64_t i = lane; i < p.rope_pairs; i += 32) {
      const float g0 = float(dy[rope0 + 2 * i]), g1 = float(dy[rope0 + 2 * i + 1]);
      const float c = p.cos[token * p.rope_pairs + i], s = p.sin[token * p.rope_pairs + i];
      dx[rope0 + 2 * i] = T(g0 * c + g1 * s);
      dx[rope0 + 2 * i + 1] = T(g1 * c - g0 * s);
    }
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
