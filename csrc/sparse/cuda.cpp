// CUDA implementation of the sparse family's ops: the device guard and the launch on the current
// stream; checks, allocation through torch and params come from device_call.cpp.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

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

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("indexer_logits", &indexer_logits_cuda);
  m.impl("indexer_topk", &indexer_topk_cuda);
}

}  // namespace deepseek_attn
