#pragma once
// Plain description of one attention call (SPEC §0-§1), filled by cpu.cpp / cuda.cpp and read by
// the kernels. No torch types: kernels include this without the torch headers.

#include <cstdint>

#include "common/attention_shape.h"

namespace deepseek_attn {

// A launch of the forward: the shape, then where the tensors live (filled by the caller).
struct AttentionFwdParams : AttentionShape {
  const void* q = nullptr;  // (B, Sq, Hq, Dqk)
  const void* k = nullptr;  // (B, Sk, Hkv, Dqk)
  const void* v = nullptr;  // (B, Sk, Hkv, Dv)
  void* out = nullptr;      // (B, Sq, Hq, Dv)
  float* lse = nullptr;     // (B, Hq, Sq), contiguous
  BshdStrides q_strides, k_strides, v_strides, out_strides;

  AttentionFwdParams() = default;
  explicit AttentionFwdParams(const AttentionShape& shape) : AttentionShape(shape) {}
};

struct AttentionBwdParams : AttentionFwdParams {
  using AttentionFwdParams::AttentionFwdParams;
  const void* dout = nullptr;    // (B, Sq, Hq, Dv)
  const float* delta = nullptr;  // (B, Hq, Sq) rowsum(dO * O), contiguous
  void* dq = nullptr;            // (B, Sq, Hq, Dqk)
  void* dk = nullptr;          // (B, Sk, Hkv, Dqk)
  void* dv = nullptr;          // (B, Sk, Hkv, Dv)
  BshdStrides dout_strides, dq_strides, dk_strides, dv_strides;
  bool deterministic = false;  // CUDA: true avoids float atomics (separate dQ kernel)
  float* dq_accum = nullptr;   // (B, Hq, Sq, Dqk) fp32, zeroed: dQ by atomics when !deterministic
};

}  // namespace deepseek_attn
