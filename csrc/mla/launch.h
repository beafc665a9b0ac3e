#pragma once
// Host-side entry points of the MLA CUDA kernels (instantiated in kernels/inst/); plain C++.

#include <cuda_runtime_api.h>

#include "mla/params.h"

namespace deepseek_attn {
namespace cuda {

template <DType kType>
cudaError_t launch_norm_rope(const NormRopeParams& p, cudaStream_t stream);

template <DType kType>
cudaError_t launch_norm_rope_bwd(const NormRopeBwdParams& p, cudaStream_t stream);

// The instantiation for a runtime dtype (fp32, bf16, fp16; the checks reject the rest).
inline cudaError_t launch_norm_rope_for(DType type, const NormRopeParams& p, cudaStream_t stream) {
  switch (type) {
    case DType::kFloat32:
      return launch_norm_rope<DType::kFloat32>(p, stream);
    case DType::kBFloat16:
      return launch_norm_rope<DType::kBFloat16>(p, stream);
    case DType::kFloat16:
      return launch_norm_rope<DType::kFloat16>(p, stream);
    case DType::kE4m3:
      break;
  }
  return cudaErrorInvalidValue;
}

inline cudaError_t launch_norm_rope_bwd_for(DType type, const NormRopeBwdParams& p,
                                            cudaStream_t stream) {
  switch (type) {
    case DType::kFloat32:
      return launch_norm_rope_bwd<DType::kFloat32>(p, stream);
    case DType::kBFloat16:
      return launch_norm_rope_bwd<DType::kBFloat16>(p, stream);
    case DType::kFloat16:
      return launch_norm_rope_bwd<DType::kFloat16>(p, stream);
    case DType::kE4m3:
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace deepseek_attn
