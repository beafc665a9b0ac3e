#pragma once
// The shared attention core's forward main loop on tensor cores (sm80+), templated on the two
// policies of core/params.h: where K and V live (CoreKv) and whether an index list picks the keys
// (kListed; the window band always applies). It is also flash_attn's forward on every GPU but
// the Hopper 128/128 path. FlashAttention-2 style: a CTA of kWarps warps owns kBlockM query
// rows, 16 per warp; S = Q K^T and O += P V run on
// mma.sync with ldmatrix loads from double-buffered shared tiles; the online softmax stays in
// registers (softmax_fragments.cuh).
//
// Rows are (query token, query head) pairs of one kv head (QueryTiles), so the heads of a GQA
// group share every key tile. Key tile n holds keys n·kBlockN.. of the band, or list entries
// n·kBlockN.. (blocks expanded to their keys); each row of a K/V tile is fetched from its own
// address (page table, list), so any page size works. Unselected slots load zeros and are
// masked. Latent sources keep one K tile whose first head_dim_v columns are the values; their
// output columns are split across the CTA's warps (kVColumns each, to bound the accumulator
// registers): every column group of warps computes the same scores for its 16 rows, so the CTA
// streams each key row once for all its rows and all 512 output columns (MQA over the latent).
// FP8 latent rows are dequantised to bf16 on their way into shared memory.

#include <cstdint>

#include "core/heuristics.h"
#include "core/kernels/sm80/softmax_fragments.cuh"
#include "core/kernels/sm80/split_combine.cuh"
#include "core/kernels/sm80/tile_mma.cuh"
#include "core/params.h"

namespace deepseek_attn {
namespace cuda {

template <int kDimQK, int kDimV, CoreKv kKv>
struct CoreFwdTile {
  static constexpr bool kLatent = kKv != CoreKv::kRows;
  static constexpr int kBlockM = core_block_m(kLatent);
  static constexpr int kRowWarps = kBlockM / 16;
  static constexpr int kVColumns = kLatent ? 128 : kDimV;  // output columns per warp
  static constexpr int kColumnGroups = kDimV / kVColumns;   // warps sharing one row group
  static constexpr int kWarps = kRowWarps * kColumnGroups;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockN = core_block_n(kLatent, kDimQK, kDimV);
  static constexpr int kPitchQK = TilePitch<kDimQK>::value;
  static constexpr int kPitchV = kLatent ? kPitchQK : TilePitch<kDimV>::value;
  static constexpr int kPitchOut = TilePitch<kDimV>::value;
  static constexpr int kQElements = kBlockM * kPitchQK;
  static constexpr int kOElements = kBlockM * kPitchOut;  // output staging reuses the Q buffer
  static constexpr int kQRegion = kQElements > kOElements ? kQElements : kOElements;
  static constexpr int kKElements = kBlockN * kPitchQK;
  static constexpr int kVElements = kLatent ? 0 : kBlockN * kPitchV;
  static constexpr int kSmemBytes = (kQRegion + 2 * (kKElements + kVElements)) * 2;
  static_assert(kDimQK % 16 == 0 && kDimV % kVColumns == 0 && kVColumns % 16 == 0,
                "head dims must be multiples of 16 (latent values of 128)");
  static_assert(kKv != CoreKv::kLatentFp8 ||
                    (kDimQK == LatentFp8Layout::kDim && kDimV == LatentFp8Layout::kQuantized),
                "FP8 latent rows are 576 wide with 512 values");
};

// Shared-memory bytes of a listed tile's union of block lists (ListUnion).
constexpr int kListUnionBytes = int(kListUnionCapacity) * (8 + 4) + 16;

// The block lists of a tile's tokens merged (shared memory): each listed block once per copy
// (a block some token lists twice appears twice), with the tokens that list that copy.
struct ListUnion {
  int32_t* blocks;   // (kListUnionCapacity): block index per entry
  uint64_t* tokens;  // (kListUnionCapacity): bit i set when the tile's token i lists the entry
  int* size;         // entries in use

  __device__ static ListUnion in(unsigned char* shared) {
    uint64_t* tokens = reinterpret_cast<uint64_t*>(shared);
    int32_t* blocks = reinterpret_cast<int32_t*>(tokens + kListUnionCapacity);
    return {blocks, tokens, reinterpret_cast<int*>(blocks + kListUnionCapacity)};
  }
};

// Which rows and keys one CTA handles, and the key of every tile slot.
struct CoreFwdWork {
  const CoreFwdParams& p;
  int64_t batch, kv_head, token_begin, head_begin, heads, rows, seqlen;
  KeyWindow band;
  ListUnion lists;
  bool merged_lists;  // several tokens' block lists (lists); false: token_begin's own list

