#pragma once
// Host-side entry points of the core's CUDA kernels, one explicit instantiation per
// (head dims x dtype x KV policy) in kernels/inst/. Plain C++: cuda.cpp includes this without
// nvcc.

#include <cuda_runtime_api.h>

#include <type_traits>

#include "common/dtype.h"
#include "core/head_dims.h"
#include "core/params.h"

namespace deepseek_attn {
namespace cuda {

// Forward over any key selection; split.num_splits > 1 (band selections only) runs the split-KV
// kernel and the combine kernel.
template <int kDimQK, int kDimV, DType kDType, CoreKv kKv>
cudaError_t launch_core_fwd(const CoreFwdParams& p, const SplitKvParams& split,
                            cudaStream_t stream);

// The launch of the instantiation matching the params' head dims, dtype and KV policy (all
// checked before by device_call.cpp: latent rows take bf16 queries).
inline cudaError_t launch_core_fwd_for(const CoreFwdParams& p, DType dtype,
                                       const SplitKvParams& split, cudaStream_t stream) {
  const CoreKv kv = p.kv.policy();
  if (kv == CoreKv::kLatentFp8) {
    return launch_core_fwd<kCoreLatentDimQK, kCoreLatentDimV, DType::kBFloat16, CoreKv::kLatentFp8>(
        p, split, stream);
  }
  if (kv == CoreKv::kLatent) {
    return launch_core_fwd<kCoreLatentDimQK, kCoreLatentDimV, DType::kBFloat16, CoreKv::kLatent>(
        p, split, stream);
  }
#define DEEPSEEK_ATTN_DISPATCH(QK, V)                                                      \
  if (p.head_dim_qk == QK && p.head_dim_v == V) {                                          \
    return dtype == DType::kBFloat16                                                       \
               ? launch_core_fwd<QK, V, DType::kBFloat16, CoreKv::kRows>(p, split, stream) \
               : launch_core_fwd<QK, V, DType::kFloat16, CoreKv::kRows>(p, split, stream); \
  }
  DEEPSEEK_ATTN_CORE_ROWS_HEAD_DIMS(DEEPSEEK_ATTN_DISPATCH)
#undef DEEPSEEK_ATTN_DISPATCH
  return cudaErrorInvalidValue;  // unreachable: the head dims were checked first
}

}  // namespace cuda
}  // namespace deepseek_attn
