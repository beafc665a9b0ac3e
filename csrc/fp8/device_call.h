#pragma once
// The torch-facing half of the FP8 ops' launches on a GPU-style device, shared by the CUDA back
// end (cuda.cpp) and the emulated test extension (tests/emulation/): checks, contiguous or
// 16-byte-aligned operands, outputs and params. The caller guards the device and launches.

#include <ATen/ATen.h>

#include "common/device_arch.h"
#include "fp8/params.h"

namespace deepseek_attn {

struct Fp8QuantizeCall {
  Fp8QuantizeParams params;
  DType source = DType::kFloat32;
  at::Tensor x, payload, scales;
  bool needs_launch = false;  // false: empty, the outputs are final
};

struct Fp8GemmCall {
  Fp8GemmParams params;
  DType out_type = DType::kBFloat16;
  at::Tensor a, b, a_scales, b_scales, out;
  bool hopper = false;        // the sm90a kernel takes it
  bool needs_launch = false;  // false: the output is already final
};

Fp8QuantizeCall prepare_quantize_act(const at::Tensor& x, int64_t group_size, bool ue8m0);
Fp8QuantizeCall prepare_quantize_weight(const at::Tensor& w, int64_t block_size, bool ue8m0);
// `arch`: the device's (its Hopper flag picks the wgmma kernel).
Fp8GemmCall prepare_fp8_gemm(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b,
                             const at::Tensor& b_scales, at::ScalarType out_dtype,
                             const DeviceArch& arch);

}  // namespace deepseek_attn
