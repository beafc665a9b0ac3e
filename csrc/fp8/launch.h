#pragma once
// Host-side entry points of the FP8 CUDA kernels (instantiated in kernels/inst/); plain C++.

#include <cuda_runtime_api.h>

#include "fp8/params.h"

namespace deepseek_attn {
namespace cuda {

template <DType kSource>
cudaError_t launch_quantize_act(const Fp8QuantizeParams& p, cudaStream_t stream);

template <DType kSource>
cudaError_t launch_quantize_weight(const Fp8QuantizeParams& p, cudaStream_t stream);

// `hopper`: the sm90a kernel (the sm80/sm89 one where TMA cannot address the operands).
template <DType kOut>
cudaError_t launch_fp8_gemm(const Fp8GemmParams& p, bool hopper, cudaStream_t stream);

// The instantiation for a runtime source / output dtype.
inline cudaError_t launch_quantize_act_for(DType source, const Fp8QuantizeParams& p,
                                           cudaStream_t stream) {
  switch (source) {
    case DType::kFloat32:
      return launch_quantize_act<DType::kFloat32>(p, stream);
    case DType::kBFloat16:
      return launch_quantize_act<DType::kBFloat16>(p, stream);
    case DType::kFloat16:
      return launch_quantize_act<DType::kFloat16>(p, stream);
    case DType::kE4m3:
      break;  // already FP8: the checks reject it first
  }
  return cudaErrorInvalidValue;
}

inline cudaError_t launch_quantize_weight_for(DType source, const Fp8QuantizeParams& p,
                                              cudaStream_t stream) {
  switch (source) {
    case DType::kFloat32:
      return launch_quantize_weight<DType::kFloat32>(p, stream);
    case DType::kBFloat16:
      return launch_quantize_weight<DType::kBFloat16>(p, stream);
    case DType::kFloat16:
      return launch_quantize_weight<DType::kFloat16>(p, stream);
    case DType::kE4m3:
      break;
  }
  return cudaErrorInvalidValue;
}

inline cudaError_t launch_fp8_gemm_for(DType out, const Fp8GemmParams& p, bool hopper,
                                       cudaStream_t stream) {
  switch (out) {
    case DType::kBFloat16:
      return launch_fp8_gemm<DType::kBFloat16>(p, hopper, stream);
    case DType::kFloat16:
      return launch_fp8_gemm<DType::kFloat16>(p, hopper, stream);
    case DType::kFloat32:
      return launch_fp8_gemm<DType::kFloat32>(p, hopper, stream);
    case DType::kE4m3:
      break;  // not an output type: the checks reject it first
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace deepseek_attn
