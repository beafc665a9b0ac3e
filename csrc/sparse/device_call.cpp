// Checks, outputs and params of the sparse family's ops on a GPU-style device (CUDA and the
// emulator).

#include "sparse/device_call.h"

#include <limits>

#include "common/checks.h"
#include "common/dtype_aten.h"
#include "common/vector_loads.h"
#include "sparse/checks.h"

namespace deepseek_attn {

IndexerCall prepare_indexer(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                            const std::optional<at::Tensor>& k_scale,
                            const std::optional<at::Tensor>& seqlens_k, std::optional<int64_t> topk,
                            double softmax_scale, bool causal) {
  const IndexerShape s = check_indexer_inputs(q, k, weights, k_scale, seqlens_k);
  const bool logits = !topk.has_value();
  if (!logits) check_indexer_topk(*topk);
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
  DEEPSEEK_ATTN_CHECK_VALUE(logits || *topk <= kIndexerMaxTopk, "the CUDA indexer_topk takes topk <= ",
                            kIndexerMaxTopk, " (got ", *topk, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.batch <= 65535, "the CUDA indexer takes at most 65535 sequences (got ",
                            s.batch, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(s.seqlen_k <= std::numeric_limits<int32_t>::max(),
                            "k must hold fewer than 2^31 keys per sequence (got ", s.seqlen_k, ")");
  if (seqlens_k.has_value() && index_value_checks_requested()) {
    check_indexer_seqlens_values(*seqlens_k, s.seqlen_k);  // else the kernels clamp them
  }
  IndexerCall call;
  call.input = dtype_of(dtype);
  call.q = aligned_for_vector_loads(q);
  call.k = aligned_for_vector_loads(k);
  call.weights = weights.contiguous();
  if (k_scale.has_value()) call.k_scale = k_scale->contiguous();
  call.output = logits ? at::empty({s.batch, s.seqlen_q, s.seqlen_k}, q.options().dtype(at::kFloat))
                       : at::empty({s.batch, s.seqlen_q, *topk}, q.options().dtype(at::kInt));
  if (call.output.numel() == 0) return call;
  IndexerParams& p = call.params;
  p.q = call.q.data_ptr();
  p.k = call.k.data_ptr();
  p.weights = call.weights.data_ptr<float>();
  if (k_scale.has_value()) p.k_scale = call.k_scale.data_ptr<float>();
  if (seqlens_k.has_value()) p.seqlens_k = seqlens_k->data_ptr<int32_t>();
  p.batch = s.batch, p.seqlen_q = s.seqlen_q, p.seqlen_k = s.seqlen_k;
  p.heads = s.heads, p.head_dim = s.head_dim;
  p.q_batch_stride = call.q.stride(0), p.q_token_stride = call.q.stride(1);
  p.q_head_stride = call.q.stride(2);
  p.k_batch_stride = call.k.stride(0), p.k_token_stride = call.k.stride(1);
  p.scale = float(softmax_scale);
  p.causal = causal;
  if (logits) {
    p.logits = call.output.data_ptr<float>();
  } else {
    p.indices = call.output.data_ptr<int32_t>();
    p.topk = *topk;
  }
  call.needs_launch = true;
  return call;
}

}  // namespace deepseek_attn
