// CUDA implementation of the MLA ops: the device guard and the launch on the current stream;
// checks, allocation through torch and params come from device_call.cpp.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "mla/device_call.h"
#include "mla/launch.h"

namespace deepseek_attn {
namespace {

std::tuple<at::Tensor, at::Tensor> mla_norm_rope_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double eps, const std::optional<at::Tensor>& cache,
    const std::optional<at::Tensor>& cache_slots) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const NormRopeCall call =
      prepare_mla_norm_rope(x, norm_weight, rope_cos, rope_sin, eps, cache, cache_slots);
  if (call.needs_launch) {
    C10_CUDA_CHECK(
        cuda::launch_norm_rope_for(call.type, call.params, c10::cuda::getCurrentCUDAStream()));
  }
  return {call.y, call.rstd};
}

std::tuple<at::Tensor, at::Tensor> mla_norm_rope_bwd_cuda(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
    const at::Tensor& rstd, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const NormRopeBwdCall call =
      prepare_mla_norm_rope_bwd(dy, x, norm_weight, rstd, rope_cos, rope_sin);
  if (call.needs_launch) {
    C10_CUDA_CHECK(
        cuda::launch_norm_rope_bwd_for(call.type, call.params, c10::cuda::getCurrentCUDAStream()));
  }
  return {call.dx, finish_mla_norm_rope_bwd(call, x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("mla_norm_rope", &mla_norm_rope_cuda);
  m.impl("mla_norm_rope_bwd", &mla_norm_rope_bwd_cuda);
}

}  // namespace deepseek_attn
