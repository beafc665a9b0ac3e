#pragma once
// The shared attention core's description of one forward call: the problem (AttentionShape),
// where K and V live (KvSourceParams) and which keys each query sees (KeySelectionParams).
// Host and device code, no torch types; the CPU back end (core/cpu_fwd.h) and the CUDA kernels
// read the same structs, so both devices answer the two questions the same way.

#include <cstdint>

#include "common/attention_shape.h"
#include "common/fp8.h"
#include "common/key_window.h"

namespace deepseek_attn {

// How one key row is stored.
enum class KvStorage : int {
  kElements,   // head_dim values of the query's dtype
  kLatentFp8,  // SPEC §3's 656-byte latent row: 512 e4m3, 4 fp32 scales, 64 bf16
};

// The KV-source policy the CUDA kernels are templated on: separate K and V rows (dense or
// paged), or latent rows whose first head_dim_v columns are the values, stored in the query's
// dtype or as SPEC §3's FP8 rows.
enum class CoreKv { kRows, kLatent, kLatentFp8 };

// SPEC §3 FP8 latent row: bytes [0,512) e4m3 c_kv, [512,528) fp32 scales (one per 128 values),
// [528,656) bf16 k_pe.
struct LatentFp8Layout {
  static constexpr int kRowBytes = 656;
  static constexpr int kQuantized = 512;
  static constexpr int kGroup = 128;
  static constexpr int kScaleOffset = 512;
  static constexpr int kRopeOffset = 528;
  static constexpr int kRope = 64;
  static constexpr int kDim = kQuantized + kRope;  // 576
};

// bf16 bits to float.
DEEPSEEK_ATTN_HOST_DEVICE float bf16_bits_to_float(uint16_t bits) {
  return float_from_bits(uint32_t(bits) << 16);
}

// Where K and V live. Rows are addressed as pages of `page_size` keys: key j of sequence b is
// row j % page_size of page block_table[b][j / page_size] (paged), or of page b (dense: one page
// per sequence, page_size = seqlen_k, the page stride = the batch stride).
struct KvSourceParams {
  const void* k = nullptr;      // (pages, page_size, heads_kv, head_dim_qk) or latent FP8 bytes
  const void* v = nullptr;      // (pages, page_size, heads_kv, head_dim_v), when separate_values
  bool separate_values = true;  // false: the first head_dim_v columns of k's rows (latent)
  BshdStrides k_strides;        // batch = page stride; in elements (bytes for kLatentFp8)
  BshdStrides v_strides;
  KvStorage storage = KvStorage::kElements;
  int64_t page_size = 0;
  int64_t num_pages = 0;
  const int32_t* block_table = nullptr;  // (batch, max_pages); null: dense
  int64_t block_table_stride = 0;
  int64_t max_pages = 0;
  const int32_t* cache_seqlens = nullptr;  // (batch,); null: every sequence has seqlen_k keys

  DEEPSEEK_ATTN_HOST_DEVICE bool values_in_keys() const { return !separate_values; }

  DEEPSEEK_ATTN_HOST_DEVICE CoreKv policy() const {
    return storage == KvStorage::kLatentFp8 ? CoreKv::kLatentFp8
                                            : (values_in_keys() ? CoreKv::kLatent : CoreKv::kRows);
  }

  DEEPSEEK_ATTN_HOST_DEVICE int64_t seqlen_of(int64_t batch, int64_t seqlen_k) const {
    return cache_seqlens != nullptr ? int64_t(cache_seqlens[batch]) : seqlen_k;
  }

  // The page holding key `key` of sequence `batch`, or -1 when the table has no valid page for
  // it (the CPU checks reject that before; CUDA skips such keys).
  DEEPSEEK_ATTN_HOST_DEVICE int64_t page_of(int64_t batch, int64_t key) const {
    if (block_table == nullptr) return batch;
    const int64_t slot = key / page_size;
    if (slot >= max_pages) return -1;
    const int64_t page = block_table[batch * block_table_stride + slot];
    return page >= 0 && page < num_pages ? page : -1;
  }

