#pragma once
// Host-side entry points of the FP8 CUDA kernels (instantiated in kernels/inst/); plain C++.

#include <cuda_runtime_api.h>

#include "fp8/params.h"

namespace deepseek_attn {
namespace cuda {

template <Fp8Source kSource>
cudaError_t launch_quantize_act(const Fp8QuantizeParams& p, cudaStream_t stream);

template <Fp8Source kSource>
cudaError_t launch_quantize_weight(const Fp8QuantizeParams& p, cudaStream_t stream);

// `hopper`: the sm90a kernel (the sm80/sm89 one where TMA cannot address the operands).
template <Fp8GemmOut kOut>
cudaError_t launch_fp8_gemm(const Fp8GemmParams& p, bool hopper, cudaStream_t stream);

// The instantiation for a runtime source / output type.
inline cudaError_t launch_quantize_act_for(Fp8Source source, const Fp8QuantizeParams& p,
                                           cudaStream_t stream) {
  switch (source) {
    case Fp8Source::kFloat32: return launch_quantize_act<Fp8Source::kFloat32>(p, stream);
    case Fp8Source::kBFloat16: return launch_quantize_act<Fp8Source::kBFloat16>(p, stream);
    case Fp8Source::kFloat16: return launch_quantize_act<Fp8Source::kFloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

inline cudaError_t launch_quantize_weight_for(Fp8Source source, const Fp8QuantizeParams& p,
                                              cudaStream_t stream) {
  switch (source) {
    case Fp8Source::kFloat32: return launch_quantize_weight<Fp8Source::kFloat32>(p, stream);
    case Fp8Source::kBFloat16: return launch_quantize_weight<Fp8Source::kBFloat16>(p, stream);
    case Fp8Source::kFloat16: return launch_quantize_weight<Fp8Source::kFloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

inline cudaError_t launch_fp8_gemm_for(Fp8GemmOut out, const Fp8GemmParams& p, bool hopper,
                                       cudaStream_t stream) {
  switch (out) {
    case Fp8GemmOut::kBFloat16: return launch_fp8_gemm<Fp8GemmOut::kBFloat16>(p, hopper, stream);
    case Fp8GemmOut::kFloat16: return launch_fp8_gemm<Fp8GemmOut::kFloat16>(p, hopper, stream);
    case Fp8GemmOut::kFloat32: return launch_fp8_gemm<Fp8GemmOut::kFloat32>(p, hopper, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace deepseek_attn
