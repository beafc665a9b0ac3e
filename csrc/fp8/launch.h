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

template <Fp8GemmOut kOut>
cudaError_t launch_fp8_gemm(const Fp8GemmParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace deepseek_attn
