#include "attention/checks.h"

#include <cmath>

#include "common/checks.h"

namespace deepseek_attn {

void check_supported_attention_dtype(const at::Tensor& q) {
  const auto dtype = q.scalar_type();
  const bool low_or_single = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  if (q.is_cpu()) {
    // fp64 is accepted on CPU so gradients can be checked numerically.
    DEEPSEEK_ATTN_CHECK_TYPE(low_or_single || dtype == at::kDouble,
                             "q must have dtype float32, bfloat16, float16 or float64 (got ", dtype,
                             ")");
  } else {
    DEEPSEEK_ATTN_CHECK_TYPE(dtype == at::kBFloat16 || dtype == at::kHalf,
                             "q must have dtype bfloat16 or float16 on ", q.device().type(),
                             " (got ", dtype, ")");
  }
}

void check_attention_scalars(AttentionShape& p, double softmax_scale, bool causal,
                             int64_t window_left, int64_t window_right, double softcap) {
  DEEPSEEK_ATTN_CHECK_VALUE(std::isfinite(softmax_scale) && softmax_scale > 0,
                            "softmax_scale must be a positive finite number (got ", softmax_scale,
                            ")");
  DEEPSEEK_ATTN_CHECK_VALUE(std::isfinite(softcap) && softcap >= 0,
                            "softcap must be >= 0 (0 disables it) (got ", softcap, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(window_left >= -1 && window_right >= -1,
                            "window_size entries must be >= -1 (-1 = unbounded) (got (",
                            window_left, ", ", window_right, "))");
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.softcap = static_cast<float>(softcap);
  p.window_left = window_left;
  // Causal is the window (window_left, 0), as in flash-attn.
  p.window_right = causal ? 0 : window_right;
}

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

BshdStrides bshd_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2)};
}

}  // namespace deepseek_attn
