#pragma once
// Host-side entry points of the CUDA attention kernels, one explicit instantiation per
// (head dims x dtype) in kernels/inst/. Plain C++: cuda.cpp includes this without nvcc.

#include <cuda_runtime_api.h>

#include "attention/params.h"

namespace deepseek_attn {
namespace cuda {

// (Dqk, Dv) pairs with compiled kernels; anything else is rejected with this list.
#define DSA_ATTENTION_HEAD_DIMS(X) X(64, 64) X(96, 96) X(128, 128) X(192, 128) X(256, 256)
constexpr const char* kSupportedHeadDims = "64/64, 96/96, 128/128, 192/128, 256/256";

// Forward; split.num_splits > 1 runs the split-KV kernel and the combine kernel.
template <int kDimQK, int kDimV, bool kIsBf16>
cudaError_t launch_flash_fwd(const AttentionFwdParams& p, const SplitKvParams& split,
                             cudaStream_t stream);

// Backward: Δ into `delta` (B, Hq, Sq) fp32 scratch, then dK/dV and dQ.
template <int kDimQK, int kDimV, bool kIsBf16>
cudaError_t launch_flash_bwd(const AttentionBwdParams& p, float* delta, cudaStream_t stream);

// Key-block width of the forward (and dQ) kernels for these head dims; wide heads take 32 keys
// to keep the S/P fragments and the K/V buffers small. The split-KV heuristic needs it too.
constexpr int fwd_block_n(int dim_qk, int dim_v) { return dim_qk > 128 || dim_v > 128 ? 32 : 64; }

}  // namespace cuda
}  // namespace deepseek_attn
