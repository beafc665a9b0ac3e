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

// The indexer's backward: the dq/dweights kernel, then the dk kernel.
template <DType kDType, int kHeadDim>
cudaError_t launch_indexer_bwd(const IndexerBwdParams& p, cudaStream_t stream);

inline cudaError_t launch_indexer_bwd_for(DType type, const IndexerBwdParams& p,
                                          cudaStream_t stream) {
  const bool wide = p.forward.head_dim == 128;
  if (type == DType::kBFloat16) {
    return wide ? launch_indexer_bwd<DType::kBFloat16, 128>(p, stream)
                : launch_indexer_bwd<DType::kBFloat16, 64>(p, stream);
  }
  if (type == DType::kFloat16) {
    return wide ? launch_indexer_bwd<DType::kFloat16, 128>(p, stream)
                : launch_indexer_bwd<DType::kFloat16, 64>(p, stream);
  }
  return cudaErrorInvalidValue;
}

// The sparse attention backward's dq and dk/dv kernels, in that order on `stream`.
template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_sparse_attn_bwd(const SparseBwdParams& p, cudaStream_t stream);

// The instantiation for runtime head dims and dtype: K/V rows of csrc/instantiations.py's
// CORE_LISTED_HEAD_DIMS in bf16 or fp16, and bf16 latent rows 576/512 (checked before by
// device_call.cpp).
inline cudaError_t launch_sparse_attn_bwd_for(DType type, const SparseBwdParams& p,
                                              cudaStream_t stream) {
  const bool bf16 = type == DType::kBFloat16;
#define DEEPSEEK_ATTN_DISPATCH(QK, V)                                              \
  if (p.head_dim_qk == QK && p.head_dim_v == V) {                                  \
    return bf16 ? launch_sparse_attn_bwd<QK, V, DType::kBFloat16>(p, stream)       \
                : launch_sparse_attn_bwd<QK, V, DType::kFloat16>(p, stream);       \
  }
  DEEPSEEK_ATTN_DISPATCH(64, 64)
  DEEPSEEK_ATTN_DISPATCH(128, 128)
  DEEPSEEK_ATTN_DISPATCH(192, 128)
#undef DEEPSEEK_ATTN_DISPATCH
  if (p.head_dim_qk == 576 && p.head_dim_v == 512 && bf16) {
    return launch_sparse_attn_bwd<576, 512, DType::kBFloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace deepseek_attn