  // The key in slot `slot` (= n·kBlockN + column) of the key tiles; -1 when the slot holds none
  // (past the band's sequence end, an empty or out-of-range list entry, a missing page).
  __device__ __forceinline__ int64_t key_of_slot(int64_t slot) const {
    int64_t key = slot;
    if (merged_lists) {
      const int64_t block = p.selection.index_block_size;
      if (slot / block >= *lists.size) return -1;
      key = int64_t(lists.blocks[slot / block]) * block + slot % block;
    } else if (p.selection.listed()) {
      if (slot >= p.selection.num_entries()) return -1;
      key = p.selection.key_of_entry(batch, token_begin, kv_head, slot);
    }
    return key >= 0 && key < seqlen && p.kv.page_of(batch, key) >= 0 ? key : -1;
  }

  // Key `key`'s row of this kv head in a K or V source of elements; the source's base for
  // key -1 (a zero-filled copy still names a valid address).
  template <typename T>
  __device__ __forceinline__ const T* element_row(const void* source, const BshdStrides& strides,
                                                  int64_t key) const {
    const T* base = static_cast<const T*>(source);
    return key < 0 ? base : base + p.kv.row_offset(strides, p.kv.page_of(batch, key), key, kv_head);
  }

  __device__ __forceinline__ int64_t token_of_row(int row) const {
    return token_begin + row / heads;
  }
  // Whether tile row `row` sees the key in slot `slot`: a key, in the row's band, and (several
  // tokens' lists) listed by the row's token.
  __device__ __forceinline__ bool row_sees_slot(int row, int64_t slot) const {
    const int64_t key = key_of_slot(slot);
    if (key < 0 || !band.visible(token_of_row(row), key)) return false;
    return !merged_lists ||
           (lists.tokens[slot / p.selection.index_block_size] >> (row / heads)) & 1u;
  }
  __device__ __forceinline__ int64_t head_of_row(int row) const { return head_begin + row % heads; }
};

// Eight FP8 latent values (columns [column, column + 8) < 512) dequantised to bf16 in `dst`.
__device__ __forceinline__ void dequantize_latent_chunk(__nv_bfloat16* dst, const uint8_t* row,
                                                        int column) {
  const float scale = *reinterpret_cast<const float*>(row + LatentFp8Layout::kScaleOffset +
                                                      4 * (column / LatentFp8Layout::kGroup));
  const uint2 bytes = *reinterpret_cast<const uint2*>(row + column);
  uint32_t packed[4];
#pragma unroll
  for (int pair = 0; pair < 4; ++pair) {
    const uint32_t word = pair < 2 ? bytes.x : bytes.y;
    const int shift = (pair % 2) * 16;
    packed[pair] = pack_pair<DType::kBFloat16>(e4m3_to_float(uint8_t(word >> shift)) * scale,
                                               e4m3_to_float(uint8_t(word >> (shift + 8))) * scale);
  }
  *reinterpret_cast<uint4*>(dst) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

// Fetches key tile `n_block` (K, and V for separate rows) into one shared-memory stage.
template <int kDimQK, int kDimV, CoreKv kKv, typename T>
__device__ __forceinline__ void load_core_kv_tile(T* k_tile, T* v_tile, const CoreFwdWork& work,
                                                  int64_t n_block, int thread) {
  using Tile = CoreFwdTile<kDimQK, kDimV, kKv>;
  const KvSourceParams& kv = work.p.kv;
  constexpr int kChunksQK = kDimQK / 8;
  for (int chunk = thread; chunk < Tile::kBlockN * kChunksQK; chunk += Tile::kThreads) {
    const int row = chunk / kChunksQK, column = (chunk % kChunksQK) * 8;
    const int64_t key = work.key_of_slot(n_block * Tile::kBlockN + row);
    T* dst = k_tile + row * Tile::kPitchQK + column;
    if constexpr (kKv == CoreKv::kLatentFp8) {
      const uint8_t* source =
          key < 0 ? nullptr
                  : static_cast<const uint8_t*>(kv.k) +
                        kv.row_offset(kv.k_strides, kv.page_of(work.batch, key), key, 0);
      if (column >= LatentFp8Layout::kQuantized) {  // bf16 k_pe: copied as it is
        const int offset =
            LatentFp8Layout::kRopeOffset + 2 * (column - LatentFp8Layout::kQuantized);
        cp_async_16(dst, key < 0 ? kv.k : source + offset, key >= 0);
      } else if (key >= 0) {
        dequantize_latent_chunk(dst, source, column);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    } else {
      cp_async_16(dst, work.element_row<T>(kv.k, kv.k_strides, key) + column, key >= 0);
    }
  }
  if constexpr (kKv == CoreKv::kRows) {
    constexpr int kChunksV = kDimV / 8;
    for (int chunk = thread; chunk < Tile::kBlockN * kChunksV; chunk += Tile::kThreads) {
      const int row = chunk / kChunksV, column = (chunk % kChunksV) * 8;
      const int64_t key = work.key_of_slot(n_block * Tile::kBlockN + row);
      cp_async_16(v_tile + row * Tile::kPitchV + column,
                  work.element_row<T>(kv.v, kv.v_strides, key) + column, key >= 0);
    }
  }
}

// The key blocks [begin, end) that the band of `batch`'s query tokens touches: the unit of work
// of the balanced split schedule, computed alike by the main kernel and the combine.
template <int kBlockN>
__device__ __forceinline__ void band_key_blocks(const CoreFwdParams& p, int64_t batch,
                                                int64_t& begin, int64_t& end) {
  int64_t seqlen = p.kv.seqlen_of(batch, p.seqlen_k);
  seqlen = seqlen < 0 ? 0 : (seqlen > p.seqlen_k ? p.seqlen_k : seqlen);
  const KeyWindow band = p.selection.band(p.seqlen_q, seqlen);
  const int64_t key_begin = band.first_key(0), key_end = band.end_key(p.seqlen_q - 1);
  begin = key_begin / kBlockN;
  end = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN : begin;
}

// Key blocks per part of the balanced schedule: every sequence's blocks laid end to end and cut
// into num_parts equal runs, so a long sequence gets more parts than a short one.
template <int kBlockN>
__device__ __forceinline__ int64_t balanced_blocks_per_part(const CoreFwdParams& p,
                                                            int num_parts) {
  int64_t total = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    int64_t begin, end;
    band_key_blocks<kBlockN>(p, b, begin, end);
    total += end - begin;
  }
  const int64_t per_part = (total + num_parts - 1) / num_parts;
  return per_part > 0 ? per_part : 1;
}

// Merges the block lists of tokens [token_begin, token_end) of (batch, kv_head) into `lists`
// (every thread of the CTA calls it) and returns its size. Blocks a token cannot see (empty,
// out of range, wholly outside its band) are dropped; the c-th copy of a block in a token's
// list is entry "block, copy c", shared by every token listing that block at least c times.
template <int kThreads>
__device__ int64_t build_list_union(const CoreFwdParams& p, int64_t batch, int64_t kv_head,
                                    int64_t token_begin, int64_t token_end, const KeyWindow& band,
                                    const ListUnion& lists, int thread) {
  const int64_t n = p.selection.num_indices, block = p.selection.index_block_size;
  const int64_t total = (token_end - token_begin) * n;  // <= kListUnionCapacity
  for (int64_t i = thread; i < total; i += kThreads) {
    const int64_t token = token_begin + i / n;
    const int64_t index = p.selection.indices[batch * p.selection.index_strides.batch +
                                              token * p.selection.index_strides.row +
                                              kv_head * p.selection.index_strides.head + i % n];
    const bool seen = index >= 0 && index * block < band.end_key(token) &&
                      (index + 1) * block > band.first_key(token);
    lists.blocks[i] = seen ? int32_t(index) : -1;
  }
  __syncthreads();
  for (int64_t i = thread; i < total; i += kThreads) {  // reads blocks, writes tokens only
    const int32_t index = lists.blocks[i];
    lists.tokens[i] = 0;
    if (index < 0) continue;
    const int64_t own = i / n;
    int64_t copy = 1;  // this entry is copy `copy` of `index` in its token's list
    for (int64_t e = own * n; e < i; ++e) copy += lists.blocks[e] == index ? 1 : 0;
    bool first = true;  // no earlier token lists `index` `copy` times
    uint64_t listing = 0;
    for (int64_t t = 0; t < token_end - token_begin; ++t) {
      int64_t count = 0;
      for (int64_t e = t * n; e < (t + 1) * n; ++e) count += lists.blocks[e] == index ? 1 : 0;
      if (count >= copy) {
        listing |= uint64_t(1) << t;
        first = first && t >= own;
      }
    }
    lists.tokens[i] = first ? listing : 0;
  }
  __syncthreads();
  if (thread == 0) {  // compact in order (entry c <= i is written after i is read)
    int size = 0;
    for (int64_t i = 0; i < total; ++i) {
      if (lists.tokens[i] == 0) continue;
      lists.blocks[size] = lists.blocks[i];
      lists.tokens[size] = lists.tokens[i];
      ++size;
    }
    *lists.size = size;
  }
  __syncthreads();
  return *lists.size;
}

template <int kDimQK, int kDimV, DType kDType, CoreKv kKv, bool kListed, bool kSplit>
__global__ void __launch_bounds__(CoreFwdTile<kDimQK, kDimV, kKv>::kThreads)
    core_fwd_kernel(const CoreFwdParams p, const SplitKvParams split) {
  using Tile = CoreFwdTile<kDimQK, kDimV, kKv>;
  using T = Element<kDType>;
  static_assert(kKv != CoreKv::kLatentFp8 || kDType == DType::kBFloat16,
                "FP8 latent rows are dequantised to bf16: the query must be bf16");
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kVColumns = Tile::kVColumns;
  constexpr int kAccN = kBlockN / 8, kAccV = kVColumns / 8;

  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  T* q_tile = reinterpret_cast<T*>(shared_bytes);
  T* k_tiles = q_tile + Tile::kQRegion;         // two stages
  T* v_tiles = k_tiles + 2 * Tile::kKElements;  // two stages (separate rows only)

  const int thread = threadIdx.x, lane = thread % 32;
  const int warp = (thread / 32) % Tile::kRowWarps;  // this warp's 16 rows
  const int column0 = (thread / 32 / Tile::kRowWarps) * kVColumns;  // and its output columns
  const int64_t group = p.heads_per_kv();
  const QueryTiles tiles(group, kListed ? list_tile_tokens(p.selection, group, kBlockM) : 0,
                         p.seqlen_q, kBlockM);
  const int64_t token_tile = blockIdx.x % tiles.token_tiles;
  const int64_t head_chunk = blockIdx.x / tiles.token_tiles;
  const int64_t kv_head = blockIdx.y;

  const int64_t token_begin = token_tile * tiles.tokens_per_tile;
  const int64_t token_end = token_begin + tiles.tokens_per_tile < p.seqlen_q
                                ? token_begin + tiles.tokens_per_tile
                                : p.seqlen_q;
  const int64_t head_begin = kv_head * group + head_chunk * tiles.heads_per_tile;
  const int64_t group_end = (kv_head + 1) * group;
  const int64_t heads =
      head_begin + tiles.heads_per_tile < group_end ? tiles.heads_per_tile : group_end - head_begin;
  const int warp_row = warp * 16 + lane / 4;
  const ListUnion list_union = ListUnion::in(shared_bytes + Tile::kSmemBytes);  // listed only
  int64_t union_size = -1;  // several tokens' block lists: the entries of their union

  // This CTA's rows over key blocks [n_begin, n_end) of `batch`; with kSplit, the fp32 partials
  // go to slot `slot` (split-major (slot, Hq, Sq) rows).
  auto run_piece = [&](int64_t batch, int64_t n_begin, int64_t n_end, int64_t slot) {
    int64_t seqlen = p.kv.seqlen_of(batch, p.seqlen_k);
    seqlen = seqlen < 0 ? 0 : (seqlen > p.seqlen_k ? p.seqlen_k : seqlen);
    const CoreFwdWork work{p,
                           batch,
                           kv_head,
                           token_begin,
                           head_begin,
                           heads,
                           (token_end - token_begin) * heads,
                           seqlen,
                           p.selection.band(p.seqlen_q, seqlen),
                           list_union,
                           union_size >= 0};

    float out_acc[kAccV][4] = {};
    OnlineSoftmaxRow<float> rows[2];  // rows `group` and `group + 8` of this warp's 16
    float partial_sum[2] = {0.f, 0.f};

    if (n_begin < n_end) {
      constexpr int kChunksQ = kDimQK / 8;
      const T* q = static_cast<const T*>(p.q) + batch * p.q_strides.batch;
      for (int chunk = thread; chunk < kBlockM * kChunksQ; chunk += Tile::kThreads) {
        const int row = chunk / kChunksQ, column = (chunk % kChunksQ) * 8;
        const bool valid = row < work.rows;
        const T* source = valid ? q + work.token_of_row(row) * p.q_strides.row +
                                      work.head_of_row(row) * p.q_strides.head + column
                                : q;
        cp_async_16(q_tile + row * Tile::kPitchQK + column, source, valid);
      }
      auto load_kv = [&](int stage, int64_t n_block) {
        load_core_kv_tile<kDimQK, kDimV, kKv>(k_tiles + stage * Tile::kKElements,
                                              v_tiles + stage * Tile::kVElements, work, n_block,
                                              thread);
      };
      load_kv(0, n_begin);
      cp_async_commit();

      // A warp whose 16 rows are all past the tile's rows (a GQA group or list tile smaller
      // than kBlockM) only helps load and synchronise, leaving its issue slots to other CTAs.
      const bool warp_has_rows = warp * 16 < work.rows;
      for (int64_t n_block = n_begin; n_block < n_end; ++n_block) {
        const int stage = cp_async_double_buffer_step(n_block, n_begin, n_end, load_kv);
        const T* k_tile = k_tiles + stage * Tile::kKElements;
        if (warp_has_rows) {
          float scores[kAccN][4] = {};
          mma_a_bt<kDType, kDimQK, kBlockN>(scores, q_tile, warp * 16, k_tile, lane);

          const int64_t slot0 = n_block * kBlockN;
          // Dense band tiles inside the band (which ends at the sequence end) need no mask;
          // listed and paged tiles (a page may be missing) always do.
          const bool needs_mask =
              kListed || p.kv.block_table != nullptr ||
              !work.band.tile_fully_visible(token_begin, token_end, slot0, slot0 + kBlockN);
          scores_to_logits(
              scores, p.softmax_scale, p.softcap, needs_mask, lane, [&](int half, int column) {
                return work.row_sees_slot(warp_row + 8 * half, slot0 + column);
              });
          online_softmax_step(scores, rows, partial_sum, out_acc);

          uint32_t probs[kBlockN / 16][4];
          accumulators_to_a_fragments<kDType, kBlockN>(scores, probs);
          const T* v_tile = Tile::kLatent ? k_tile : v_tiles + stage * Tile::kVElements;
          mma_a_regs_b<kDType, kBlockN, kVColumns, Tile::kPitchV>(out_acc, probs, v_tile, column0,
                                                                  lane);
        }
        __syncthreads();  // this stage is refilled by the prefetch two iterations on
      }
    }

    // Epilogue: normalise, then write (out, lse) or the fp32 partials. Every column group
    // computes the same lse; the first one writes it.
    float lse[2];
    finish_rows(rows, partial_sum, out_acc, lse);
    const bool writes_lse = column0 == 0 && lane % 4 == 0;
    if constexpr (kSplit) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = warp_row + 8 * r;
        if (row >= work.rows) continue;
        const int64_t flat =
            (slot * p.heads_q + work.head_of_row(row)) * p.seqlen_q + work.token_of_row(row);
        float* out_row = split.partial_out + flat * p.head_dim_v + column0;
#pragma unroll
        for (int d = 0; d < kAccV; ++d) {
          *reinterpret_cast<float2*>(out_row + d * 8 + (lane % 4) * 2) =
              make_float2(out_acc[d][2 * r], out_acc[d][2 * r + 1]);
        }
        if (writes_lse) split.partial_lse[flat] = lse[r];
      }
    } else {
      // Stage the tile in shared memory (the Q buffer) so global stores are 16-byte and
      // coalesced.
      T* out_tile = q_tile;
      __syncthreads();
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = warp_row + 8 * r;
        store_fragment_row<kDType>(out_tile + row * Tile::kPitchOut + column0, out_acc, r, 1.f,
                                   lane);
        if (writes_lse && row < work.rows) {
          p.lse[(batch * p.heads_q + work.head_of_row(row)) * p.seqlen_q +
                work.token_of_row(row)] = lse[r];
        }
      }
      __syncthreads();
      T* out = static_cast<T*>(p.out) + batch * p.out_strides.batch;
      constexpr int kChunksPerRow = kDimV / 8;
      for (int chunk = thread; chunk < kBlockM * kChunksPerRow; chunk += Tile::kThreads) {
        const int row = chunk / kChunksPerRow, column = (chunk % kChunksPerRow) * 8;
        if (row < work.rows) {
          *reinterpret_cast<uint4*>(out + work.token_of_row(row) * p.out_strides.row +
                                    work.head_of_row(row) * p.out_strides.head + column) =
              *reinterpret_cast<const uint4*>(out_tile + row * Tile::kPitchOut + column);
        }
      }
    }
  };

