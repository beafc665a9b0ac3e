#pragma once
// Every launch-shape decision of the CUDA attention forward, in one place: the key-block width of
// each head-dim pair, the split-KV count, and whether the Hopper kernel takes the launch. Plain
// C++ (no CUDA headers): device_call.cpp plans with it and the kernels size their tiles by it.

#include <algorithm>
#include <cstdint>

#include "attention/params.h"
#include "common/device_arch.h"
#include "core/heuristics.h"

namespace deepseek_attn {
namespace cuda {

// The head dims (q/k and v) of the sm90a forward (kernels/sm90/flash_fwd.cuh).
constexpr int kHopperForwardHeadDim = 128;

// Split the keys across CTAs when (batch, heads, query blocks) alone cannot fill the GPU.
inline int choose_num_splits(const AttentionFwdParams& p, int sm_count) {
  const int64_t ctas = p.batch * p.heads_q * ((p.seqlen_q + 63) / 64);
  const int block_n = fwd_block_n(p.head_dim_qk, p.head_dim_v);
  return choose_split_count(ctas, (p.seqlen_k + block_n - 1) / block_n, p.batch, sm_count);
}

// The Hopper forward takes 128/128 heads without split-KV on an sm90 device that allows it (it
// still falls back to the sm80 kernel when TMA cannot describe the tensors).
inline bool use_hopper_forward(const AttentionFwdParams& p, int num_splits,
                               const DeviceArch& arch) {
  return arch.hopper_kernels && num_splits == 1 && p.head_dim_qk == kHopperForwardHeadDim &&
         p.head_dim_v == kHopperForwardHeadDim;
}

}  // namespace cuda
}  // namespace deepseek_attn
