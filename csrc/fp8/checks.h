#pragma once
// Input checks of the FP8 ops (SPEC §2), shared by the CPU and CUDA implementations.

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "fp8/params.h"

namespace deepseek_attn {

struct Fp8GemmShape {
  int64_t m, n, k, k_blocks;
  Fp8BScaling b_scaling;
};

void check_quantize_act_inputs(const at::Tensor& x, int64_t group_size);
void check_quantize_weight_inputs(const at::Tensor& w, int64_t block_size);
Fp8GemmShape check_fp8_gemm_inputs(const at::Tensor& a, const at::Tensor& a_scales,
                                   const at::Tensor& b, const at::Tensor& b_scales,
                                   at::ScalarType out_dtype);

}  // namespace deepseek_attn
