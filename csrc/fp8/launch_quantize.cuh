#pragma once
// Grid and block choice of the FP8 quantisers; included by kernels/inst/quantize_*.cu only.

#include "common/cuda_launch.cuh"
#include "fp8/kernels/quantize.cuh"
#include "fp8/params.h"

namespace deepseek_attn {
namespace cuda {

// Vector loads need every group to start on a 4-element boundary.
inline bool fp8_rows_allow_vector_loads(const Fp8QuantizeParams& p) {
  return p.cols % 4 == 0 && p.group % 4 == 0;
}

template <DType kSource>
cudaError_t launch_quantize_act(const Fp8QuantizeParams& p, cudaStream_t stream) {
  const int64_t tasks = p.rows * ((p.cols + p.group - 1) / p.group);
  const unsigned blocks = ceil_div(tasks, kQuantizeWarps);
  if (fp8_rows_allow_vector_loads(p)) {
    return launch_kernel(quantize_act_kernel<kSource, 4>, dim3(blocks), kQuantizeWarps * 32, 0,
                         stream, p);
  }
  return launch_kernel(quantize_act_kernel<kSource, 1>, dim3(blocks), kQuantizeWarps * 32, 0,
                       stream, p);
}

template <DType kSource>
cudaError_t launch_quantize_weight(const Fp8QuantizeParams& p, cudaStream_t stream) {
  const unsigned blocks = ceil_div(p.rows, p.group) * ceil_div(p.cols, p.group);
  if (fp8_rows_allow_vector_loads(p)) {
    return launch_kernel(quantize_weight_kernel<kSource, 4>, dim3(blocks), kWeightThreads, 0,
                         stream, p);
  }
  return launch_kernel(quantize_weight_kernel<kSource, 1>, dim3(blocks), kWeightThreads, 0, stream,
                       p);
}

}  // namespace cuda
}  // namespace deepseek_attn
