#pragma once
// Emulated twin of csrc/common/cuda_intrinsics.cuh: the same names and signatures, executed by
// the emulator's runtime (warp collectives on CPU fibers, deferred cp.async, checked accesses).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"
#include "emulation/runtime.h"

#ifndef __CUDA_ARCH__
#error "emulated kernel builds define __CUDA_ARCH__ (800 or 890): the arch whose code they run"
#endif

// The launch's dynamic shared memory (the runtime sized it from the launch configuration).
#define DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(type, name) \
  type* const name = static_cast<type*>(::dsa_emu::dynamic_shared_memory())
// Each static array is its own bounds-checked region, the same one for every thread of the CTA.
#define DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(type, name, count) \
  type* const name = static_cast<type*>(                     \
      ::dsa_emu::static_shared_array(#name, sizeof(type) * (count), alignof(type)))

namespace deepseek_attn {
namespace cuda {

inline uint32_t shared_address(const void* pointer) {
  return dsa_emu::shared_window_address(pointer);
}

inline void cp_async_16(void* shared, const void* global, bool valid) {
  dsa_emu::cp_async(shared, global, 16, valid ? 16 : 0);
}

inline void cp_async_commit() { dsa_emu::cp_async_commit(); }

template <int kPending>
inline void cp_async_wait() {
  dsa_emu::cp_async_wait(kPending);
}

inline void ldmatrix_x4(uint32_t (&regs)[4], const void* shared) {
  dsa_emu::ldmatrix(regs, 4, false, shared);
}

inline void ldmatrix_x4_trans(uint32_t (&regs)[4], const void* shared) {
  dsa_emu::ldmatrix(regs, 4, true, shared);
}

template <DType kDType>
inline void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  dsa_emu::mma_m16n8k16(acc, a, b0, b1, kDType == DType::kBFloat16);
}

#if __CUDA_ARCH__ >= 890
inline void mma_16x8x32_e4m3(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  dsa_emu::mma_m16n8k32_e4m3(acc, a, b0, b1);
}
#endif

}  // namespace cuda
}  // namespace deepseek_attn
