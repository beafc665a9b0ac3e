// Input checks of the sparse family's ops (SPEC §4): the sparse attention backward (the words of
// the core's checks) and the lightning indexer.

#include "sparse/checks.h"

#include <ATen/ATen.h>

#include <string>

#include "common/checks.h"
#include "core/checks.h"

namespace deepseek_attn {

SparseAttnShape check_sparse_attn_bwd_inputs(const at::Tensor& dout, const at::Tensor& q,
                                             const at::Tensor& k,
                                             const std::optional<at::Tensor>& v,
                                             const at::Tensor& out, const at::Tensor& lse,
                                             const at::Tensor& indices, int64_t head_dim_v) {
  for (const auto& [t, name] : {std::pair{q, "q"}, {k, "k"}, {dout, "dout"}, {out, "out"}}) {
    check_defined(t, name);
    check_rank(t, name, 4, "(batch, seqlen, heads, head_dim)");
    check_last_dim_contiguous(t, name);
  }
  check_supported_attention_dtype(q);
  check_same_dtype(k, "k", q, "q");
  check_same_dtype(dout, "dout", q, "q");
  check_same_dtype(out, "out", q, "q");
  SparseAttnShape s;
  s.batch = q.size(0), s.seqlen_q = q.size(1), s.heads_q = q.size(2), s.head_dim_qk = q.size(3);
  s.seqlen_k = k.size(1), s.heads_kv = k.size(2);
  check_size(k, "k", 0, s.batch, "batch, as q");
  check_size(k, "k", 3, s.head_dim_qk, "head_dim, as q");
  DEEPSEEK_ATTN_CHECK_VALUE(s.heads_kv > 0 && s.heads_q % s.heads_kv == 0,
                            "q's heads (", s.heads_q, ") must be a multiple of k's (", s.heads_kv,
                            ")");
  if (v.has_value()) {
    check_rank(*v, "v", 4, "(batch, seqlen_k, heads_kv, head_dim_v)");
    check_same_dtype(*v, "v", q, "q");
    check_last_dim_contiguous(*v, "v");
    for (int64_t d = 0; d < 3; ++d) check_size(*v, "v", d, k.size(d), "as k");
    s.head_dim_v = v->size(3);
  } else {
    DEEPSEEK_ATTN_CHECK_VALUE(head_dim_v > 0 && head_dim_v <= s.head_dim_qk,
                              "head_dim_v must be in [1, ", s.head_dim_qk,
                              "] when v is None (got ", head_dim_v, ")");
    s.head_dim_v = head_dim_v;
  }
  for (const auto& [t, name] : {std::pair{dout, "dout"}, {out, "out"}}) {
    DEEPSEEK_ATTN_CHECK_VALUE(t.size(0) == s.batch && t.size(1) == s.seqlen_q &&
                                  t.size(2) == s.heads_q && t.size(3) == s.head_dim_v,
                              name, " must be (", s.batch, ", ", s.seqlen_q, ", ", s.heads_q, ", ",
                              s.head_dim_v, ") (got shape ", t.sizes(), ")");
  }
  check_dtype(lse, "lse", at::kFloat);
  DEEPSEEK_ATTN_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == s.batch &&
                                lse.size(1) == s.heads_q && lse.size(2) == s.seqlen_q,
                            "lse must be (", s.batch, ", ", s.heads_q, ", ", s.seqlen_q,
                            ") (got shape ", lse.sizes(), ")");
  check_rank(indices, "indices", 4, "(batch, seqlen_q, heads_kv, num_indices)");
  check_dtype(indices, "indices", at::kInt);
  DEEPSEEK_ATTN_CHECK_VALUE(indices.size(0) == s.batch && indices.size(1) == s.seqlen_q &&
                                indices.size(2) == s.heads_kv,
                            "indices must be (", s.batch, ", ", s.seqlen_q, ", ", s.heads_kv,
                            ", num_indices) (got shape ", indices.sizes(), ")");
  s.num_indices = indices.size(3);
  for (const at::Tensor& t : {q, k, dout, out, lse, indices}) {
    check_same_device(t, "every tensor", q, "q");
  }
  return s;
}

void check_block_size(int64_t block_size) {
  DEEPSEEK_ATTN_CHECK_VALUE(block_size >= 1, "block_size must be >= 1 (got ", block_size, ")");
}

void check_sparse_index_values(const at::Tensor& indices, int64_t seqlen_k,
                               int64_t index_block_size) {
  const int64_t limit = (seqlen_k + index_block_size - 1) / index_block_size;
  const at::Tensor bad = (indices < -1) | (indices >= limit);
  if (!bad.any().item<bool>()) return;
  const at::Tensor where = bad.nonzero()[0].cpu();
  const auto at = [&](int64_t d) { return where[d].item<int64_t>(); };
  DEEPSEEK_ATTN_CHECK_VALUE(false, "indices[", at(0), ", ", at(1), ", ", at(2), ", ", at(3),
                            "] = ", indices.index({at(0), at(1), at(2), at(3)}).item<int>(),
                            " is out of range: sequence ", at(0), " has ", seqlen_k,
                            " keys", index_block_size > 1 ? " in blocks of " : "",
                            index_block_size > 1 ? std::to_string(index_block_size) : "",
                            "; -1 marks an empty slot");
}