  if constexpr (kSplit && Tile::kLatent) {  // MLA decode (rows kernels keep their registers)
    if (split.balanced) {  // part blockIdx.z: its run of the sequences' blocks, piece by piece
      const int64_t part = blockIdx.z;
      const int64_t per_part = balanced_blocks_per_part<kBlockN>(p, split.num_splits);
      const int64_t run_begin = part * per_part, run_end = run_begin + per_part;
      int64_t prefix = 0;
      for (int64_t b = 0; b < p.batch && prefix < run_end; ++b) {
        int64_t begin, end;
        band_key_blocks<kBlockN>(p, b, begin, end);
        const int64_t lo = run_begin > prefix ? run_begin : prefix;
        const int64_t hi = run_end < prefix + end - begin ? run_end : prefix + end - begin;
        if (lo < hi) run_piece(b, begin + lo - prefix, begin + hi - prefix, part + b);
        prefix += end - begin;
      }
      return;
    }
  }
  const int64_t batch = blockIdx.z / split.num_splits;
  const int split_index = blockIdx.z % split.num_splits;
  int64_t seqlen = p.kv.seqlen_of(batch, p.seqlen_k);
  seqlen = seqlen < 0 ? 0 : (seqlen > p.seqlen_k ? p.seqlen_k : seqlen);
  const KeyWindow band = p.selection.band(p.seqlen_q, seqlen);
  int64_t n_begin = 0, n_end = 0;
  if constexpr (kListed) {
    n_end = (p.selection.num_entries() + kBlockN - 1) / kBlockN;
    if (tiles.tokens_per_tile > 1) {  // block lists of several tokens: walk their union
      union_size = build_list_union<Tile::kThreads>(p, batch, kv_head, token_begin, token_end,
                                                    band, list_union, thread);
      n_end = (union_size * p.selection.index_block_size + kBlockN - 1) / kBlockN;
    }
  } else {
    const int64_t key_begin = band.first_key(token_begin);
    const int64_t key_end = band.end_key(token_end - 1);
    n_begin = key_begin / kBlockN;
    n_end = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN : n_begin;
  }
  if constexpr (kSplit) {
    const int64_t per_split = (n_end - n_begin + split.num_splits - 1) / split.num_splits;
    const int64_t first = n_begin + split_index * per_split;
    n_end = first + per_split < n_end ? first + per_split : n_end;
    n_begin = first < n_end ? first : n_end;
  }
  run_piece(batch, n_begin, n_end, int64_t(split_index) * p.batch + batch);
}

// One block per (batch, head, row): merges the pieces of the balanced schedule that cover its
// batch — parts first..last of the end-to-end run of key blocks, at slots part + batch.
template <DType kDType, int kBlockN>
__global__ void balanced_split_combine_kernel(const CoreFwdParams p, const SplitKvParams split) {
  const int64_t flat_row = blockIdx.x;  // (batch * Hq + head) * Sq + row
  const int64_t batch = flat_row / (p.seqlen_q * p.heads_q);
  const int64_t per_part = balanced_blocks_per_part<kBlockN>(p, split.num_splits);
  int64_t prefix = 0, begin = 0, end = 0;
  for (int64_t b = 0; b <= batch; ++b) {
    prefix += end - begin;
    band_key_blocks<kBlockN>(p, b, begin, end);
  }
  const int64_t first = prefix / per_part;
  const int64_t last = end > begin ? (prefix + end - begin - 1) / per_part : first - 1;
  const int64_t rows_per_slot = p.heads_q * p.seqlen_q;
  combine_partial_rows<kDType>(p, split, flat_row, first, last, [&](int64_t part) {
    return (part + batch) * rows_per_slot + flat_row % rows_per_slot;
  });
}

}  // namespace cuda
}  // namespace deepseek_attn
