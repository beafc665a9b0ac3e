#pragma once
// The sm90a PTX our Hopper kernels issue, one wrapper per instruction: mbarriers, TMA tile loads
// (bulk tensor copies completing on an mbarrier), register reallocation between warpgroups, and
// warpgroup MMA (wgmma) with its fence/commit/wait. Like cuda_intrinsics.cuh it has an emulated
// twin (csrc/emulation/include/common/) with the same names and the same operand modes, so the
// CPU emulator runs the kernels that call these. Included by cuda_hopper.cuh only.
//
// wgmma m64nNk16 fragments (PTX ISA, "Register Fragments"): warp w of the warpgroup owns rows
// 16w..16w+15, laid out within the warp exactly like mma.sync m16n8k16's A and C fragments, so
// the C accumulators of S = Q Kᵀ become the A operand of O += P V as on sm80
// (accumulators_to_a_fragments).

#include <cuda.h>

#include <cstdint>

#include "common/cuda_intrinsics.cuh"

namespace deepseek_attn {
namespace cuda {

__device__ __forceinline__ void mbarrier_init(uint64_t* barrier, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(barrier)),
               "r"(arrivals));
}

// Makes initialised barriers visible to the async proxy (TMA) before any thread uses them.
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// Arrives once and announces `bytes` of transactions the barrier must also see complete.
__device__ __forceinline__ void mbarrier_arrive_expect_bytes(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   shared_address(barrier)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(barrier))
               : "memory");
}

// Blocks until the barrier's phase with this parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* barrier, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred complete;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 complete, [%1], %2;\n"
        "selp.u32 %0, 1, 0, complete;\n}\n"
        : "=r"(done)
        : "r"(shared_address(barrier)), "r"(parity)
        : "memory");
  }
}

// One box of a 4-D tensor map (coordinates innermost first) into shared memory; completion is
// counted in bytes on `barrier`. Out-of-bounds elements arrive as zeros.
__device__ __forceinline__ void tma_load_4d(void* shared, const CUtensorMap* map,
                                            uint64_t* barrier, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(shared_address(shared)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(shared_address(barrier))
      : "memory");
}

__device__ __forceinline__ void tma_load_2d(void* shared, const CUtensorMap* map,
                                            uint64_t* barrier, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(shared_address(shared)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(shared_address(barrier))
      : "memory");
}

template <int kRegisters>
__device__ __forceinline__ void warpgroup_registers_decrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void warpgroup_registers_increase() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}

// Keeps the compiler from moving accumulator reads/writes across an asynchronous wgmma.
template <int kTiles>
__device__ __forceinline__ void wgmma_pin(float (&d)[kTiles][4]) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[n][e])::"memory");
  }
}

// The 64 fp32 accumulator operands of an m64n128 wgmma, d[n8 tile][fragment], as %0..%63.
// clang-format off: one n8 tile per line
#define DEEPSEEK_ATTN_WGMMA_M64N128_ACCUMULATORS \
      "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
      "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
      "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
      "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
      "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
      "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
      "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
      "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), \
      "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), \
      "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
      "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), \
      "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
      "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), \
      "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
      "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), \
      "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
// clang-format on
#define DEEPSEEK_ATTN_WGMMA_M64N128_REGISTERS                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
  "%56, %57, %58, %59, %60, %61, %62, %63}, "

// d (64 x 128, fp32) = A·Bᵀ (+ d when `accumulate`), A (64 x K) and B (128 x K) K-major in
// shared memory; SHAPE_TYPES is e.g. "m64n128k16.f32.bf16.bf16", TAIL the immediates.
#define DEEPSEEK_ATTN_WGMMA_SS(SHAPE_TYPES, TAIL)                                           \
  asm volatile(                                                                             \
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %66, 0;\n"                        \
      "wgmma.mma_async.sync.aligned." SHAPE_TYPES " " DEEPSEEK_ATTN_WGMMA_M64N128_REGISTERS \
      "%64, %65, accumulate, " TAIL ";\n}\n"                                                \
      : DEEPSEEK_ATTN_WGMMA_M64N128_ACCUMULATORS                                            \
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)))

template <DType kDType>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t desc_a,
                                                    uint64_t desc_b, bool accumulate) {
  if constexpr (kDType == DType::kBFloat16) {
    DEEPSEEK_ATTN_WGMMA_SS("m64n128k16.f32.bf16.bf16", "1, 1, 0, 0");
  } else {
    DEEPSEEK_ATTN_WGMMA_SS("m64n128k16.f32.f16.f16", "1, 1, 0, 0");
  }
}

// FP8 tensor cores: A (64 x 32) and B (128 x 32) e4m3, K-major (the only layout FP8 wgmma reads).
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[16][4], uint64_t desc_a,
                                                      uint64_t desc_b, bool accumulate) {
  DEEPSEEK_ATTN_WGMMA_SS("m64n128k32.f32.e4m3.e4m3", "1, 1");
}

// d (64 x 128, fp32) += A·B, A (64 x 16) in registers, B (16 x 128) N-major in shared memory.
template <DType kDType>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4],
                                                    uint64_t desc_b, bool accumulate) {
#define DEEPSEEK_ATTN_WGMMA_RS(SHAPE_TYPES)                                                 \
  asm volatile(                                                                             \
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %69, 0;\n"                        \
      "wgmma.mma_async.sync.aligned." SHAPE_TYPES " " DEEPSEEK_ATTN_WGMMA_M64N128_REGISTERS \
      "{%64, %65, %66, %67}, %68, accumulate, 1, 1, 1;\n}\n"                                \
      : DEEPSEEK_ATTN_WGMMA_M64N128_ACCUMULATORS                                            \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(int(accumulate)))
  if constexpr (kDType == DType::kBFloat16) {
    DEEPSEEK_ATTN_WGMMA_RS("m64n128k16.f32.bf16.bf16");
  } else {
    DEEPSEEK_ATTN_WGMMA_RS("m64n128k16.f32.f16.f16");
  }
#undef DEEPSEEK_ATTN_WGMMA_RS
}

#undef DEEPSEEK_ATTN_WGMMA_SS
#undef DEEPSEEK_ATTN_WGMMA_M64N128_REGISTERS
#undef DEEPSEEK_ATTN_WGMMA_M64N128_ACCUMULATORS

}  // namespace cuda
}  // namespace deepseek_attn
