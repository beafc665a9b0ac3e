#pragma once
// Host-side entry points of the CUDA attention kernels, one explicit instantiation per
// (head dims x dtype) in kernels/inst/. Plain C++: cuda.cpp includes this without nvcc.

#include <cuda_runtime_api.h>

#include <type_traits>

#include "attention/head_dims.h"
#include "attention/params.h"
#include "common/dtype.h"

namespace deepseek_attn {
namespace cuda {

// Forward; split.num_splits > 1 runs the split-KV kernel and the combine kernel; `hopper` (a
// plan of heuristics.h) the sm90a kernel, or the sm80 one where TMA cannot address the tensors.
template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_flash_fwd(const AttentionFwdParams& p, const SplitKvParams& split, bool hopper,
                             cudaStream_t stream);

// Backward: Δ into `delta` (B, Hq, Sq) fp32 scratch, then dK/dV and dQ.
template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_flash_bwd(const AttentionBwdParams& p, float* delta, cudaStream_t stream);

// Calls launch(integral_constant<Dqk>, integral_constant<Dv>, integral_constant<DType>) for
// the compiled instantiation matching the params and dtype (both checked before).
template <typename Launch>
cudaError_t dispatch_head_dims(const AttentionFwdParams& p, DType dtype, Launch&& launch) {
  const auto with_dtype = [&](auto qk, auto v) {
    if (dtype == DType::kBFloat16) {
      return launch(qk, v, std::integral_constant<DType, DType::kBFloat16>());
    }
    return launch(qk, v, std::integral_constant<DType, DType::kFloat16>());
  };
#define DEEPSEEK_ATTN_DISPATCH(QK, V)                                                       \
  if (p.head_dim_qk == QK && p.head_dim_v == V) {                                           \
    return with_dtype(std::integral_constant<int, QK>(), std::integral_constant<int, V>()); \
  }
  DEEPSEEK_ATTN_ATTENTION_HEAD_DIMS(DEEPSEEK_ATTN_DISPATCH)
#undef DEEPSEEK_ATTN_DISPATCH
  return cudaErrorInvalidValue;  // unreachable: the head dims were checked first
}

// The forward and backward launches of the instantiation matching the params.
inline cudaError_t launch_flash_fwd_for(const AttentionFwdParams& p, DType dtype,
                                        const SplitKvParams& split, bool hopper,
                                        cudaStream_t stream) {
  return dispatch_head_dims(p, dtype, [&](auto qk, auto v, auto element) {
    return launch_flash_fwd<decltype(qk)::value, decltype(v)::value, decltype(element)::value>(
        p, split, hopper, stream);
  });
}

inline cudaError_t launch_flash_bwd_for(const AttentionBwdParams& p, DType dtype, float* delta,
                                        cudaStream_t stream) {
  return dispatch_head_dims(p, dtype, [&](auto qk, auto v, auto element) {
    return launch_flash_bwd<decltype(qk)::value, decltype(v)::value, decltype(element)::value>(
        p, delta, stream);
  });
}

}  // namespace cuda
}  // namespace deepseek_attn
