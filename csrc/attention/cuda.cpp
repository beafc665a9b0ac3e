// CUDA implementation of flash_attn_fwd / flash_attn_bwd: the device guard, the launch on the
// current stream with no host synchronisation; checks, allocation through torch (no cudaMalloc,
// so CUDA graphs can capture it) and params come from device_call.cpp.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "attention/device_call.h"
#include "attention/launch.h"
#include "common/cuda_device.h"
#include "common/dtype_aten.h"

namespace deepseek_attn {
namespace {

// The device to guard: none for a q off the GPU, which the shared checks then report.
std::optional<at::Device> cuda_device_of(const at::Tensor& q) {
  return q.is_cuda() ? std::optional<at::Device>(q.device()) : std::nullopt;
}

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, double softmax_scale,
                                                       bool causal, int64_t window_left,
                                                       int64_t window_right, double softcap,
                                                       bool /*deterministic: backward only*/) {
  const c10::cuda::OptionalCUDAGuard device_guard(cuda_device_of(q));
  const FlashFwdCall call =
      prepare_flash_attn_fwd(q, k, v, softmax_scale, causal, window_left, window_right, softcap,
                             q.is_cuda() ? device_arch(q.get_device()) : DeviceArch{});
  if (call.needs_launch) {
    C10_CUDA_CHECK(cuda::launch_flash_fwd_for(call.params, dtype_of(q.scalar_type()), call.split,
                                              call.hopper, c10::cuda::getCurrentCUDAStream()));
  }
  return {call.out, call.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attn_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, double softmax_scale, bool causal,
    int64_t window_left, int64_t window_right, double softcap, bool deterministic) {
#ifdef DEEPSEEK_ATTN_WITHOUT_CUDA_BACKWARD  // its kernels are not compiled: never referenced
  TORCH_CHECK_NOT_IMPLEMENTED(false,
                              "this build of deepseek_attn has no CUDA attention backward (built "
                              "with DEEPSEEK_ATTN_DISABLE_BACKWARD=1); rebuild without it");
  return {};
#else
  const c10::cuda::OptionalCUDAGuard device_guard(cuda_device_of(q));
  const FlashBwdCall call =
      prepare_flash_attn_bwd(dout, q, k, v, out, lse, softmax_scale, causal, window_left,
                             window_right, softcap, deterministic);
  if (call.needs_launch) {
    C10_CUDA_CHECK(cuda::launch_flash_bwd_for(call.params, dtype_of(q.scalar_type()),
                                              call.delta.data_ptr<float>(),
                                              c10::cuda::getCurrentCUDAStream()));
  }
  return {call.dq, call.dk, call.dv};
#endif
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("flash_attn_fwd", &flash_attn_fwd_cuda);
  m.impl("flash_attn_bwd", &flash_attn_bwd_cuda);
}

}  // namespace deepseek_attn
