#pragma once
// Host-side entry points of the sparse family's CUDA kernels (instantiated in kernels/inst/);
// plain C++.

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "sparse/params.h"

namespace deepseek_attn {
namespace cuda {

// The indexer's logits kernel when p.logits is set, else its top-k kernel.
template <DType kInput, int kHeadDim>
cudaError_t launch_indexer(const IndexerParams& p, cudaStream_t stream);

// The instantiation for a runtime input dtype (bf16, fp16, e4m3) and head dim (64, 128; the
// list of csrc/instantiations.py, checked before by device_call.cpp).
inline cudaError_t launch_indexer_for(DType input, const IndexerParams& p, cudaStream_t stream) {
  const bool wide = p.head_dim == 128;
  switch (input) {
    case DType::kBFloat16:
      return wide ? launch_indexer<DType::kBFloat16, 128>(p, stream)
                  : launch_indexer<DType::kBFloat16, 64>(p, stream);
    case DType::kFloat16:
      return wide ? launch_indexer<DType::kFloat16, 128>(p, stream)
                  : launch_indexer<DType::kFloat16, 64>(p, stream);
    case DType::kE4m3:
      return wide ? launch_indexer<DType::kE4m3, 128>(p, stream)
                  : launch_indexer<DType::kE4m3, 64>(p, stream);
    case DType::kFloat32:
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace deepseek_attn
