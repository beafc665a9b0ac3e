#pragma once
// The torch-facing half of a flash_attn_fwd / flash_attn_bwd launch on a GPU-style device,
// shared by the CUDA back end (cuda.cpp) and the emulated test extension (tests/emulation/):
// the checks, 16-byte-aligned operands, outputs and scratch, the params and the split-KV
// choice. The caller supplies the device guard, the stream and the launch itself.

#include <ATen/ATen.h>

#include "attention/params.h"
#include "common/device_arch.h"

namespace deepseek_attn {

struct FlashFwdCall {
  AttentionFwdParams params;
  SplitKvParams split;
  at::Tensor q, k, v, out, lse;
  at::Tensor partial_out, partial_lse;  // split-KV scratch (num_splits > 1)
  bool hopper = false;                  // the sm90a kernel takes it (heuristics.h)
  bool needs_launch = false;            // false: out and lse are already final
};

struct FlashBwdCall {
  AttentionBwdParams params;
  at::Tensor q, k, v, out, dout, lse, dq, dk, dv;
  at::Tensor delta, dq_accum;  // scratch; dq_accum only when !deterministic
  bool needs_launch = false;   // false: the gradients are already final
};

// `arch` is the device's (its SM count decides split-KV, its Hopper flag the kernel).
FlashFwdCall prepare_flash_attn_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    double softmax_scale, bool causal, int64_t window_left,
                                    int64_t window_right, double softcap, const DeviceArch& arch);

FlashBwdCall prepare_flash_attn_bwd(const at::Tensor& dout, const at::Tensor& q,
                                    const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& out, const at::Tensor& lse,
                                    double softmax_scale, bool causal, int64_t window_left,
                                    int64_t window_right, double softcap, bool deterministic);

}  // namespace deepseek_attn
