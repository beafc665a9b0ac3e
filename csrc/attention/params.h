#pragma once
// Plain description of one attention call (SPEC §0-§1), filled by cpu.cpp / cuda.cpp and read by
// the kernels. No torch types: kernels include this without the torch headers.

#include <cstdint>

#include "common/key_window.h"

namespace deepseek_attn {

// Strides are in elements of the tensor's own dtype; tensors are BSHD with a unit last stride.
struct BshdStrides {
  int64_t batch = 0;
  int64_t row = 0;
  int64_t head = 0;
};

// The problem a checked flash_attn call describes: sizes and options, no memory.
struct AttentionShape {
  int64_t batch = 0;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;
  int64_t heads_q = 0;
  int64_t heads_kv = 0;
  int64_t head_dim_qk = 0;
  int64_t head_dim_v = 0;

  float softmax_scale = 1.f;
  float softcap = 0.f;        // 0: no soft-capping
  int64_t window_left = -1;   // -1: unbounded
  int64_t window_right = -1;  // -1: unbounded; causal sets 0

  DEEPSEEK_ATTN_HOST_DEVICE int64_t heads_per_kv() const { return heads_q / heads_kv; }
  DEEPSEEK_ATTN_HOST_DEVICE KeyWindow key_window() const {
    return {seqlen_q, seqlen_k, window_left, window_right};
  }
};

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

// Split-KV forward (decode): where each split's fp32 partial results go, as
// (num_splits, B, Hq, Sq, Dv) and (num_splits, B, Hq, Sq); merged with the SPEC §0 LSE rule.
struct SplitKvParams {
  int num_splits = 1;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
};

}  // namespace deepseek_attn
