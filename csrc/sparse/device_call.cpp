// Checks, outputs and params of the sparse family's ops on a GPU-style device (CUDA and the
// emulator).

#include "sparse/device_call.h"

#include <limits>
#include <tuple>
#include <utility>

#include "common/checks.h"
#include "common/dtype_aten.h"
#include "common/vector_loads.h"
#include "sparse/checks.h"

namespace deepseek_attn {

namespace {

// The CUDA kernels' limits on the indexer's inputs (topk: the top-k kernel's), after the checks
// both back ends share.
IndexerShape check_indexer_device_inputs(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& weights,
                                         const std::optional<at::Tensor>& k_scale,
                                         const std::optional<at::Tensor>& seqlens_k,
                                         std::optional<int64_t> topk) {
  const IndexerShape s = check_indexer_inputs(q, k, weights, k_scale, seqlens_k);
  if (topk.has_value()) check_indexer_topk(*topk);
  const auto dtype = q.scalar_type();
  DEEPSEEK_ATTN_CHECK_TYPE(dtype == at::kBFloat16 || dtype == at::kHalf ||
                               dtype == at::kFloat8_e4m3fn,
                           "the CUDA indexer takes bfloat16, float16 or float8_e4m3fn q and k (got ",
                           dtype, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.head_dim == 64 || s.head_dim == 128,
                            "the CUDA indexer has kernels for index_head_dim 64 and 128 (got ",
                            s.head_dim, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.heads <= kIndexerMaxHeads, "the CUDA indexer takes at most ",
                            kIndexerMaxHeads, " index heads (got ", s.heads, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(!topk.has_value() || *topk <= kIndexerMaxTopk,
                            "the CUDA indexer_topk takes topk <= ", kIndexerMaxTopk, " (got ",
                            topk.value_or(0), ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.batch <= 65535, "the CUDA indexer takes at most 65535 sequences (got ",
                            s.batch, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.seqlen_k <= std::numeric_limits<int32_t>::max(),
                            "k must hold fewer than 2^31 keys per sequence (got ", s.seqlen_k, ")");
  if (seqlens_k.has_value() && index_value_checks_requested()) {
    check_indexer_seqlens_values(*seqlens_k, s.seqlen_k);  // else the kernels clamp them
  }
  return s;
}

// The params of the kernels' inputs (no outputs), from operands already aligned for the
// kernels' vector loads (weights and k_scale contiguous).
IndexerParams indexer_input_params(const IndexerShape& s, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& weights, const at::Tensor& k_scale,
                                   const std::optional<at::Tensor>& seqlens_k,
                                   double softmax_scale, bool causal) {
  IndexerParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.weights = weights.data_ptr<float>();
  if (k_scale.defined()) p.k_scale = k_scale.data_ptr<float>();
  if (seqlens_k.has_value()) p.seqlens_k = seqlens_k->data_ptr<int32_t>();
  p.batch = s.batch, p.seqlen_q = s.seqlen_q, p.seqlen_k = s.seqlen_k;
  p.heads = s.heads, p.head_dim = s.head_dim;
  p.q_batch_stride = q.stride(0), p.q_token_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_token_stride = k.stride(1);
  p.scale = float(softmax_scale);
  p.causal = causal;
  return p;
}

}  // namespace

IndexerCall prepare_indexer(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                            const std::optional<at::Tensor>& k_scale,
                            const std::optional<at::Tensor>& seqlens_k, std::optional<int64_t> topk,
                            double softmax_scale, bool causal) {
  const IndexerShape s = check_indexer_device_inputs(q, k, weights, k_scale, seqlens_k, topk);
  IndexerCall call;
  call.input = dtype_of(q.scalar_type());
  call.q = aligned_for_vector_loads(q);
  call.k = aligned_for_vector_loads(k);
  call.weights = weights.contiguous();
  if (k_scale.has_value()) call.k_scale = k_scale->contiguous();
  call.output = topk.has_value()
                    ? at::empty({s.batch, s.seqlen_q, *topk}, q.options().dtype(at::kInt))
                    : at::empty({s.batch, s.seqlen_q, s.seqlen_k}, q.options().dtype(at::kFloat));
  if (call.output.numel() == 0) return call;
  IndexerParams& p = call.params;
  p = indexer_input_params(s, call.q, call.k, call.weights, call.k_scale, seqlens_k,
                           softmax_scale, causal);
  if (topk.has_value()) {
    p.indices = call.output.data_ptr<int32_t>();
    p.topk = *topk;
  } else {
    p.logits = call.output.data_ptr<float>();
  }
  call.needs_launch = true;
  return call;
}

IndexerBwdCall prepare_indexer_bwd(const at::Tensor& dlogits, const at::Tensor& q,
                                   const at::Tensor& k, const at::Tensor& weights,
                                   const std::optional<at::Tensor>& seqlens_k,
                                   double softmax_scale, bool causal) {
  check_indexer_logits_bwd_inputs(dlogits, q, k, weights, seqlens_k);
  const IndexerShape s =
      check_indexer_device_inputs(q, k, weights, std::nullopt, seqlens_k, std::nullopt);
  IndexerBwdCall call;
  call.type = dtype_of(q.scalar_type());
  call.q = aligned_for_vector_loads(q);
  call.k = aligned_for_vector_loads(k);
  call.weights = weights.contiguous();
  call.dlogits = dlogits.contiguous();
  // The kernels write dense gradients, whatever q's and k's strides.
  call.dq = at::empty(q.sizes(), q.options());
  call.dk = at::empty(k.sizes(), k.options());
  call.dweights = at::empty_like(call.weights);
  if (q.numel() == 0 && k.numel() == 0) return call;
  if (q.numel() == 0 || k.numel() == 0) {  // nothing is visible: every gradient is 0
    call.dq.zero_();
    call.dk.zero_();
    call.dweights.zero_();
    return call;
  }
  call.params.forward = indexer_input_params(s, call.q, call.k, call.weights, at::Tensor(),
                                             seqlens_k, softmax_scale, causal);
  call.params.dlogits = call.dlogits.data_ptr<float>();
  call.params.dq = call.dq.data_ptr();
  call.params.dk = call.dk.data_ptr();
  call.params.dweights = call.dweights.data_ptr<float>();
  call.needs_launch = true;
  return call;
}

namespace {

// For every (sequence, kv head, bucket: a key or a block), the tokens whose lists name it, in
// token order, repeats kept: (offsets (B·Hkv·buckets + 1), tokens) int32, computed on the
// indices' device.
std::pair<at::Tensor, at::Tensor> inverse_index(const at::Tensor& indices, int64_t buckets) {
  const int64_t batch = indices.size(0), seqlen_q = indices.size(1), heads_kv = indices.size(2);
  const auto long_options = indices.options().dtype(at::kLong);
  const at::Tensor keys = indices.to(at::kLong);
  const at::Tensor valid = (keys >= 0) & (keys < buckets);  // out-of-range entries are skipped
  const at::Tensor list = (at::arange(batch, long_options).view({batch, 1, 1, 1}) * heads_kv +
                           at::arange(heads_kv, long_options).view({1, 1, heads_kv, 1})) *
                              buckets + keys;
  const at::Tensor tokens = at::arange(seqlen_q, long_options).view({1, seqlen_q, 1, 1})
                                .expand_as(keys);
  const at::Tensor valid_lists = list.masked_select(valid);
  // Entries come in token order, so a stable sort by list keeps it within each list.
  const at::Tensor order = std::get<1>(valid_lists.sort(/*stable=*/true, 0, false));
  const at::Tensor counts = at::bincount(valid_lists, {}, batch * heads_kv * buckets);
  const at::Tensor offsets = at::cat({at::zeros({1}, long_options), counts.cumsum(0)});
  return {offsets.to(at::kInt), tokens.masked_select(valid).index_select(0, order).to(at::kInt)};
}

}  // namespace

SparseBwdCall prepare_sparse_attn_bwd(const at::Tensor& dout, const at::Tensor& q,
                                      const at::Tensor& k, const std::optional<at::Tensor>& v,
                                      const at::Tensor& out, const at::Tensor& lse,
                                      const at::Tensor& indices, int64_t head_dim_v,
                                      double softmax_scale, int64_t index_block_size,
                                      bool causal) {
  const SparseAttnShape s =
      check_sparse_attn_bwd_inputs(dout, q, k, v, out, lse, indices, head_dim_v);
  const auto dtype = q.scalar_type();
  DEEPSEEK_ATTN_CHECK_TYPE(dtype == at::kBFloat16 || dtype == at::kHalf,
                           "the CUDA sparse_attn backward takes bfloat16 or float16 (got ", dtype,
                           ")");
  const bool latent = !v.has_value();
  const bool rows_compiled = (s.head_dim_qk == 64 && s.head_dim_v == 64) ||
                             (s.head_dim_qk == 128 && s.head_dim_v == 128) ||
                             (s.head_dim_qk == 192 && s.head_dim_v == 128);
  DEEPSEEK_ATTN_CHECK_VALUE(
      latent ? s.head_dim_qk == 576 && s.head_dim_v == 512 && dtype == at::kBFloat16
             : rows_compiled,
      "the CUDA sparse_attn backward has kernels for (Dqk, Dv) = 64/64, 128/128, 192/128 and "
      "bfloat16 latent rows 576/512 (got ", s.head_dim_qk, "/", s.head_dim_v,
      latent ? " latent" : "", ")");
  const int64_t entries = s.batch * s.seqlen_q * s.heads_kv * s.num_indices;
  DEEPSEEK_ATTN_CHECK_VALUE(entries < std::numeric_limits<int32_t>::max(),
                            "indices must hold fewer than 2^31 entries (got ", entries, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.batch <= 65535 && s.heads_kv <= 65535,
                            "the CUDA sparse_attn backward takes at most 65535 sequences and kv "
                            "heads (got ", s.batch, " and ", s.heads_kv, ")");
  if (index_value_checks_requested()) {
    check_sparse_index_values(indices, s.seqlen_k, index_block_size);
  }
  SparseBwdCall call;
  call.type = dtype_of(dtype);
  // The kernels index dense rows and load them in 4- and 16-byte pieces.
  call.q = aligned_for_vector_loads(q.contiguous());
  call.k = aligned_for_vector_loads(k.contiguous());
  call.v = latent ? call.k : aligned_for_vector_loads(v->contiguous());
  call.dout = aligned_for_vector_loads(dout.contiguous());
  call.lse = lse.contiguous();
  call.indices = indices.contiguous();
  call.delta = (call.dout.to(at::kFloat) * out.to(at::kFloat)).sum(-1).contiguous();
  call.dq = at::empty_like(call.q);
  call.dk = at::empty_like(call.k);
  call.dv = latent ? at::empty({0}, q.options()) : at::empty_like(call.v);
  if (q.numel() == 0 && k.numel() == 0) return call;
  SparseBwdParams& p = call.params;
  p.q = call.q.data_ptr();
  p.k = call.k.data_ptr();
  p.v = call.v.data_ptr();
  p.dout = call.dout.data_ptr();
  p.lse = call.lse.data_ptr<float>();
  p.delta = call.delta.data_ptr<float>();
  p.indices = call.indices.data_ptr<int32_t>();
  p.dq = call.dq.data_ptr();
  p.dk = call.dk.data_ptr();
  p.dv = latent ? nullptr : call.dv.data_ptr();
  p.batch = s.batch, p.seqlen_q = s.seqlen_q, p.seqlen_k = s.seqlen_k;
  p.heads_q = s.heads_q, p.heads_kv = s.heads_kv;
  p.head_dim_qk = s.head_dim_qk, p.head_dim_v = s.head_dim_v, p.num_indices = s.num_indices;
  p.v_row = latent ? s.head_dim_qk : s.head_dim_v;
  p.index_block_size = index_block_size, p.causal = causal;
  p.scale = float(softmax_scale);
  std::tie(call.key_offsets, call.key_tokens) = inverse_index(call.indices, p.buckets());
  p.key_offsets = call.key_offsets.data_ptr<int32_t>();
  p.key_tokens = call.key_tokens.data_ptr<int32_t>();
  call.needs_launch = true;
  return call;
}

SparseBwdCall prepare_block_sparse_attn_bwd(const at::Tensor& dout, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& out, const at::Tensor& lse,
                                            const at::Tensor& block_indices, int64_t block_size,
                                            bool causal, double softmax_scale) {
  check_block_size(block_size);
  return prepare_sparse_attn_bwd(dout, q, k, v, out, lse, block_indices, v.size(-1),
                                 softmax_scale, block_size, causal);
}

}  // namespace deepseek_attn
