#pragma once
// Emulated twin of csrc/common/cuda_hopper_intrinsics.cuh: the same names and signatures, and
// the same operand modes as the real wrappers' PTX (the immediates of each wgmma: scale-a/b 1,
// A and B K-major for the _ss and e4m3 forms, B transposed (MN-major) for the _rs form),
// executed by the emulator's runtime.

#include <cuda.h>

#include <cstdint>

#include "common/cuda_intrinsics.cuh"
#include "emulation/runtime.h"

namespace deepseek_attn {
namespace cuda {

inline void mbarrier_init(uint64_t* barrier, int arrivals) {
  dsa_emu::mbarrier_init(barrier, arrivals);
}
inline void mbarrier_init_fence() { dsa_emu::mbarrier_init_fence(); }
inline void mbarrier_arrive_expect_bytes(uint64_t* barrier, uint32_t bytes) {
  dsa_emu::mbarrier_arrive(barrier, bytes);
}
inline void mbarrier_arrive(uint64_t* barrier) { dsa_emu::mbarrier_arrive(barrier, 0); }
inline void mbarrier_wait(uint64_t* barrier, uint32_t parity) {
  dsa_emu::mbarrier_wait(barrier, parity);
}

inline void tma_load_4d(void* shared, const CUtensorMap* map, uint64_t* barrier, int c0, int c1,
                        int c2, int c3) {
  const int coords[4] = {c0, c1, c2, c3};
  dsa_emu::tma_load(shared, map, barrier, coords, 4);
}
inline void tma_load_2d(void* shared, const CUtensorMap* map, uint64_t* barrier, int c0, int c1) {
  const int coords[2] = {c0, c1};
  dsa_emu::tma_load(shared, map, barrier, coords, 2);
}

template <int kRegisters>
inline void warpgroup_registers_decrease() {
  dsa_emu::set_max_registers(kRegisters, false);
}
template <int kRegisters>
inline void warpgroup_registers_increase() {
  dsa_emu::set_max_registers(kRegisters, true);
}

inline void wgmma_fence() { dsa_emu::wgmma_fence(); }
inline void wgmma_commit() { dsa_emu::wgmma_commit(); }
inline void wgmma_wait_all() { dsa_emu::wgmma_wait(0); }
// The real one keeps the compiler from moving accumulator accesses across asynchronous wgmma;
// here the accumulators escape into the runtime, which the compiler cannot see through.
template <int kTiles>
inline void wgmma_pin(float (&)[kTiles][4]) {}

// An m64n128 wgmma into `d`; A comes from `a_registers` when given, else from `desc_a`.
inline void wgmma_m64n128(float (&d)[16][4], dsa_emu::WgmmaType type, const uint32_t* a_registers,
                          uint64_t desc_a, uint64_t desc_b, bool b_k_major, bool accumulate) {
  dsa_emu::WgmmaIssue issue;
  issue.n = 128;
  issue.type = type;
  issue.accumulators = &d[0][0];
  issue.a_registers = a_registers;
  issue.a_descriptor = desc_a;
  issue.b_descriptor = desc_b;
  issue.b_k_major = b_k_major;
  issue.accumulate = accumulate;
  dsa_emu::wgmma_mma_async(issue);
}

template <DType kDType>
constexpr dsa_emu::WgmmaType k16_type =
    kDType == DType::kBFloat16 ? dsa_emu::WgmmaType::kBf16 : dsa_emu::WgmmaType::kFp16;

template <DType kDType>
inline void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b,
                                bool accumulate) {
  wgmma_m64n128(d, k16_type<kDType>, nullptr, desc_a, desc_b, true, accumulate);
}

inline void wgmma_m64n128k32_e4m3(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b,
                                  bool accumulate) {
  wgmma_m64n128(d, dsa_emu::WgmmaType::kE4m3, nullptr, desc_a, desc_b, true, accumulate);
}

template <DType kDType>
inline void wgmma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b,
                                bool accumulate) {
  wgmma_m64n128(d, k16_type<kDType>, a, 0, desc_b, false, accumulate);
}

}  // namespace cuda
}  // namespace deepseek_attn
