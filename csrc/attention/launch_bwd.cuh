#pragma once
// Grid, block and shared-memory choice of the attention backward (Δ, dK/dV, dQ by atomics or
// its own pass); included by kernels/inst/flash_bwd_*.cu only.

#include "attention/kernels/sm80/flash_bwd.cuh"
#include "attention/params.h"
#include "common/cuda_launch.cuh"

namespace deepseek_attn {
namespace cuda {

template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_flash_bwd(const AttentionBwdParams& p, float* delta, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
  cudaError_t status = launch_kernel(flash_bwd_delta_kernel<kDType>, dim3(ceil_div(rows, 4)), 128,
                                     0, stream, p, delta);
  if (status != cudaSuccess) return status;

  AttentionBwdParams with_delta = p;
  with_delta.delta = delta;
  using DkDv = DkDvTile<kDimQK, kDimV>;
  const dim3 dkdv_grid(ceil_div(p.seqlen_k, DkDv::kBlockN), static_cast<unsigned>(p.heads_kv),
                       static_cast<unsigned>(p.batch));
  if (!p.deterministic) {  // dQ by atomics in the dK pass, then one conversion
    if constexpr (DkDv::kTwoPasses) {
      status = launch_kernel(flash_bwd_dkdv_kernel<kDimQK, kDimV, kDType, false, true, false>,
                             dkdv_grid, DkDv::kThreads, DkDv::kSmemBytes, stream, with_delta);
      if (status != cudaSuccess) return status;
      status = launch_kernel(flash_bwd_dkdv_kernel<kDimQK, kDimV, kDType, true, false, true>,
                             dkdv_grid, DkDv::kThreads, DkDv::kSmemBytesWithDq, stream, with_delta);
    } else {
      status = launch_kernel(flash_bwd_dkdv_kernel<kDimQK, kDimV, kDType, true, true, true>,
                             dkdv_grid, DkDv::kThreads, DkDv::kSmemBytesWithDq, stream, with_delta);
    }
    if (status != cudaSuccess) return status;
    const int64_t pairs = p.batch * p.heads_q * p.seqlen_q * kDimQK / 2;
    const unsigned blocks = ceil_div(pairs, 256) < 65535u ? ceil_div(pairs, 256) : 65535u;
    return launch_kernel(flash_bwd_dq_convert_kernel<kDType>, dim3(blocks), 256, 0, stream,
                         with_delta);
  }

  if constexpr (DkDv::kTwoPasses) {
    status = launch_kernel(flash_bwd_dkdv_kernel<kDimQK, kDimV, kDType, false, true, false>,
                           dkdv_grid, DkDv::kThreads, DkDv::kSmemBytes, stream, with_delta);
    if (status != cudaSuccess) return status;
    status = launch_kernel(flash_bwd_dkdv_kernel<kDimQK, kDimV, kDType, true, false, false>,
                           dkdv_grid, DkDv::kThreads, DkDv::kSmemBytes, stream, with_delta);
  } else {
    status = launch_kernel(flash_bwd_dkdv_kernel<kDimQK, kDimV, kDType, true, true, false>,
                           dkdv_grid, DkDv::kThreads, DkDv::kSmemBytes, stream, with_delta);
  }
  if (status != cudaSuccess) return status;

  using Dq = DqTile<kDimQK, kDimV>;
  const dim3 dq_grid(ceil_div(p.seqlen_q, Dq::kBlockM), static_cast<unsigned>(p.heads_q),
                     static_cast<unsigned>(p.batch));
  return launch_kernel(flash_bwd_dq_kernel<kDimQK, kDimV, kDType>, dq_grid, Dq::kThreads,
                       Dq::kSmemBytes, stream, with_delta);
}

}  // namespace cuda
}  // namespace deepseek_attn
