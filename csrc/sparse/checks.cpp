// Input checks of the sparse attention backward (SPEC §4): the words of the core's checks.

#include "sparse/checks.h"

#include <ATen/ATen.h>

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

}  // namespace deepseek_attn
