#pragma once
// Input checks of flash_attn_fwd / flash_attn_bwd, shared by the CPU and CUDA implementations.

#include <ATen/core/Tensor.h>

#include "attention/params.h"

namespace deepseek_attn {

// q's dtype: fp32, bf16, fp16 (and fp64 on CPU, for gradcheck); bf16 and fp16 on CUDA.
void check_supported_attention_dtype(const at::Tensor& q);

// Validates softmax_scale, softcap and the window and stores them in `shape` (causal sets
// window_right = 0).
void check_attention_scalars(AttentionShape& shape, double softmax_scale, bool causal,
                             int64_t window_left, int64_t window_right, double softcap);

// Validates q/k/v and the scalar arguments; returns the problem they describe.
AttentionShape check_attention_fwd_inputs(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, double softmax_scale, bool causal,
                                          int64_t window_left, int64_t window_right,
                                          double softcap);

// Validates the extra tensors of the backward against the forward problem.
void check_attention_bwd_inputs(const AttentionShape& shape, const at::Tensor& q,
                                const at::Tensor& dout, const at::Tensor& out,
                                const at::Tensor& lse);

// Fills the pointer/stride part of the params from BSHD tensors.
BshdStrides bshd_strides(const at::Tensor& t);

}  // namespace deepseek_attn
