#pragma once
// Thin wrappers over the sm80+ PTX the tiled kernels use: cp.async (global -> shared with
// zero-fill), ldmatrix, and mma.sync m16n8k16 with fp32 accumulation. No torch headers.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), lane = 4*group + quad:
//   A (16x16, row-major): a0 (row group, cols 2quad..+1), a1 (row group+8), a2 (cols +8), a3
//   B (16x8,  col-major): b0 (rows 2quad..+1, col group), b1 (rows +8)
//   C (16x8,  fp32):      c0,c1 (row group, cols 2quad..+1), c2,c3 (row group+8)

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace deepseek_attn {
namespace cuda {

// The 16-bit element type of a kernel instantiation (kIsBf16 keeps host code free of CUDA types).
template <bool kIsBf16>
struct Element16;
template <>
struct Element16<true> {
  using type = __nv_bfloat16;
};
template <>
struct Element16<false> {
  using type = __half;
};

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Copies 16 bytes global -> shared asynchronously; writes zeros instead when !valid
// (rows past the end of a sequence must read as 0, never as stale NaN).
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
  const int source_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)),
               "l"(global), "r"(source_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

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

// Four 8x8 b16 matrices; lane i gives the address of row (i % 8) of matrix (i / 8).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&regs)[4], const void* shared) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3])
               : "r"(shared_address(shared)));
}

// As ldmatrix_x4, each 8x8 matrix transposed on the way (row-major k x n -> B fragment).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&regs)[4], const void* shared) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3])
               : "r"(shared_address(shared)));
}

// acc += A (16x16) * B (16x8), fp32 accumulation.
template <bool kIsBf16>
__device__ __forceinline__ void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
  if constexpr (kIsBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats rounded to the 16-bit type and packed, `low` in the low half (lower column).
template <bool kIsBf16>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  uint32_t packed;
  if constexpr (kIsBf16) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    packed = *reinterpret_cast<const uint32_t*>(&pair);
  } else {
    const __half2 pair = __floats2half2_rn(low, high);
    packed = *reinterpret_cast<const uint32_t*>(&pair);
  }
  return packed;
}

template <bool kIsBf16>
__device__ __forceinline__ float2 unpack_pair(uint32_t packed) {
  if constexpr (kIsBf16) {
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

}  // namespace cuda
}  // namespace deepseek_attn
