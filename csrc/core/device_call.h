#pragma once
// The torch-facing half of an attention_core_fwd launch on a GPU-style device, shared by the
// CUDA back end (core/cuda.cpp) and the emulated test extension (tests/emulation/): checks,
// 16-byte-aligned operands, outputs, split-KV scratch and the params. The caller supplies the
// device guard, the stream and the launch.

#include <ATen/ATen.h>

#include "common/device_arch.h"
#include "core/checks.h"

namespace deepseek_attn {

struct CoreFwdCall {
  CoreFwdParams params;
  SplitKvParams split;
  at::Tensor q, k, out, lse;
  std::optional<at::Tensor> v;
  at::Tensor partial_out, partial_lse;  // split-KV scratch (num_splits > 1)
  bool needs_launch = false;            // false: out and lse are already final
};

// Allocates the fp32 split-KV partials of `split.num_splits` slices of an (out (B, Sq, Hq, Dv),
// lse) pair, as the split kernels and split_kv_combine_kernel expect, and points `split` at them.
void allocate_split_partials(SplitKvParams& split, const AttentionShape& shape,
                             const at::TensorOptions& options, at::Tensor& partial_out,
                             at::Tensor& partial_lse);

// `arch` is the device's (its SM count decides split-KV).
CoreFwdCall prepare_attention_core_fwd(const CoreFwdInputs& in, double softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, double softcap,
                                       const DeviceArch& arch);

}  // namespace deepseek_attn
