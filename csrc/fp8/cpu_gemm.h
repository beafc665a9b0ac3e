#pragma once
// The CPU block-scaled "NT" GEMM of SPEC §2 on bf16 micro-kernel tiles: e4m3 widens exactly to
// bf16, so each 128-wide K block is an exact-product, fp32-accumulated bf16 brgemm whose partial
// sum is promoted with its scales into an fp32 accumulator.

#include "common/dtype.h"
#include "fp8/params.h"

namespace deepseek_attn::cpu {

// Whether the bf16 tile path runs here: a CPU with native bf16 dot products (AVX512-BF16 or
// AMX), ATen's oneDNN brgemm present and exact on a probe product, and DEEPSEEK_ATTN_CPU_GEMM
// not "blas" (which forces the fp32 BLAS path, as for the attention tiles). Decided once.
bool fp8_gemm_bf16_tiles_available();

// p.out (M x N, row-major, `out_type`) = SPEC §2 block-scaled A Bᵀ; needs M, N, K > 0.
void fp8_gemm_bf16_tiles(const Fp8GemmParams& p, DType out_type);

}  // namespace deepseek_attn::cpu
