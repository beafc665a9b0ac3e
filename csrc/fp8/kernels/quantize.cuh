#pragma once
// FP8 quantisers of SPEC §2 on CUDA, bit-exact with the CPU path and the reference:
//   quantize_act_kernel     one warp per 1 x group slice of a row: vector loads kept in
//                           registers, warp-shuffle amax, one pass over global memory;
//   quantize_weight_kernel  one CTA per group x group block: amax pass, then the cast pass.
// The rule itself (NaN-propagating amax, IEEE division, ue8m0 rounding) is common/fp8.h.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "common/cuda_intrinsics.cuh"
#include "common/element.cuh"
#include "common/fp8.h"
#include "fp8/params.h"

namespace deepseek_attn {
namespace cuda {


// kVec consecutive elements as floats (kVec = 4: one 16- or 8-byte load; kVec = 1: scalar).
template <int kVec, typename T>
__device__ __forceinline__ void load_as_float(const T* source, float (&values)[kVec]) {
  if constexpr (kVec == 4 && sizeof(T) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(source);
    values[0] = v.x, values[1] = v.y, values[2] = v.z, values[3] = v.w;
  } else if constexpr (kVec == 4) {
    const uint2 raw = *reinterpret_cast<const uint2*>(source);
    const T* halves = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) values[i] = float(halves[i]);
  } else {
    values[0] = float(source[0]);
  }
}

__device__ __forceinline__ uint8_t to_e4m3(float x, float scale) {
  return static_cast<uint8_t>(
      __nv_cvt_float_to_fp8(fp8_scaled_and_clamped(x, scale), __NV_SATFINITE, __NV_E4M3));
}

template <int kVec>
__device__ __forceinline__ void store_e4m3(uint8_t* destination, const float (&values)[kVec],
                                           float scale) {
  if constexpr (kVec == 4) {
    uint32_t packed = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) packed |= uint32_t(to_e4m3(values[i], scale)) << (8 * i);
    *reinterpret_cast<uint32_t*>(destination) = packed;
  } else {
    destination[0] = to_e4m3(values[0], scale);
  }
}

// amax of two partial maxima, NaN winning (as torch.amax).
__device__ __forceinline__ float combine_amax(float a, float b) {
  return (a != a || b != b) ? __int_as_float(0x7fffffff) : fmaxf(a, b);
}

__device__ __forceinline__ float warp_amax(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value = combine_amax(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

constexpr int kQuantizeWarps = 8;
constexpr int kMaxGroup = 1024;

template <DType kSource, int kVec>
__global__ void __launch_bounds__(kQuantizeWarps * 32)
    quantize_act_kernel(const Fp8QuantizeParams p) {
  using T = Element<kSource>;
  constexpr int kMaxChunks = kMaxGroup / (32 * kVec);
  const int lane = threadIdx.x % 32;
  const int64_t groups = (p.cols + p.group - 1) / p.group;
  const int64_t task = int64_t(blockIdx.x) * kQuantizeWarps + threadIdx.x / 32;
  if (task >= p.rows * groups) return;
  const int64_t row = task / groups;
  const int64_t col0 = (task % groups) * p.group;
  const int64_t col1 = col0 + p.group < p.cols ? col0 + p.group : p.cols;
  const T* x = static_cast<const T*>(p.x) + row * p.cols;

  float values[kMaxChunks][kVec];
  float amax = 0.f;
#pragma unroll
  for (int chunk = 0; chunk < kMaxChunks; ++chunk) {
    const int64_t col = col0 + (int64_t(chunk) * 32 + lane) * kVec;
    if (col < col1) {
      load_as_float<kVec>(x + col, values[chunk]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) amax = nan_propagating_absmax(amax, values[chunk][i]);
    }
  }
  const float scale = fp8_scale_from_amax(warp_amax(amax), p.ue8m0);
  if (lane == 0) p.scales[task] = scale;
#pragma unroll
  for (int chunk = 0; chunk < kMaxChunks; ++chunk) {
    const int64_t col = col0 + (int64_t(chunk) * 32 + lane) * kVec;
    if (col < col1) store_e4m3<kVec>(p.payload + row * p.cols + col, values[chunk], scale);
  }
}

constexpr int kWeightThreads = 256;

template <DType kSource, int kVec>
__global__ void __launch_bounds__(kWeightThreads)
    quantize_weight_kernel(const Fp8QuantizeParams p) {
  using T = Element<kSource>;
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(float, warp_maxima, kWeightThreads / 32);
  const int64_t block_cols = (p.cols + p.group - 1) / p.group;
  const int64_t r0 = int64_t(blockIdx.x / block_cols) * p.group;
  const int64_t c0 = int64_t(blockIdx.x % block_cols) * p.group;
  const int64_t r1 = r0 + p.group < p.rows ? r0 + p.group : p.rows;
  const int64_t c1 = c0 + p.group < p.cols ? c0 + p.group : p.cols;
  const int64_t chunks_per_row = (c1 - c0 + kVec - 1) / kVec;
  const int64_t chunks = (r1 - r0) * chunks_per_row;
  const T* x = static_cast<const T*>(p.x);

  float amax = 0.f;
  for (int64_t chunk = threadIdx.x; chunk < chunks; chunk += kWeightThreads) {
    float values[kVec];
    const int64_t offset =
        (r0 + chunk / chunks_per_row) * p.cols + c0 + (chunk % chunks_per_row) * kVec;
    load_as_float<kVec>(x + offset, values);
#pragma unroll
    for (int i = 0; i < kVec; ++i) amax = nan_propagating_absmax(amax, values[i]);
  }
  amax = warp_amax(amax);
  if (threadIdx.x % 32 == 0) warp_maxima[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_maxima[0];
#pragma unroll
  for (int w = 1; w < kWeightThreads / 32; ++w) amax = combine_amax(amax, warp_maxima[w]);
  const float scale = fp8_scale_from_amax(amax, p.ue8m0);
  if (threadIdx.x == 0) p.scales[blockIdx.x] = scale;

  for (int64_t chunk = threadIdx.x; chunk < chunks; chunk += kWeightThreads) {
    float values[kVec];
    const int64_t offset =
        (r0 + chunk / chunks_per_row) * p.cols + c0 + (chunk % chunks_per_row) * kVec;
    load_as_float<kVec>(x + offset, values);
    store_e4m3<kVec>(p.payload + offset, values, scale);
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
