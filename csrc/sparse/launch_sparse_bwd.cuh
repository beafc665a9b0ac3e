#pragma once
// Grids of the sparse attention backward's kernels; included by kernels/inst/sparse_bwd_*.cu only.

#include "common/cuda_launch.cuh"
#include "sparse/kernels/sparse_bwd.cuh"
#include "sparse/params.h"

namespace deepseek_attn {
namespace cuda {

template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_sparse_attn_bwd(const SparseBwdParams& p, cudaStream_t stream) {
  const int64_t group = p.heads_q / p.heads_kv;
  const unsigned head_chunks = ceil_div(group, kSparseBwdHeadsPerCta);
  const cudaError_t status = launch_kernel(
      sparse_bwd_dq_kernel<kDType, kDimQK, kDimV>,
      dim3(unsigned(p.seqlen_q), unsigned(p.heads_kv) * head_chunks, unsigned(p.batch)),
      kSparseBwdThreads, 0, stream, p);
  if (status != cudaSuccess) return status;
  return launch_kernel(sparse_bwd_dkv_kernel<kDType, kDimQK, kDimV>,
                       dim3(unsigned(p.seqlen_k), unsigned(p.heads_kv), unsigned(p.batch)),
                       kSparseBwdThreads, 0, stream, p);
}

}  // namespace cuda
}  // namespace deepseek_attn
