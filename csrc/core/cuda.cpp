// CUDA implementation of attention_core_fwd: the device guard and the launch on the current
// stream with no host synchronisation; checks, allocation and params come from device_call.cpp.
// Out-of-range indices and pages are skipped on CUDA (SPEC §0), not reported.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/cuda_device.h"
#include "common/dtype_aten.h"
#include "core/device_call.h"
#include "core/launch.h"

namespace deepseek_attn {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_core_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& block_table, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& indices, int64_t index_block_size, int64_t head_dim_v,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap) {
  const c10::cuda::OptionalCUDAGuard device_guard(
      q.is_cuda() ? std::optional<at::Device>(q.device()) : std::nullopt);
  const CoreFwdCall call = prepare_attention_core_fwd(
      {q, k, v, block_table, cache_seqlens, indices, index_block_size, head_dim_v}, softmax_scale,
      causal, window_left, window_right, softcap,
      q.is_cuda() ? device_arch(q.get_device()) : DeviceArch{});
  if (call.needs_launch) {
    C10_CUDA_CHECK(cuda::launch_core_fwd_for(call.params, dtype_of(q.scalar_type()), call.split,
                                             c10::cuda::getCurrentCUDAStream()));
  }
  return {call.out, call.lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("attention_core_fwd", &attention_core_fwd_cuda);
}

}  // namespace deepseek_attn
