#pragma once
// The problem one attention call describes (SPEC §0-§1) and the strides of a BSHD tensor: shared
// by the attention family and the core, host and device code, no torch types.

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

// Split-KV forward (decode): where each split's fp32 partial results go, as
// (num_splits, B, Hq, Sq, Dv) and (num_splits, B, Hq, Sq); merged with the SPEC §0 LSE rule.
// With `balanced` (the core's latent decode over cache_seqlens), num_splits is instead a number
// of parts that share the key blocks of all sequences laid end to end, evenly whatever their
// lengths; the piece of part z in batch b writes partial slot z + b (num_splits + B - 1 slots,
// (slots, Hq, Sq, Dv) and (slots, Hq, Sq)).
struct SplitKvParams {
  int num_splits = 1;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
  bool balanced = false;
};

}  // namespace deepseek_attn
