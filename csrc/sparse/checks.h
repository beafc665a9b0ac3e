#pragma once
// Input checks of the sparse attention backward (SPEC §4), shared by the CPU and CUDA back ends.

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/attention_shape.h"

namespace deepseek_attn {

struct SparseAttnShape : AttentionShape {
  int64_t num_indices = 0;  // index list length per (batch, token, kv head)
};

// dout/out (B, Sq, Hq, Dv), lse (B, Hq, Sq) fp32, q (B, Sq, Hq, Dqk), k (B, Sk, Hkv, Dqk),
// v (B, Sk, Hkv, Dv) or None (values = k's first head_dim_v columns), indices (B, Sq, Hkv, n)
// int32: -1 or a key of k.
SparseAttnShape check_sparse_attn_bwd_inputs(const at::Tensor& dout, const at::Tensor& q,
                                             const at::Tensor& k,
                                             const std::optional<at::Tensor>& v,
                                             const at::Tensor& out, const at::Tensor& lse,
                                             const at::Tensor& indices, int64_t head_dim_v);

}  // namespace deepseek_attn
