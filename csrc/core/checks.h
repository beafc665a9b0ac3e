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

// Validates every tensor and argument; returns the params with sizes, options and the layout
// filled and every pointer still null (the back ends point them at their own buffers).
CoreFwdParams check_core_fwd_inputs(const CoreFwdInputs& in, double softmax_scale, bool causal,
                                    int64_t window_left, int64_t window_right, double softcap);

// Points the params at q, k, v, the index tensors, out and lse (strides in elements; k in bytes
// for the FP8 latent cache).
void point_core_params(CoreFwdParams& p, const at::Tensor& q, const at::Tensor& k,
                       const std::optional<at::Tensor>& v, const CoreFwdInputs& in,
                       const at::Tensor& out, const at::Tensor& lse);

}  // namespace deepseek_attn
