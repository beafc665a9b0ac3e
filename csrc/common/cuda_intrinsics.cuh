#pragma once
// Every device intrinsic our kernels reach through inline PTX or a CUDA-only declaration:
// cp.async (global -> shared with zero-fill), ldmatrix, mma.sync (f16/bf16 m16n8k16, e4m3
// m16n8k32; fp32 accumulation) and the dynamic shared-memory declaration. Kernels use nothing
// else that the CPU emulator could not compile: csrc/emulation/include/common/ holds this
// header's emulated twin with the same names, and emulated builds find it first.
// Fragment layouts: csrc/emulation/fragments.h (PTX ISA tables, checked against CuTe).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"

// The kernel's dynamic shared memory as `type name[]`, 16-byte aligned.
#define DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(type, name) extern __shared__ __align__(16) type name[]
// A statically sized shared array `type name[count]`.
#define DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(type, name, count) __shared__ type name[count]

namespace deepseek_attn {
namespace cuda {

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
template <DType kDType>
__device__ __forceinline__ void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
  if constexpr (kDType == DType::kBFloat16) {
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

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
// acc += A (16x32 e4m3) * B (32x8 e4m3), fp32 accumulation (sm89+ FP8 tensor cores).
__device__ __forceinline__ void mma_16x8x32_e4m3(float (&acc)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

}  // namespace cuda
}  // namespace deepseek_attn
