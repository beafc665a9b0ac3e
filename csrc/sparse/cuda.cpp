// CUDA implementation of the sparse family's ops: the device guard and the launch on the current
// stream; checks, allocation through torch and params come from device_call.cpp.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "sparse/device_call.h"
#include "sparse/launch.h"

namespace deepseek_attn {
namespace {

at::Tensor run_indexer(const IndexerCall& call) {
  if (call.needs_launch) {
    C10_CUDA_CHECK(
        cuda::launch_indexer_for(call.input, call.params, c10::cuda::getCurrentCUDAStream()));
  }
  return call.output;
}

at::Tensor indexer_logits_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                               const std::optional<at::Tensor>& k_scale,
                               const std::optional<at::Tensor>& seqlens_k, double softmax_scale,
                               bool causal) {
  const c10::cuda::CUDAGuard device_guard(q.device());
  return run_indexer(
      prepare_indexer(q, k, weights, k_scale, seqlens_k, std::nullopt, softmax_scale, causal));
}

at::Tensor indexer_topk_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                             const std::optional<at::Tensor>& k_scale,
                             const std::optional<at::Tensor>& seqlens_k, int64_t topk,
                             double softmax_scale, bool causal) {
  const c10::cuda::CUDAGuard device_guard(q.device());
  return run_indexer(
      prepare_indexer(q, k, weights, k_scale, seqlens_k, topk, softmax_scale, causal));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> indexer_logits_bwd_cuda(
    const at::Tensor& dlogits, const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
    const std::optional<at::Tensor>& seqlens_k, double softmax_scale, bool causal) {
  const c10::cuda::CUDAGuard device_guard(q.device());
  const IndexerBwdCall call =
      prepare_indexer_bwd(dlogits, q, k, weights, seqlens_k, softmax_scale, causal);
  if (call.needs_launch) {
    C10_CUDA_CHECK(
        cuda::launch_indexer_bwd_for(call.type, call.params, c10::cuda::getCurrentCUDAStream()));
  }
  return {call.dq, call.dk, call.dweights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_sparse_attn_bwd(const SparseBwdCall& call) {
  if (call.needs_launch) {
    C10_CUDA_CHECK(cuda::launch_sparse_attn_bwd_for(call.type, call.params,
                                                    c10::cuda::getCurrentCUDAStream()));
  }
  return {call.dq, call.dk, call.dv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attn_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
    const std::optional<at::Tensor>& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& indices, int64_t head_dim_v, double softmax_scale) {
  const c10::cuda::CUDAGuard device_guard(q.device());
  return run_sparse_attn_bwd(
      prepare_sparse_attn_bwd(dout, q, k, v, out, lse, indices, head_dim_v, softmax_scale));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attn_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& block_indices,
    int64_t block_size, bool causal, double softmax_scale) {
  const c10::cuda::CUDAGuard device_guard(q.device());
  return run_sparse_attn_bwd(prepare_block_sparse_attn_bwd(
      dout, q, k, v, out, lse, block_indices, block_size, causal, softmax_scale));
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("sparse_attn_bwd", &sparse_attn_bwd_cuda);
  m.impl("block_sparse_attn_bwd", &block_sparse_attn_bwd_cuda);
  m.impl("indexer_logits", &indexer_logits_cuda);
  m.impl("indexer_topk", &indexer_topk_cuda);
  m.impl("indexer_logits_bwd", &indexer_logits_bwd_cuda);
}

}  // namespace deepseek_attn
