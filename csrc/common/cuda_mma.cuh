#pragma once
// Register-level helpers of the tiled kernels on top of the PTX wrappers in cuda_intrinsics.cuh:
// the two-stage cp.async pipeline step, fp32 <-> packed 16-bit pairs, quad reductions over the
// lanes of one C-fragment row and warp sums. No torch headers.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), lane = 4*group + quad:
//   A (16x16, row-major): a0 (row group, cols 2quad..+1), a1 (row group+8), a2 (cols +8), a3
//   B (16x8,  col-major): b0 (rows 2quad..+1, col group), b1 (rows +8)
//   C (16x8,  fp32):      c0,c1 (row group, cols 2quad..+1), c2,c3 (row group+8)

#include <cstdint>

#include "common/cuda_intrinsics.cuh"
#include "common/element.cuh"

namespace deepseek_attn {
namespace cuda {

// One step of a two-stage cp.async pipeline over steps [first, end): starts loading step + 1
// into the other stage (when there is one), waits for `step`'s stage and syncs the block so
// every thread sees it. Returns the stage that holds `step`.
template <class LoadStage>
__device__ __forceinline__ int cp_async_double_buffer_step(int64_t step, int64_t first,
                                                           int64_t end, LoadStage&& load_stage) {
  const int stage = int((step - first) % 2);
  if (step + 1 < end) {  // prefetch the next step while this one is used
    load_stage(stage ^ 1, step + 1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
  return stage;
}

// Two floats rounded to the 16-bit type and packed, `low` in the low half (lower column).
template <DType kDType>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  uint32_t packed;
  if constexpr (kDType == DType::kBFloat16) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    packed = *reinterpret_cast<const uint32_t*>(&pair);
  } else {
    const __half2 pair = __floats2half2_rn(low, high);
    packed = *reinterpret_cast<const uint32_t*>(&pair);
  }
  return packed;
}

template <DType kDType>
__device__ __forceinline__ float2 unpack_pair(uint32_t packed) {
  if constexpr (kDType == DType::kBFloat16) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(&packed));
  }
}

// Max / sum over the four lanes of a quad (the lanes holding one row of a C fragment).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Sum over the 32 lanes of a warp (every lane gets it).
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

}  // namespace cuda
}  // namespace deepseek_attn
