#include "attention/checks.h"

#include <cmath>

#include "common/checks.h"
#include "core/checks.h"

namespace deepseek_attn {

AttentionShape check_attention_fwd_inputs(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, double softmax_scale, bool causal,
                                          int64_t window_left, int64_t window_right,
                                          double softcap) {
  check_defined(q, "q");
  check_defined(k, "k");
  check_defined(v, "v");
  check_rank(q, "q", 4, "(batch, seqlen_q, heads_q, head_dim)");
  check_rank(k, "k", 4, "(batch, seqlen_k, heads_kv, head_dim)");
  check_rank(v, "v", 4, "(batch, seqlen_k, heads_kv, head_dim_v)");
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  check_supported_attention_dtype(q);
  check_same_dtype(k, "k", q, "q");
  check_same_dtype(v, "v", q, "q");

  AttentionShape p;
  p.batch = q.size(0);
  p.seqlen_q = q.size(1);
  p.heads_q = q.size(2);
  p.head_dim_qk = q.size(3);
  p.seqlen_k = k.size(1);
  p.heads_kv = k.size(2);
  p.head_dim_v = v.size(3);
  check_size(k, "k", 0, p.batch, "batch, as in q");
  check_size(v, "v", 0, p.batch, "batch, as in q");
  check_size(k, "k", 3, p.head_dim_qk, "head_dim, as in q");
  check_size(v, "v", 1, p.seqlen_k, "seqlen_k, as in k");
  check_size(v, "v", 2, p.heads_kv, "heads_kv, as in k");
  DEEPSEEK_ATTN_CHECK_VALUE(p.head_dim_qk > 0 && p.head_dim_v > 0,
                            "head dims must be positive (got q head_dim ", p.head_dim_qk,
                            ", v head_dim ", p.head_dim_v, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(
      p.heads_kv > 0 && p.heads_q % p.heads_kv == 0, "the number of query heads (", p.heads_q,
      ") must be a multiple of the number of key/value heads (", p.heads_kv, ")");
  check_last_dim_contiguous(q, "q");
  check_last_dim_contiguous(k, "k");
  check_last_dim_contiguous(v, "v");

  check_attention_scalars(p, softmax_scale, causal, window_left, window_right, softcap);
  return p;
}

void check_attention_bwd_inputs(const AttentionShape& shape, const at::Tensor& q,
                                const at::Tensor& dout, const at::Tensor& out,
                                const at::Tensor& lse) {
  check_defined(dout, "dout");
  check_defined(out, "out");
  check_defined(lse, "softmax_lse");
  check_same_device(dout, "dout", q, "q");
  check_same_device(out, "out", q, "q");
  check_same_device(lse, "softmax_lse", q, "q");
  check_same_dtype(dout, "dout", q, "q");
  check_same_dtype(out, "out", q, "q");
  check_dtype(lse, "softmax_lse", at::kFloat);
  const std::vector<int64_t> out_shape{shape.batch, shape.seqlen_q, shape.heads_q,
                                       shape.head_dim_v};
  DEEPSEEK_ATTN_CHECK_VALUE(out.sizes() == at::IntArrayRef(out_shape), "out must have shape ",
                            at::IntArrayRef(out_shape),
                            " (batch, seqlen_q, heads_q, head_dim_v) (got ", out.sizes(), ")");
  DEEPSEEK_ATTN_CHECK_VALUE(dout.sizes() == at::IntArrayRef(out_shape), "dout must have shape ",
                            at::IntArrayRef(out_shape), " like out (got ", dout.sizes(), ")");
  const std::vector<int64_t> lse_shape{shape.batch, shape.heads_q, shape.seqlen_q};
  DEEPSEEK_ATTN_CHECK_VALUE(lse.sizes() == at::IntArrayRef(lse_shape),
                            "softmax_lse must have shape ", at::IntArrayRef(lse_shape),
                            " (batch, heads_q, seqlen_q) (got ", lse.sizes(), ")");
  check_last_dim_contiguous(dout, "dout");
  check_last_dim_contiguous(out, "out");
}


}  // namespace deepseek_attn
