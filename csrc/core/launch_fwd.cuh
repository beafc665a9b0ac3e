#pragma once
// Grid, block and shared-memory choice of the core forward and its split-KV combine; included by
// kernels/inst/core_fwd_*.cu only.

#include "common/cuda_launch.cuh"
#include "core/kernels/sm80/core_fwd.cuh"
#include "core/head_dims.h"
#include "core/params.h"

namespace deepseek_attn {
namespace cuda {

template <int kDimQK, int kDimV, DType kDType, CoreKv kKv>
cudaError_t launch_core_fwd(const CoreFwdParams& p, const SplitKvParams& split,
                            cudaStream_t stream) {
  using Tile = CoreFwdTile<kDimQK, kDimV, kKv>;
  const QueryTiles tiles(p.heads_per_kv(),
                         list_tile_tokens(p.selection, p.heads_per_kv(), Tile::kBlockM),
                         p.seqlen_q, Tile::kBlockM);
  const dim3 grid(static_cast<unsigned>(tiles.token_tiles * tiles.head_chunks),
                  static_cast<unsigned>(p.heads_kv),
                  static_cast<unsigned>(p.batch * split.num_splits));
  if (p.selection.listed()) {
    if constexpr (kKv != CoreKv::kRows || core_lists_compiled(kDimQK, kDimV)) {
      return launch_kernel(core_fwd_kernel<kDimQK, kDimV, kDType, kKv, true, false>, grid,
                           Tile::kThreads, Tile::kSmemBytes + kListUnionBytes, stream, p, split);
    }
    return cudaErrorInvalidValue;  // unreachable: device_call.cpp rejects these head dims
  }
  if (split.num_splits == 1) {
    return launch_kernel(core_fwd_kernel<kDimQK, kDimV, kDType, kKv, false, false>, grid,
                         Tile::kThreads, Tile::kSmemBytes, stream, p, split);
  }
  // Balanced: the grid's z counts parts, each running its share of every sequence's blocks.
  const dim3 split_grid(grid.x, grid.y,
                        split.balanced ? static_cast<unsigned>(split.num_splits) : grid.z);
  const cudaError_t status =
      launch_kernel(core_fwd_kernel<kDimQK, kDimV, kDType, kKv, false, true>, split_grid,
                    Tile::kThreads, Tile::kSmemBytes, stream, p, split);
  if (status != cudaSuccess) return status;
  const unsigned rows = static_cast<unsigned>(p.batch * p.heads_q * p.seqlen_q);
  if constexpr (Tile::kLatent) {
    if (split.balanced) {
      return launch_kernel(balanced_split_combine_kernel<kDType, Tile::kBlockN>, dim3(rows), 128,
                           0, stream, p, split);
    }
  }
  return launch_kernel(split_kv_combine_kernel<kDType, CoreFwdParams>, dim3(rows), 128, 0, stream,
                       p, split);
}

}  // namespace cuda
}  // namespace deepseek_attn
