#pragma once
// Input checks of flash_attn_fwd / flash_attn_bwd, shared by the CPU and CUDA implementations.

#include <ATen/core/Tensor.h>

#include "attention/params.h"
#include "core/checks.h"

namespace deepseek_attn {

// Validates q/k/v and the scalar arguments; returns the problem they describe.
AttentionShape check_attention_fwd_inputs(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, double softmax_scale, bool causal,
                                          int64_t window_left, int64_t window_right,
                                          double softcap);

// Validates the extra tensors of the backward against the forward problem.
void check_attention_bwd_inputs(const AttentionShape& shape, const at::Tensor& q,
                                const at::Tensor& dout, const at::Tensor& out,
                                const at::Tensor& lse);


}  // namespace deepseek_attn
