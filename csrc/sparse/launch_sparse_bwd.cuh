#pragma once
// Grids of the sparse attention backward's kernels; included by kernels/inst/sparse_bwd_*.cu only.

#include "common/cuda_launch.cuh"
#include "sparse/kernels/block_bwd.cuh"
#include "sparse/kernels/sparse_bwd.cuh"
#include "sparse/params.h"

namespace deepseek_attn {
namespace cuda {

// dK/dV of block lists on tensor cores: one pass, or a dV pass then a dK pass for wide heads.
template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_block_bwd_dkdv(const SparseBwdParams& p, cudaStream_t stream) {
  using Tile = BlockDkDvTile<kDimQK, kDimV>;
  const dim3 grid(ceil_div(p.seqlen_k, Tile::kBlockN), unsigned(p.heads_kv), unsigned(p.batch));
  if constexpr (Tile::kTwoPasses) {
    const cudaError_t status =
        launch_kernel(block_bwd_dkdv_kernel<kDimQK, kDimV, kDType, false, true>, grid,
                      Tile::kThreads, Tile::kSmemBytes, stream, p);
    if (status != cudaSuccess) return status;
    return launch_kernel(block_bwd_dkdv_kernel<kDimQK, kDimV, kDType, true, false>, grid,
                         Tile::kThreads, Tile::kSmemBytes, stream, p);
  } else {
    return launch_kernel(block_bwd_dkdv_kernel<kDimQK, kDimV, kDType, true, true>, grid,
                         Tile::kThreads, Tile::kSmemBytes, stream, p);
  }
}

// dQ on tensor cores for separate K/V rows (any list), SIMT for latent rows; dK/dV on tensor
// cores for block lists the kernel takes, SIMT for token lists, other blocks and latent rows.
template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_sparse_attn_bwd(const SparseBwdParams& p, cudaStream_t stream) {
  const int64_t group = p.heads_q / p.heads_kv;
  constexpr bool kRows = kDimQK + kDimV <= 320;  // not the 576/512 latent instantiation
  cudaError_t status;
  if constexpr (kRows) {
    using Dq = BlockDqTile<kDimQK, kDimV>;
    status = launch_kernel(
        block_bwd_dq_kernel<kDimQK, kDimV, kDType>,
        dim3(unsigned(p.seqlen_q), unsigned(p.heads_kv * ceil_div(group, Dq::kBlockM)),
             unsigned(p.batch)),
        Dq::kThreads, Dq::kSmemBytes, stream, p);
  } else {
    status = launch_kernel(
        sparse_bwd_dq_kernel<kDType, kDimQK, kDimV>,
        dim3(unsigned(p.seqlen_q), unsigned(p.heads_kv) * ceil_div(group, kSparseBwdHeadsPerCta),
             unsigned(p.batch)),
        kSparseBwdThreads, 0, stream, p);
  }
  if (status != cudaSuccess) return status;
  if constexpr (kRows) {
    if (block_bwd_on_tensor_cores(p.index_block_size)) {
      return launch_block_bwd_dkdv<kDimQK, kDimV, kDType>(p, stream);
    }
  }
  return launch_kernel(sparse_bwd_dkv_kernel<kDType, kDimQK, kDimV>,
                       dim3(unsigned(p.seqlen_k), unsigned(p.heads_kv), unsigned(p.batch)),
                       kSparseBwdThreads, 0, stream, p);
}

}  // namespace cuda
}  // namespace deepseek_attn