IndexerShape check_indexer_inputs(const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& weights,
                                  const std::optional<at::Tensor>& k_scale,
                                  const std::optional<at::Tensor>& seqlens_k) {
  check_defined(q, "q");
  check_defined(k, "k");
  check_defined(weights, "weights");
  check_rank(q, "q", 4, "(batch, seqlen_q, index_heads, index_head_dim)");
  check_rank(k, "k", 3, "(batch, seqlen_k, index_head_dim)");
  check_rank(weights, "weights", 3, "(batch, seqlen_q, index_heads)");
  const auto dtype = q.scalar_type();
  DEEPSEEK_ATTN_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                               dtype == at::kHalf || dtype == at::kFloat8_e4m3fn,
                           "q must be float32, bfloat16, float16 or float8_e4m3fn (got ", dtype,
                           ")");
  check_same_dtype(k, "k", q, "q");
  check_dtype(weights, "weights", dtype == at::kDouble ? at::kDouble : at::kFloat);
  check_last_dim_contiguous(q, "q");
  check_last_dim_contiguous(k, "k");
  IndexerShape s;
  s.batch = q.size(0), s.seqlen_q = q.size(1), s.heads = q.size(2), s.head_dim = q.size(3);
  s.seqlen_k = k.size(1);
  check_size(k, "k", 0, s.batch, "batch, as q");
  check_size(k, "k", 2, s.head_dim, "index_head_dim, as q");
  DEEPSEEK_ATTN_CHECK_VALUE(weights.size(0) == s.batch && weights.size(1) == s.seqlen_q &&
                                weights.size(2) == s.heads,
                            "weights must be (", s.batch, ", ", s.seqlen_q, ", ", s.heads,
                            ") like q's first three dimensions (got shape ", weights.sizes(), ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.heads > 0 && s.head_dim > 0,
                            "q must have at least one head and one column (got shape ", q.sizes(),
                            ")");
  check_same_device(k, "k", q, "q");
  check_same_device(weights, "weights", q, "q");
  if (k_scale.has_value()) {
    check_dtype(*k_scale, "k_scale", at::kFloat);
    DEEPSEEK_ATTN_CHECK_VALUE(k_scale->dim() == 2 && k_scale->size(0) == s.batch &&
                                  k_scale->size(1) == s.seqlen_k,
                              "k_scale must be (", s.batch, ", ", s.seqlen_k,
                              ") like k's first two dimensions (got shape ", k_scale->sizes(), ")");
    check_same_device(*k_scale, "k_scale", q, "q");
  }
  if (seqlens_k.has_value()) {
    check_dtype(*seqlens_k, "seqlens_k", at::kInt);
    DEEPSEEK_ATTN_CHECK_VALUE(seqlens_k->dim() == 1 && seqlens_k->size(0) == s.batch,
                              "seqlens_k must be (", s.batch, ",) (got shape ", seqlens_k->sizes(),
                              ")");
    check_same_device(*seqlens_k, "seqlens_k", q, "q");
  }
  return s;
}

void check_indexer_topk(int64_t topk) {
  DEEPSEEK_ATTN_CHECK_VALUE(topk > 0, "topk must be positive (got ", topk, ")");
}

void check_indexer_seqlens_values(const at::Tensor& seqlens_k, int64_t seqlen_k) {
  const at::Tensor bad = (seqlens_k < 0) | (seqlens_k > seqlen_k);
  if (!bad.any().item<bool>()) return;
  const int64_t b = bad.nonzero()[0][0].item<int64_t>();
  DEEPSEEK_ATTN_CHECK_VALUE(false, "seqlens_k[", b, "] = ", seqlens_k[b].item<int>(),
                            " is out of range: k holds ", seqlen_k, " keys per sequence");
}

IndexerShape check_indexer_logits_bwd_inputs(const at::Tensor& dlogits, const at::Tensor& q,
                                             const at::Tensor& k, const at::Tensor& weights,
                                             const std::optional<at::Tensor>& seqlens_k) {
  const IndexerShape s = check_indexer_inputs(q, k, weights, std::nullopt, seqlens_k);
  DEEPSEEK_ATTN_CHECK_TYPE(q.scalar_type() != at::kFloat8_e4m3fn,
                           "the indexer's FP8 logits are not differentiable; use bfloat16, "
                           "float16 or float32 q and k for training");
  check_dtype(dlogits, "dlogits", weights.scalar_type());
  DEEPSEEK_ATTN_CHECK_VALUE(dlogits.dim() == 3 && dlogits.size(0) == s.batch &&
                                dlogits.size(1) == s.seqlen_q && dlogits.size(2) == s.seqlen_k,
                            "dlogits must be (", s.batch, ", ", s.seqlen_q, ", ", s.seqlen_k,
                            ") (got shape ", dlogits.sizes(), ")");
  check_same_device(dlogits, "dlogits", q, "q");
  return s;
}

}  // namespace deepseek_attn
