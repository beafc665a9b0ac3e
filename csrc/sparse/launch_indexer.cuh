#pragma once
// Grid and shared memory of the lightning indexer's kernels; included by kernels/inst/indexer_*.cu
// only.

#include "common/cuda_launch.cuh"
#include "sparse/kernels/indexer.cuh"
#include "sparse/params.h"

namespace deepseek_attn {
namespace cuda {

// One CTA per (query token, sequence).
template <DType kInput, int kHeadDim>
cudaError_t launch_indexer(const IndexerParams& p, cudaStream_t stream) {
  IndexerSmemLayout layout{int((p.heads + 15) / 16 * 16), TilePitch<kHeadDim>::value, 0};
  const dim3 grid(unsigned(p.seqlen_q), unsigned(p.batch));
  if (p.logits != nullptr) {
    return launch_kernel(indexer_logits_kernel<kInput, kHeadDim>, grid, kIndexerThreads,
                         layout.bytes(), stream, p, layout);
  }
  layout.capacity = indexer_topk_capacity(p.topk);
  return launch_kernel(indexer_topk_kernel<kInput, kHeadDim>, grid, kIndexerThreads,
                       layout.bytes(), stream, p, layout);
}

}  // namespace cuda
}  // namespace deepseek_attn
