// CUDA implementation of the FP8 ops (SPEC §2): the checks shared with the CPU path, device
// guard, allocation through torch, params, and a launch on the current stream.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "common/checks.h"
#include "fp8/checks.h"
#include "fp8/launch.h"
#include "fp8/params.h"

namespace deepseek_attn {
namespace {

template <typename Launch>
cudaError_t dispatch_source(at::ScalarType dtype, Launch&& launch) {
  switch (dtype) {
    case at::kFloat:
      return launch(std::integral_constant<Fp8Source, Fp8Source::kFloat32>());
    case at::kBFloat16:
      return launch(std::integral_constant<Fp8Source, Fp8Source::kBFloat16>());
    default:
      return launch(std::integral_constant<Fp8Source, Fp8Source::kFloat16>());
  }
}

Fp8QuantizeParams quantize_params(const at::Tensor& x, const at::Tensor& payload,
                                  const at::Tensor& scales, int64_t group, bool ue8m0) {
  Fp8QuantizeParams p;
  p.x = x.data_ptr();
  p.payload = static_cast<uint8_t*>(payload.data_ptr());
  p.scales = scales.data_ptr<float>();
  p.cols = x.size(-1);
  p.rows = p.cols == 0 ? 0 : x.numel() / p.cols;
  p.group = group;
  p.ue8m0 = ue8m0;
  return p;
}

std::tuple<at::Tensor, at::Tensor> quantize_act_cuda(const at::Tensor& x_in, int64_t group_size,
                                                     bool ue8m0) {
  check_quantize_act_inputs(x_in, group_size);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor payload = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end());
  scale_shape.back() = (x.size(-1) + group_size - 1) / group_size;
  at::Tensor scales = at::empty(scale_shape, x.options().dtype(at::kFloat));
  if (scales.numel() == 0) return {payload, scales};
  const Fp8QuantizeParams p = quantize_params(x, payload, scales, group_size, ue8m0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(dispatch_source(x.scalar_type(), [&](auto source) {
    return cuda::launch_quantize_act<decltype(source)::value>(p, stream);
  }));
  return {payload, scales};
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_cuda(const at::Tensor& w_in, int64_t block_size,
                                                        bool ue8m0) {
  check_quantize_weight_inputs(w_in, block_size);
  const c10::cuda::CUDAGuard device_guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  at::Tensor payload = at::empty(w.sizes(), w.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor scales = at::empty({(w.size(0) + block_size - 1) / block_size,
                                 (w.size(1) + block_size - 1) / block_size},
                                w.options().dtype(at::kFloat));
  if (scales.numel() == 0) return {payload, scales};
  Fp8QuantizeParams p = quantize_params(w, payload, scales, block_size, ue8m0);
  p.rows = w.size(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(dispatch_source(w.scalar_type(), [&](auto source) {
    return cuda::launch_quantize_weight<decltype(source)::value>(p, stream);
  }));
  return {payload, scales};
}

// Zero columns appended to K keep every row 16-byte aligned for cp.async and TMA (zeros add
// nothing); a misaligned start gets an aligned copy too.
at::Tensor aligned_with_k_padded_to_16(const at::Tensor& t) {
  const int64_t pad = (16 - t.size(1) % 16) % 16;
  if (pad == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0) return t;
  at::Tensor padded = at::zeros({t.size(0), t.size(1) + pad}, t.options());
  padded.narrow(1, 0, t.size(1)).copy_(t);
  return padded;
}

at::Tensor fp8_gemm_cuda(const at::Tensor& a_in, const at::Tensor& a_scales_in,
                         const at::Tensor& b_in, const at::Tensor& b_scales_in,
                         at::ScalarType out_dtype) {
  const Fp8GemmShape shape = check_fp8_gemm_inputs(a_in, a_scales_in, b_in, b_scales_in, out_dtype);
  DSA_CHECK_VALUE((shape.n + 63) / 64 <= 65535,
                  "fp8_gemm supports N up to 65535 * 64 on CUDA (got ", shape.n, ")");
  const c10::cuda::CUDAGuard device_guard(a_in.device());
  at::Tensor out = at::empty({shape.m, shape.n}, a_in.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  if (shape.k == 0) return out.zero_();
  const at::Tensor a = aligned_with_k_padded_to_16(a_in);
  const at::Tensor b = aligned_with_k_padded_to_16(b_in);
  const at::Tensor a_scales = a_scales_in.contiguous();
  const at::Tensor b_scales = b_scales_in.contiguous();

  Fp8GemmParams p;
  p.a = static_cast<const uint8_t*>(a.data_ptr());
  p.b = static_cast<const uint8_t*>(b.data_ptr());
  p.a_scales = a_scales.data_ptr<float>();
  p.b_scales = b_scales.data_ptr<float>();
  p.out = out.data_ptr();
  p.m = shape.m;
  p.n = shape.n;
  p.k = a.size(1);
  p.k_blocks = shape.k_blocks;
  p.b_row_scaled = shape.b_scaling == Fp8BScaling::kRow;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t status;
  if (out_dtype == at::kBFloat16) {
    status = cuda::launch_fp8_gemm<Fp8GemmOut::kBFloat16>(p, stream);
  } else if (out_dtype == at::kHalf) {
    status = cuda::launch_fp8_gemm<Fp8GemmOut::kFloat16>(p, stream);
  } else {
    status = cuda::launch_fp8_gemm<Fp8GemmOut::kFloat32>(p, stream);
  }
  C10_CUDA_CHECK(status);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("quantize_act", &quantize_act_cuda);
  m.impl("quantize_weight", &quantize_weight_cuda);
  m.impl("fp8_gemm", &fp8_gemm_cuda);
}

}  // namespace deepseek_attn
