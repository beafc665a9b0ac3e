#pragma once
// Grid choice of MLA's fused latent epilogue; included by kernels/inst/norm_rope_*.cu only.

#include "common/cuda_launch.cuh"
#include "mla/kernels/norm_rope.cuh"
#include "mla/params.h"

namespace deepseek_attn {
namespace cuda {

template <DType kType>
cudaError_t launch_norm_rope(const NormRopeParams& p, cudaStream_t stream) {
  return launch_kernel(norm_rope_kernel<kType>, dim3(ceil_div(p.tokens * p.groups, kNormRopeWarps)),
                       kNormRopeWarps * 32, 0, stream, p);
}

template <DType kType>
cudaError_t launch_norm_rope_bwd(const NormRopeBwdParams& p, cudaStream_t stream) {
  return launch_kernel(norm_rope_bwd_kernel<kType>, dim3(ceil_div(p.workers, kNormRopeWarps)),
                       kNormRopeWarps * 32, 0, stream, p);
}

}  // namespace cuda
}  // namespace deepseek_attn
