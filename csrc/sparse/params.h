#pragma once
// Params of the lightning indexer's CUDA kernels (SPEC §4): plain C++, no torch types.
//   I[b, t, s] = scale · k_scale[b, s] · Σ_h w[b, t, h] · ReLU(q[b, t, h] · k[b, s])
// (FP8 inputs: the caller folds q's per-(token, head) scales into w, since scales are positive.)

#include <cstdint>

#include "common/key_window.h"

namespace deepseek_attn {

// The CUDA kernels' key tile, and how many keys one query row's top-k buffer merges at a time.
constexpr int kIndexerBlockKeys = 64;
// Query heads pad to whole 16-row mma tiles; the kernels take at most this many.
constexpr int kIndexerMaxHeads = 128;
constexpr int kIndexerMaxTopk = 4096;

struct IndexerParams {
  const void* q = nullptr;          // (B, Sq, H, d): bf16, fp16 or e4m3 bytes
  const void* k = nullptr;          // (B, Sk, d), q's dtype
  const float* weights = nullptr;   // (B, Sq, H), contiguous
  const float* k_scale = nullptr;   // (B, Sk) contiguous, positive; null: all 1
  const int32_t* seqlens_k = nullptr;  // (B,): keys of each sequence; null: all Sk
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, heads = 0, head_dim = 0;
  int64_t q_batch_stride = 0, q_token_stride = 0, q_head_stride = 0;  // elements
  int64_t k_batch_stride = 0, k_token_stride = 0;
  float scale = 1.f;
  bool causal = true;
  float* logits = nullptr;    // (B, Sq, Sk) fp32 contiguous, -inf where masked; or null
  int32_t* indices = nullptr;  // (B, Sq, topk) int32 contiguous, -1 padded; or null
  int64_t topk = 0;
};

// The indexer's backward: the forward's params (q, k, weights, seqlens; no FP8, no k_scale)
// plus the upstream gradient and the outputs, all contiguous.
struct IndexerBwdParams {
  IndexerParams forward;
  const float* dlogits = nullptr;  // (B, Sq, Sk)
  void* dq = nullptr;              // (B, Sq, H, d), q's dtype
  void* dk = nullptr;              // (B, Sk, d), k's dtype
  float* dweights = nullptr;       // (B, Sq, H)
};

// The keys [0, end) that query row `token` of a sequence with `keys` keys sees (SPEC §0:
// bottom-right causal alignment), the same on host and device.
DEEPSEEK_ATTN_HOST_DEVICE int64_t indexer_visible_end(int64_t token, int64_t seqlen_q,
                                                      int64_t keys, bool causal) {
  return KeyWindow{seqlen_q, keys, -1, causal ? 0 : -1}.end_key(token);
}

}  // namespace deepseek_attn

namespace deepseek_attn {

// Params of the sparse attention backward's CUDA kernels (SPEC §4, §5); every tensor contiguous.
// A list names tokens (index_block_size 1) or blocks of index_block_size keys (block_sparse_attn,
// causal inside the blocks). dQ per query row over its entries; dK/dV per key over the tokens
// whose lists name the key's bucket (the key, or its block), from an inverse index, so every
// gradient row has one writer (deterministic, no atomics).
struct SparseBwdParams {
  const void* q = nullptr;     // (B, Sq, Hq, Dqk)
  const void* k = nullptr;     // (B, Sk, Hkv, Dqk)
  const void* v = nullptr;     // (B, Sk, Hkv, Dv), or k for latent rows (values = first Dv)
  const void* dout = nullptr;  // (B, Sq, Hq, Dv)
  const float* lse = nullptr;    // (B, Hq, Sq)
  const float* delta = nullptr;  // (B, Sq, Hq): rowsum(dout · out)
  const int32_t* indices = nullptr;      // (B, Sq, Hkv, K)
  const int32_t* key_offsets = nullptr;  // (B·Hkv·buckets() + 1): bucket (b, hk, j)'s tokens start
  const int32_t* key_tokens = nullptr;   // the referencing tokens, bucket by bucket, in token order
  void* dq = nullptr;  // (B, Sq, Hq, Dqk)
  void* dk = nullptr;  // (B, Sk, Hkv, Dqk); latent rows: the value gradient added in
  void* dv = nullptr;  // (B, Sk, Hkv, Dv); null for latent rows
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, heads_q = 0, heads_kv = 0;
  int64_t head_dim_qk = 0, head_dim_v = 0, num_indices = 0;
  int64_t v_row = 0;  // elements between value rows: Dv, or Dqk for latent rows
  int64_t index_block_size = 1;  // keys per listed index
  bool causal = false;           // bottom-right (SPEC §0), applied inside listed blocks
  float scale = 1.f;

  DEEPSEEK_ATTN_HOST_DEVICE int64_t buckets() const {
    return (seqlen_k + index_block_size - 1) / index_block_size;
  }
  DEEPSEEK_ATTN_HOST_DEVICE int64_t num_entries() const { return num_indices * index_block_size; }
  // The last key query row `token` sees: the last key, or (causal, bottom-right) its own
  // position's; below 0 when it sees none.
  DEEPSEEK_ATTN_HOST_DEVICE int64_t last_key_seen(int64_t token) const {
    const int64_t own = token + seqlen_k - seqlen_q;
    return causal && own < seqlen_k - 1 ? own : seqlen_k - 1;
  }
  // Whether query row `token` sees key `key` at all (in range and, causal, not in its future).
  DEEPSEEK_ATTN_HOST_DEVICE bool sees(int64_t token, int64_t key) const {
    return key >= 0 && key <= last_key_seen(token);
  }
  // The key entry `entry` of `list` names for query row `token`: -1 when empty or unseen.
  DEEPSEEK_ATTN_HOST_DEVICE int64_t key_of_entry(const int32_t* list, int64_t entry,
                                                 int64_t token) const {
    const int64_t index = list[entry / index_block_size];
    const int64_t key = index < 0 ? -1 : index * index_block_size + entry % index_block_size;
    return sees(token, key) ? key : -1;
  }
};

}  // namespace deepseek_attn
