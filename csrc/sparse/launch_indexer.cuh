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

template <DType kDType, int kHeadDim>
cudaError_t launch_indexer_bwd(const IndexerBwdParams& p, cudaStream_t stream) {
  const IndexerParams& f = p.forward;
  const IndexerSmemLayout layout{int((f.heads + 15) / 16 * 16), TilePitch<kHeadDim>::value, 0};
  const cudaError_t status =
      launch_kernel(indexer_bwd_dq_kernel<kDType, kHeadDim>,
                    dim3(unsigned(f.seqlen_q), unsigned(f.batch)), kIndexerBwdThreads,
                    layout.bytes(), stream, p, layout);
  if (status != cudaSuccess) return status;
  return launch_kernel(indexer_bwd_dk_kernel<kDType, kHeadDim>,
                       dim3(ceil_div(f.seqlen_k, kIndexerBlockKeys), unsigned(f.batch)),
                       kIndexerThreads, indexer_bwd_dk_smem_bytes(layout), stream, p, layout);
}

}  // namespace cuda
}  // namespace deepseek_attn