  // Element offset of key `key` (on page `page`) and kv head `head` in k (or v).
  DEEPSEEK_ATTN_HOST_DEVICE int64_t row_offset(const BshdStrides& s, int64_t page, int64_t key,
                                               int64_t head) const {
    const int64_t row = block_table == nullptr ? key : key % page_size;  // dense: one page
    return page * s.batch + row * s.row + head * s.head;
  }
};

// Which keys a query row sees: the window band of SPEC §0 (per sequence, bottom-right aligned
// to that sequence's length), intersected with an optional index list per (batch, query,
// kv head): token indices (index_block_size 1) or block indices (block b = keys
// [b·size, (b+1)·size)). -1 entries are skipped; an index listed twice counts twice.
struct KeySelectionParams {
  int64_t window_left = -1;          // -1: unbounded
  int64_t window_right = -1;         // -1: unbounded; causal is 0
  const int32_t* indices = nullptr;  // (batch, seqlen_q, heads_kv, num_indices); null: band only
  BshdStrides index_strides;         // batch, row (query), head (kv head)
  int64_t num_indices = 0;
  int64_t index_block_size = 1;

  DEEPSEEK_ATTN_HOST_DEVICE bool listed() const { return indices != nullptr; }

  DEEPSEEK_ATTN_HOST_DEVICE KeyWindow band(int64_t seqlen_q, int64_t seqlen_k) const {
    return {seqlen_q, seqlen_k, window_left, window_right};
  }

  // Entries of a list: every key of every listed block.
  DEEPSEEK_ATTN_HOST_DEVICE int64_t num_entries() const { return num_indices * index_block_size; }

  // The key of list entry `entry` of (batch, query, kv head); -1 for an empty slot. Keys at or
  // past the sequence end come back as they are: the caller masks (or rejects) them.
  DEEPSEEK_ATTN_HOST_DEVICE int64_t key_of_entry(int64_t batch, int64_t query, int64_t head,
                                                 int64_t entry) const {
    const int64_t index = indices[batch * index_strides.batch + query * index_strides.row +
                                  head * index_strides.head + entry / index_block_size];
    return index < 0 ? -1 : index * index_block_size + entry % index_block_size;
  }
};

// The most list entries a GPU tile of several tokens' block lists takes (their union is built
// in shared memory).
constexpr int64_t kListUnionCapacity = 256;

// Tokens per query tile of `rows` rows for a listed call on the GPU: a token list belongs to one
// token; block lists of several tokens share one tile (the union of their lists, each row
// masked to its own) when whole GQA groups fit and the lists fit the union buffer; 0 when not
// listed. The CPU tiles every list by its token.
DEEPSEEK_ATTN_HOST_DEVICE int64_t list_tile_tokens(const KeySelectionParams& selection,
                                                          int64_t group, int64_t rows) {
  if (!selection.listed()) return 0;
  if (selection.index_block_size == 1 || selection.num_indices == 0) return 1;
  int64_t tokens = rows / group;
  const int64_t fit = kListUnionCapacity / selection.num_indices;
  tokens = tokens < fit ? tokens : fit;
  return tokens < 1 ? 1 : tokens;
}

// How the (query token, query head) rows of one kv head are cut into query tiles of at most
// `rows` rows, tokens outer, so the heads of a GQA group share every key tile. Listed tiles
// hold `list_tokens` tokens (list_tile_tokens; 0: not listed).
struct QueryTiles {
  int64_t heads_per_tile, head_chunks, tokens_per_tile, token_tiles;

  DEEPSEEK_ATTN_HOST_DEVICE QueryTiles(int64_t group, int64_t list_tokens, int64_t seqlen_q,
                                       int64_t rows) {
    heads_per_tile = group < rows ? group : rows;
    head_chunks = (group + heads_per_tile - 1) / heads_per_tile;
    tokens_per_tile = list_tokens > 0 ? list_tokens : (rows / group < 1 ? 1 : rows / group);
    token_tiles = (seqlen_q + tokens_per_tile - 1) / tokens_per_tile;
  }
};

// One call of the core forward: out (B, Sq, Hq, Dv) and lse (B, Hq, Sq) from q, a KV source and
// a key selection. seqlen_k is the longest sequence the source can hold.
struct CoreFwdParams : AttentionShape {
  const void* q = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // (B, Hq, Sq), contiguous
  BshdStrides q_strides, out_strides;
  KvSourceParams kv;
  KeySelectionParams selection;

  CoreFwdParams() = default;
  explicit CoreFwdParams(const AttentionShape& shape) : AttentionShape(shape) {
    selection.window_left = shape.window_left;
    selection.window_right = shape.window_right;
  }
};

}  // namespace deepseek_attn
