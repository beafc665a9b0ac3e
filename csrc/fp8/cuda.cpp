// CUDA implementation of the FP8 ops (SPEC §2): the device guard and the launch on the current
// stream; checks, allocation through torch and params come from device_call.cpp.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "fp8/device_call.h"
#include "common/cuda_device.h"
#include "fp8/launch.h"

namespace deepseek_attn {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_act_cuda(const at::Tensor& x, int64_t group_size,
                                                     bool ue8m0) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const Fp8QuantizeCall call = prepare_quantize_act(x, group_size, ue8m0);
  if (call.needs_launch) {
    C10_CUDA_CHECK(cuda::launch_quantize_act_for(call.source, call.params,
                                                 c10::cuda::getCurrentCUDAStream()));
  }
  return {call.payload, call.scales};
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_cuda(const at::Tensor& w, int64_t block_size,
                                                        bool ue8m0) {
  const c10::cuda::CUDAGuard device_guard(w.device());
  const Fp8QuantizeCall call = prepare_quantize_weight(w, block_size, ue8m0);
  if (call.needs_launch) {
    C10_CUDA_CHECK(cuda::launch_quantize_weight_for(call.source, call.params,
                                                    c10::cuda::getCurrentCUDAStream()));
  }
  return {call.payload, call.scales};
}

at::Tensor fp8_gemm_cuda(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b,
                         const at::Tensor& b_scales, at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard device_guard(a.device());
  const Fp8GemmCall call =
      prepare_fp8_gemm(a, a_scales, b, b_scales, out_dtype, device_arch(a.get_device()));
  if (call.needs_launch) {
    C10_CUDA_CHECK(cuda::launch_fp8_gemm_for(call.out_type, call.params, call.hopper,
                                             c10::cuda::getCurrentCUDAStream()));
  }
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("quantize_act", &quantize_act_cuda);
  m.impl("quantize_weight", &quantize_weight_cuda);
  m.impl("fp8_gemm", &fp8_gemm_cuda);
}

}  // namespace deepseek_attn
