#pragma once
// The CPU block-scaled "NT" GEMM of SPEC §2 on bf16 micro-kernel tiles: e4m3 widens exactly to
// bf16, so each 128-wide K block is an exact-product, fp32-accumulated bf16 brgemm whose partial
// sum is promoted with its scales into an fp32 accumulator.

#include "common/dtype.h"
#include "fp8/params.h"

namespace deepseek_attn::cpu {

// Whether the bf16 tile path runs here: the host's tile plan (common/cpu_tiles.h) multiplies
// bf16 tiles (native and clearly faster than fp32; DEEPSEEK_ATTN_CPU_GEMM=blas or fp32 turn
// them off, as for the attention tiles) and a probe product through this GEMM's packing is
// exact. Decided once.
bool fp8_gemm_bf16_tiles_available();

// p.out (M x N, row-major, `out_type`) = SPEC §2 block-scaled A Bᵀ; needs M, N, K > 0.
void fp8_gemm_bf16_tiles(const Fp8GemmParams& p, DType out_type);

}  // namespace deepseek_attn::cpu
