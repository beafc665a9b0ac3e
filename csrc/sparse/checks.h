#pragma once
// Input checks of the sparse family's ops (SPEC §4), shared by the CPU and CUDA back ends.

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

// indices' values in [-1, seqlen_k) (reads them: synchronises on a GPU); the core's words. Block
// lists: in [-1, ceil(seqlen_k / index_block_size)).
void check_sparse_index_values(const at::Tensor& indices, int64_t seqlen_k,
                               int64_t index_block_size = 1);

// block_sparse_attn's block_size: at least 1 key per listed block.
void check_block_size(int64_t block_size);

struct IndexerShape {
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, heads = 0, head_dim = 0;
};

// The lightning indexer's inputs: q (B, Sq, H, d) and k (B, Sk, d) of one dtype (fp32, bf16,
// fp16, float8_e4m3fn; fp64 too), weights (B, Sq, H) fp32 (fp64 with fp64 q), k_scale (B, Sk)
// fp32 or None, seqlens_k (B,) int32 or None (keys per sequence, at most Sk).
IndexerShape check_indexer_inputs(const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& weights,
                                  const std::optional<at::Tensor>& k_scale,
                                  const std::optional<at::Tensor>& seqlens_k);
void check_indexer_topk(int64_t topk);
// seqlens_k's values in [0, Sk] (reads them: synchronises on a GPU).
void check_indexer_seqlens_values(const at::Tensor& seqlens_k, int64_t seqlen_k);
// dlogits (B, Sq, Sk) fp32 (fp64 with fp64 q) beside the forward's inputs; no FP8.
IndexerShape check_indexer_logits_bwd_inputs(const at::Tensor& dlogits, const at::Tensor& q,
                                             const at::Tensor& k, const at::Tensor& weights,
                                             const std::optional<at::Tensor>& seqlens_k);

}  // namespace deepseek_attn
