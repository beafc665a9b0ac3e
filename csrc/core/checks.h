#pragma once
// Input checks of the core forward (attention_core_fwd), shared by the CPU and CUDA back ends,
// and the params built from checked tensors.

#include <ATen/core/Tensor.h>

#include <optional>

#include "core/params.h"

namespace deepseek_attn {

// The tensors of one core call, as the op receives them.
struct CoreFwdInputs {
  at::Tensor q, k;
  std::optional<at::Tensor> v, block_table, cache_seqlens, indices;
  int64_t index_block_size = 1;
  int64_t head_dim_v = -1;  // -1: v's head dim (or 512 for the FP8 latent cache)
};

// q's dtype: fp32, bf16, fp16 (and fp64 on CPU, for gradcheck); bf16 and fp16 on CUDA.
void check_supported_attention_dtype(const at::Tensor& q);

// Validates softmax_scale, softcap and the window and stores them in `shape` (causal sets
// window_right = 0).
void check_attention_scalars(AttentionShape& shape, double softmax_scale, bool causal,
                             int64_t window_left, int64_t window_right, double softcap);

// Strides (batch, row, head) of a 4-D BSHD-like tensor, in its elements.
BshdStrides bshd_strides(const at::Tensor& t);

// Validates every tensor and argument; returns the params with sizes, options and the layout
// filled and every pointer still null (the back ends point them at their own buffers).
CoreFwdParams check_core_fwd_inputs(const CoreFwdInputs& in, double softmax_scale, bool causal,
                                    int64_t window_left, int64_t window_right, double softcap);

// Rejects out-of-range cache_seqlens, block_table pages that hold keys, and index-list entries
// (SPEC §0): always on CPU; on CUDA only with DEEPSEEK_ATTN_CHECK_INDICES=1 (it synchronises).
void check_core_index_values(const CoreFwdParams& p, const CoreFwdInputs& in);

// Points the params at q, k, v, the index tensors, out and lse (strides in elements; k in bytes
// for the FP8 latent cache).
void point_core_params(CoreFwdParams& p, const at::Tensor& q, const at::Tensor& k,
                       const std::optional<at::Tensor>& v, const CoreFwdInputs& in,
                       const at::Tensor& out, const at::Tensor& lse);

}  // namespace deepseek_attn
