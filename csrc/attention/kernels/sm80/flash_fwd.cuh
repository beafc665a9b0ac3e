#pragma once
// Tiled attention forward on tensor cores (SPEC §1), FlashAttention-2 style, for sm80+:
// one CTA = 4 warps = 64 query rows of one (batch, head); each warp owns 16 rows. K/V tiles
// stream through double-buffered shared memory with cp.async; S = Q K^T and O += P V run on
// mma.sync m16n8k16 (bf16/fp16 in, fp32 accumulate) with ldmatrix loads; the online softmax
// stays in registers in the log2 domain. Tiles outside the causal/window band are never
// visited; masking runs only on tiles that cross the band edge or the sequence end.
//
// Split-KV (decode): blockIdx.z also enumerates `num_splits` slices of the key blocks; each
// writes an fp32 partial (out, lse) and split_kv_combine_kernel merges them (SPEC §0).

#include <cstdint>

#include "attention/heuristics.h"
#include "core/kernels/sm80/tile_mma.cuh"
#include "attention/params.h"
#include "common/online_softmax.h"
#include "core/kernels/sm80/softmax_fragments.cuh"
#include "core/kernels/sm80/split_combine.cuh"

namespace deepseek_attn {
namespace cuda {

// The SPEC §0 band test of one fragment element: `row` is the fragment's row `group`, `key0`
// the tile's first key.
struct BandVisibility {
  const AttentionFwdParams& p;
  const KeyWindow& window;
  int64_t row, key0;
  __device__ __forceinline__ bool operator()(int half, int column) const {
    const int64_t key = key0 + column;
    return key < p.seqlen_k && window.visible(row + 8 * half, key);
  }
};

template <int kDimQK, int kDimV>
struct FwdTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = fwd_block_n(kDimQK, kDimV);
  static constexpr int kPitchQK = TilePitch<kDimQK>::value;
  static constexpr int kPitchV = TilePitch<kDimV>::value;
  static constexpr int kQElements = kBlockM * kPitchQK;
  static constexpr int kOElements = kBlockM * kPitchV;  // output staging reuses the Q buffer
  static constexpr int kQRegion = kQElements > kOElements ? kQElements : kOElements;
  static constexpr int kKElements = kBlockN * kPitchQK;
  static constexpr int kVElements = kBlockN * kPitchV;
  static constexpr int kSmemBytes = (kQRegion + 2 * (kKElements + kVElements)) * 2;
  static_assert(kDimQK % 16 == 0 && kDimV % 16 == 0, "head dims must be multiples of 16");
};

template <int kDimQK, int kDimV, DType kDType, bool kSplit>
__global__ void __launch_bounds__(FwdTile<kDimQK, kDimV>::kThreads)
    flash_fwd_kernel(const AttentionFwdParams p, const SplitKvParams split) {
  using Tile = FwdTile<kDimQK, kDimV>;
  using T = Element<kDType>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN;
  constexpr int kAccN = kBlockN / 8, kAccV = kDimV / 8;

  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  T* q_tile = reinterpret_cast<T*>(shared_bytes);
  T* k_tiles = q_tile + Tile::kQRegion;         // two stages
  T* v_tiles = k_tiles + 2 * Tile::kKElements;  // two stages

  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t m_block = blockIdx.x, head = blockIdx.y;
  const int64_t batch = blockIdx.z / split.num_splits;
  const int split_index = blockIdx.z % split.num_splits;
  const int64_t kv_head = head / p.heads_per_kv();
  const KeyWindow window = p.key_window();

  const int64_t row_begin = m_block * kBlockM;
  const int64_t row_end = row_begin + kBlockM < p.seqlen_q ? row_begin + kBlockM : p.seqlen_q;
  // The band of keys any row of this tile sees (both bounds are monotone in the row).
  const int64_t key_begin = window.first_key(row_begin);
  const int64_t key_end = window.end_key(row_end - 1);
  int64_t n_begin = key_begin / kBlockN;
  int64_t n_end = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN : n_begin;
  if (kSplit) {
    const int64_t per_split = (n_end - n_begin + split.num_splits - 1) / split.num_splits;
    const int64_t first = n_begin + split_index * per_split;
    n_end = first + per_split < n_end ? first + per_split : n_end;
    n_begin = first < n_end ? first : n_end;
  }

  const T* q = static_cast<const T*>(p.q) + batch * p.q_strides.batch + head * p.q_strides.head;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_strides.batch + kv_head * p.k_strides.head;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_strides.batch + kv_head * p.v_strides.head;

  float out_acc[kAccV][4] = {};
  OnlineSoftmaxRow<float> rows[2];  // rows `group` and `group + 8` of this warp's 16
  float partial_sum[2] = {0.f, 0.f};

  if (n_begin < n_end) {
    load_tile_async<kBlockM, kDimQK, Tile::kThreads>(q_tile, q, p.q_strides.row, row_begin,
                                                     p.seqlen_q, thread);
    auto load_kv = [&](int stage, int64_t n_block) {
      load_kv_block_async<kBlockN, kDimQK, kDimV, Tile::kThreads>(
          k_tiles + stage * Tile::kKElements, v_tiles + stage * Tile::kVElements, k, v, p, p.k_strides, p.v_strides,
          n_block,
          thread);
    };
    load_kv(0, n_begin);
    cp_async_commit();

    const int warp_row = warp * 16 + lane / 4;

    for (int64_t n_block = n_begin; n_block < n_end; ++n_block) {
      const int stage = cp_async_double_buffer_step(n_block, n_begin, n_end, load_kv);

      float scores[kAccN][4] = {};
      mma_a_bt<kDType, kDimQK, kBlockN>(scores, q_tile, warp * 16,
                                        k_tiles + stage * Tile::kKElements, lane);

      const int64_t key0 = n_block * kBlockN;
      const int64_t key_last = key0 + kBlockN < p.seqlen_k ? key0 + kBlockN : p.seqlen_k;
      const bool needs_mask = key0 + kBlockN > p.seqlen_k ||
                              !window.tile_fully_visible(row_begin, row_end, key0, key_last);
      scores_to_logits(scores, p.softmax_scale, p.softcap, needs_mask, lane,
                       BandVisibility{p, window, row_begin + warp_row, key0});
      online_softmax_step(scores, rows, partial_sum, out_acc);

      uint32_t probs[kBlockN / 16][4];
      accumulators_to_a_fragments<kDType, kBlockN>(scores, probs);
      mma_a_regs_b<kDType, kBlockN, kDimV, Tile::kPitchV>(
          out_acc, probs, v_tiles + stage * Tile::kVElements, 0, lane);
      __syncthreads();  // this stage is refilled by the prefetch two iterations on
    }
  }

  // Epilogue: normalise, then write (out, lse) or the split's fp32 partials.
  float lse[2];
  finish_rows(rows, partial_sum, out_acc, lse);

  const int row_in_tile = warp * 16 + lane / 4;
  if constexpr (kSplit) {
    const int64_t row_stride = p.head_dim_v;
    const int64_t rows_base =
        ((int64_t(split_index) * p.batch + batch) * p.heads_q + head) * p.seqlen_q;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = row_begin + row_in_tile + 8 * r;
      if (row >= p.seqlen_q) continue;
      float* out_row = split.partial_out + (rows_base + row) * row_stride;
#pragma unroll
      for (int d = 0; d < kAccV; ++d) {
        *reinterpret_cast<float2*>(out_row + d * 8 + (lane % 4) * 2) =
            make_float2(out_acc[d][2 * r], out_acc[d][2 * r + 1]);
      }
      if (lane % 4 == 0) split.partial_lse[rows_base + row] = lse[r];
    }
    return;
  } else {
    // Stage the tile in shared memory (the Q buffer) so global stores are 16-byte and coalesced.
    T* out_tile = q_tile;
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      store_fragment_row<kDType>(out_tile + (row_in_tile + 8 * r) * Tile::kPitchV, out_acc, r, 1.f,
                                 lane);
      const int64_t row = row_begin + row_in_tile + 8 * r;
      if (lane % 4 == 0 && row < p.seqlen_q) {
        p.lse[(batch * p.heads_q + head) * p.seqlen_q + row] = lse[r];
      }
    }
    __syncthreads();
    T* out = static_cast<T*>(p.out) + batch * p.out_strides.batch + head * p.out_strides.head;
    constexpr int kChunksPerRow = kDimV / 8;
    for (int chunk = thread; chunk < kBlockM * kChunksPerRow; chunk += Tile::kThreads) {
      const int row = chunk / kChunksPerRow, column = (chunk % kChunksPerRow) * 8;
      if (row_begin + row < p.seqlen_q) {
        *reinterpret_cast<uint4*>(out + (row_begin + row) * p.out_strides.row + column) =
            *reinterpret_cast<const uint4*>(out_tile + row * Tile::kPitchV + column);
      }
    }
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
