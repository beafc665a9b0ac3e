// See device_call.h. Plain ATen: no CUDA headers, so the CPU-only build compiles it too.

#include "fp8/device_call.h"

#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/dtype_aten.h"
#include "fp8/checks.h"

namespace deepseek_attn {
namespace {

// Outputs and params of a quantiser over `x` viewed as rows of its last dimension.
Fp8QuantizeCall quantize_call(const at::Tensor& x, at::IntArrayRef scale_shape, int64_t group,
                              bool ue8m0) {
  Fp8QuantizeCall call;
  call.x = x;
  call.source = dtype_of(x.scalar_type());
  call.payload = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  call.scales = at::empty(scale_shape, x.options().dtype(at::kFloat));
  if (call.scales.numel() == 0) return call;
  Fp8QuantizeParams& p = call.params;
  p.x = x.data_ptr();
  p.payload = static_cast<uint8_t*>(call.payload.data_ptr());
  p.scales = call.scales.data_ptr<float>();
  p.cols = x.size(-1);
  p.rows = p.cols == 0 ? 0 : x.numel() / p.cols;
  p.group = group;
  p.ue8m0 = ue8m0;
  call.needs_launch = true;
  return call;
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

}  // namespace

Fp8QuantizeCall prepare_quantize_act(const at::Tensor& x_in, int64_t group_size, bool ue8m0) {
  check_quantize_act_inputs(x_in, group_size);
  const at::Tensor x = x_in.contiguous();
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end());
  scale_shape.back() = (x.size(-1) + group_size - 1) / group_size;
  return quantize_call(x, scale_shape, group_size, ue8m0);
}

Fp8QuantizeCall prepare_quantize_weight(const at::Tensor& w_in, int64_t block_size, bool ue8m0) {
  check_quantize_weight_inputs(w_in, block_size);
  const at::Tensor w = w_in.contiguous();
  Fp8QuantizeCall call = quantize_call(
      w, {(w.size(0) + block_size - 1) / block_size, (w.size(1) + block_size - 1) / block_size},
      block_size, ue8m0);
  call.params.rows = w.size(0);
  return call;
}

Fp8GemmCall prepare_fp8_gemm(const at::Tensor& a_in, const at::Tensor& a_scales,
                             const at::Tensor& b_in, const at::Tensor& b_scales,
                             at::ScalarType out_dtype, const DeviceArch& arch) {
  const Fp8GemmShape shape = check_fp8_gemm_inputs(a_in, a_scales, b_in, b_scales, out_dtype);
  DEEPSEEK_ATTN_CHECK_VALUE((shape.n + 63) / 64 <= 65535,
                            "fp8_gemm supports N up to 65535 * 64 on CUDA (got ", shape.n, ")");
  Fp8GemmCall call;
  call.out_type = dtype_of(out_dtype);
  call.out = at::empty({shape.m, shape.n}, a_in.options().dtype(out_dtype));
  if (call.out.numel() == 0) return call;
  if (shape.k == 0) {
    call.out.zero_();
    return call;
  }
  call.a = aligned_with_k_padded_to_16(a_in);
  call.b = aligned_with_k_padded_to_16(b_in);
  call.a_scales = a_scales.contiguous();
  call.b_scales = b_scales.contiguous();

  Fp8GemmParams& p = call.params;
  p.a = static_cast<const uint8_t*>(call.a.data_ptr());
  p.b = static_cast<const uint8_t*>(call.b.data_ptr());
  p.a_scales = call.a_scales.data_ptr<float>();
  p.b_scales = call.b_scales.data_ptr<float>();
  p.out = call.out.data_ptr();
  p.m = shape.m;
  p.n = shape.n;
  p.k = call.a.size(1);
  p.k_blocks = shape.k_blocks;
  p.b_scaling = shape.b_scaling;
  call.hopper = arch.hopper_kernels;
  call.needs_launch = true;
  return call;
}

}  // namespace deepseek_attn
