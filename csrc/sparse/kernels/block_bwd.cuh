#pragma once
// block_sparse_attn's backward on tensor cores (SPEC §5).
// dK/dV: FlashAttention-2's dK/dV loop over query rows gathered from the inverse
// block -> queries index instead of a contiguous query range:
// a CTA owns 64 keys of one kv head (16 per warp) and streams the (token, query head) rows of
// the tokens whose lists name their block(s), 32 rows per step (the heads of a GQA group are
// adjacent), double-buffered with cp.async:
//   Sᵀ = K Qᵀ, Pᵀ = exp(scale·Sᵀ - lse) (0 outside the step's block, past a row's causal limit),
//   dV += Pᵀ dO, dPᵀ = V dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ - Δ), dK += dSᵀ Q,
// accumulated in registers and written once per key: deterministic, no atomics. A row listed
// twice is streamed twice, so a duplicated block counts twice. Wide heads (Dqk + Dv > 256) run
// a dV pass and a dK pass to bound registers.
// dQ: FlashAttention-2's dQ loop for one token's query heads (the forward's group-centric rows:
// up to 64 heads of a kv head, warps past the group idle) over the keys of its listed blocks,
// gathered kBlockN at a time (double-buffered); a block listed twice is walked twice.

#include <cmath>
#include <cstdint>

#include "common/online_softmax.h"
#include "core/heuristics.h"
#include "core/kernels/sm80/tile_copy.cuh"
#include "core/kernels/sm80/tile_mma.cuh"
#include "sparse/params.h"

namespace deepseek_attn {
namespace cuda {

// A CTA's keys, and the most blocks they may span (each streamed with the others' keys masked).
constexpr int kBlockBwdKeys = 64;
constexpr int kBlockBwdMaxBuckets = 4;

// Whether lists of `block_size`-key blocks take the tensor-core dK/dV kernel: blocks that
// divide the CTA's 64 keys from 16 up, or span them (64 and more); others stay SIMT.
DEEPSEEK_ATTN_HOST_DEVICE constexpr bool block_bwd_on_tensor_cores(int64_t block_size) {
  return block_size >= kBlockBwdKeys || (block_size >= 16 && kBlockBwdKeys % block_size == 0);
}

template <int kDimQK, int kDimV>
struct BlockDkDvTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockN = kBlockBwdKeys;  // 16 keys per warp
  static constexpr int kBlockM = 32;             // gathered rows per step
  static constexpr int kPitchQK = TilePitch<kDimQK>::value;
  static constexpr int kPitchV = TilePitch<kDimV>::value;
  static constexpr int kKElements = kBlockN * kPitchQK;
  static constexpr int kVElements = kBlockN * kPitchV;
  static constexpr int kQElements = kBlockM * kPitchQK;
  static constexpr int kStageElements = kQElements + kBlockM * kPitchV;
  static constexpr int kStatsPerStage = 3 * kBlockM;  // lse (log2), Δ, last visible key
  static constexpr int kSmemBytes =
      (kKElements + kVElements + 2 * kStageElements) * 2 + 2 * kStatsPerStage * 4;
  static constexpr bool kTwoPasses = kDimQK + kDimV > 256;
};

template <int kDimQK, int kDimV, DType kDType, bool kDk, bool kDv>
__global__ void __launch_bounds__(BlockDkDvTile<kDimQK, kDimV>::kThreads)
    block_bwd_dkdv_kernel(const SparseBwdParams p) {
  using Tile = BlockDkDvTile<kDimQK, kDimV>;
  using T = Element<kDType>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN;
  constexpr int kAccM = kBlockM / 8;

  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  T* k_tile = reinterpret_cast<T*>(shared_bytes);
  T* v_tile = k_tile + Tile::kKElements;
  T* stages = v_tile + Tile::kVElements;  // 2 x (Q rows, dO rows)
  float* row_stats = reinterpret_cast<float*>(stages + 2 * Tile::kStageElements);

  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t kv_head = blockIdx.y, batch = blockIdx.z;
  const int64_t group = p.heads_q / p.heads_kv, block = p.index_block_size;
  const int64_t key_begin = int64_t(blockIdx.x) * kBlockN;
  const int64_t key_end = key_begin + kBlockN < p.seqlen_k ? key_begin + kBlockN : p.seqlen_k;
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  const T* k = static_cast<const T*>(p.k) + kv_head * kDimQK;
  const T* v = static_cast<const T*>(p.v) + kv_head * kDimV;
  const int64_t keys_before = batch * p.seqlen_k * p.heads_kv;  // rows of earlier sequences
  load_tile_async<kBlockN, kDimQK, Tile::kThreads>(k_tile, k + keys_before * kDimQK,
                                                   p.heads_kv * kDimQK, key_begin, p.seqlen_k,
                                                   thread);
  load_tile_async<kBlockN, kDimV, Tile::kThreads>(v_tile, v + keys_before * kDimV,
                                                  p.heads_kv * kDimV, key_begin, p.seqlen_k,
                                                  thread);

  // The blocks (buckets) this CTA's keys fall in, and the first step of each: bucket i's rows
  // are its referencing tokens times the group's heads, kBlockM per step.
  const int64_t first_bucket = key_begin / block;
  const int buckets = int((key_end - 1) / block - first_bucket + 1);
  const int32_t* offsets = p.key_offsets + (batch * p.heads_kv + kv_head) * p.buckets();
  int64_t step_begin[kBlockBwdMaxBuckets + 1];
  step_begin[0] = 0;
#pragma unroll
  for (int i = 0; i < kBlockBwdMaxBuckets; ++i) {
    const int64_t rows = i < buckets ? int64_t(offsets[first_bucket + i + 1] -
                                               offsets[first_bucket + i]) * group
                                     : 0;
    step_begin[i + 1] = step_begin[i] + (rows + kBlockM - 1) / kBlockM;
  }
  const int64_t total_steps = step_begin[kBlockBwdMaxBuckets];
  const auto bucket_of = [&](int64_t step) {
    int i = 0;
#pragma unroll
    for (int j = 1; j < kBlockBwdMaxBuckets; ++j) i += step >= step_begin[j] ? 1 : 0;
    return i;
  };
  // The (token, query head) of row `row` of step `step`, or token -1 past the bucket's rows.
  const auto row_source = [&](int64_t step, int row, int64_t& token, int64_t& head) {
    const int i = bucket_of(step);
    int64_t first_step = 0;  // step_begin[i], selected without indexing (no local memory)
#pragma unroll
    for (int j = 0; j < kBlockBwdMaxBuckets; ++j) first_step = j == i ? step_begin[j] : first_step;
    const int64_t pair = (step - first_step) * kBlockM + row;
    const int64_t begin = offsets[first_bucket + i], end = offsets[first_bucket + i + 1];
    token = pair < (end - begin) * group ? p.key_tokens[begin + pair / group] : -1;
    head = kv_head * group + pair % group;
  };

  auto load_step = [&](int stage, int64_t step) {
    T* q_rows = stages + stage * Tile::kStageElements;
    T* do_rows = q_rows + Tile::kQElements;
    constexpr int kChunksQK = kDimQK / 8, kChunksV = kDimV / 8;
    for (int chunk = thread; chunk < kBlockM * (kChunksQK + kChunksV); chunk += Tile::kThreads) {
      const bool is_q = chunk < kBlockM * kChunksQK;
      const int local = is_q ? chunk : chunk - kBlockM * kChunksQK;
      const int per_row = is_q ? kChunksQK : kChunksV;
      const int row = local / per_row, column = (local % per_row) * 8;
      int64_t token, head;
      row_source(step, row, token, head);
      const int64_t flat = (batch * p.seqlen_q + (token < 0 ? 0 : token)) * p.heads_q + head;
      const T* source = is_q ? q + flat * kDimQK + column : dout + flat * kDimV + column;
      T* target = is_q ? q_rows + row * Tile::kPitchQK + column
                       : do_rows + row * Tile::kPitchV + column;
      cp_async_16(target, token < 0 ? q : source, token >= 0);
    }
  };
  auto load_row_stats = [&](int stage, int64_t step) {  // plain loads, visible after a barrier
    if (thread < kBlockM) {
      int64_t token, head;
      row_source(step, thread, token, head);
      float* stats = row_stats + stage * Tile::kStatsPerStage;
      float lse2 = INFINITY, delta = 0.f;
      int64_t last_key = -1;  // a row past the bucket's references sees nothing
      if (token >= 0) {
        const float lse = p.lse[(batch * p.heads_q + head) * p.seqlen_q + token];
        lse2 = lse == -INFINITY ? INFINITY : lse * float(kLog2e);
        delta = p.delta[(batch * p.seqlen_q + token) * p.heads_q + head];
        last_key = p.last_key_seen(token);
      }
      stats[thread] = lse2;
      stats[kBlockM + thread] = delta;
      reinterpret_cast<int32_t*>(stats)[2 * kBlockM + thread] = int32_t(last_key);
    }
  };

  float dk_acc[kDk ? kDimQK / 8 : 1][4] = {};
  float dv_acc[kDv ? kDimV / 8 : 1][4] = {};
  if (total_steps > 0) load_step(0, 0);
  cp_async_commit();
  const int warp_key = warp * 16 + lane / 4;  // this lane's key rows: warp_key and warp_key + 8
  const float scale_log2 = p.scale * float(kLog2e);

  for (int64_t step = 0; step < total_steps; ++step) {
    load_row_stats(int(step % 2), step);  // the stage the pipeline step below hands back
    const int stage = cp_async_double_buffer_step(step, 0, total_steps, load_step);
    const T* q_rows = stages + stage * Tile::kStageElements;
    const T* do_rows = q_rows + Tile::kQElements;
    const float* lse2 = row_stats + stage * Tile::kStatsPerStage;
    const float* delta = lse2 + kBlockM;
    const int32_t* last_key = reinterpret_cast<const int32_t*>(lse2) + 2 * kBlockM;
    const int64_t bucket_first_key = (first_bucket + bucket_of(step)) * block;

    float probs[kAccM][4] = {};  // Sᵀ: this warp's 16 keys x kBlockM rows
    mma_a_bt<kDType, kDimQK, kBlockM>(probs, k_tile, warp * 16, q_rows, lane);
#pragma unroll
    for (int n = 0; n < kAccM; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int column = n * 8 + (lane % 4) * 2 + (e & 1);
        const int64_t key = key_begin + warp_key + (e >= 2 ? 8 : 0);
        const bool visible = key >= bucket_first_key && key < bucket_first_key + block &&
                             key <= last_key[column];  // last_key < seqlen_k
        probs[n][e] = visible ? exp2f(probs[n][e] * scale_log2 - lse2[column]) : 0.f;
      }
    }
    if constexpr (kDv) {  // dV += Pᵀ dO
      uint32_t p_frags[kBlockM / 16][4];
      accumulators_to_a_fragments<kDType, kBlockM>(probs, p_frags);
      mma_a_regs_b<kDType, kBlockM, kDimV, Tile::kPitchV>(dv_acc, p_frags, do_rows, 0, lane);
    }
    if constexpr (kDk) {  // dPᵀ = V dOᵀ; dSᵀ = Pᵀ ∘ (dPᵀ − Δ); dK += dSᵀ Q
      uint32_t ds_frags[kBlockM / 16][4];
      softmax_grad_fragments<kDType, kDimV, kBlockM>(
          ds_frags, probs, v_tile, warp * 16, do_rows, lane, [&](int n, int e, float p, float dp) {
            return p * (dp - delta[n * 8 + (lane % 4) * 2 + (e & 1)]);
          });
      mma_a_regs_b<kDType, kBlockM, kDimQK, Tile::kPitchQK>(dk_acc, ds_frags, q_rows, 0, lane);
    }
    __syncthreads();  // the stage is refilled by a later step
  }
  cp_async_wait<0>();  // nothing may stay in flight when there was no step at all

  // dK = scale · Σ dSᵀ Q, dV = Σ Pᵀ dO; rows past seqlen_k are not written.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = key_begin + warp_key + 8 * r;
    if (key >= p.seqlen_k) continue;
    const int64_t kv_row = (batch * p.seqlen_k + key) * p.heads_kv + kv_head;
    if constexpr (kDk) {
      store_fragment_row<kDType>(static_cast<T*>(p.dk) + kv_row * kDimQK, dk_acc, r, p.scale,
                                 lane);
    }
    if constexpr (kDv) {
      store_fragment_row<kDType>(static_cast<T*>(p.dv) + kv_row * kDimV, dv_acc, r, 1.f, lane);
    }
  }
}

template <int kDimQK, int kDimV>
struct BlockDqTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;                 // query heads of one token
  static constexpr int kBlockN = fwd_block_n(kDimQK, kDimV);  // keys per step
  static constexpr int kPitchQK = TilePitch<kDimQK>::value;
  static constexpr int kPitchV = TilePitch<kDimV>::value;
  static constexpr int kQElements = kBlockM * kPitchQK;
  static constexpr int kDoElements = kBlockM * kPitchV;
  static constexpr int kKElements = kBlockN * kPitchQK;
  static constexpr int kVElements = kBlockN * kPitchV;
  static constexpr int kSmemBytes =
      (kQElements + kDoElements + 2 * (kKElements + kVElements)) * 2 + 2 * kBlockN * 4;
};

template <int kDimQK, int kDimV, DType kDType>
__global__ void __launch_bounds__(BlockDqTile<kDimQK, kDimV>::kThreads)
    block_bwd_dq_kernel(const SparseBwdParams p) {
  using Tile = BlockDqTile<kDimQK, kDimV>;
  using T = Element<kDType>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN;
  constexpr int kAccN = kBlockN / 8;

  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  T* q_tile = reinterpret_cast<T*>(shared_bytes);
  T* do_tile = q_tile + Tile::kQElements;
  T* k_tiles = do_tile + Tile::kDoElements;     // two stages
  T* v_tiles = k_tiles + 2 * Tile::kKElements;  // two stages
  int32_t* tile_keys = reinterpret_cast<int32_t*>(v_tiles + 2 * Tile::kVElements);  // 2 stages

  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t chunks = (group + kBlockM - 1) / kBlockM;
  const int64_t token = blockIdx.x, kv_head = blockIdx.y / chunks, batch = blockIdx.z;
  const int64_t head_begin = kv_head * group + (blockIdx.y % chunks) * kBlockM;
  const int64_t heads = head_begin + kBlockM < (kv_head + 1) * group
                            ? kBlockM
                            : (kv_head + 1) * group - head_begin;
  const int64_t row_base = (batch * p.seqlen_q + token) * p.heads_q + head_begin;
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int32_t* list =
      p.indices + ((batch * p.seqlen_q + token) * p.heads_kv + kv_head) * p.num_indices;

  load_tile_async<kBlockM, kDimQK, Tile::kThreads>(q_tile, q + row_base * kDimQK, kDimQK, 0,
                                                   heads, thread);
  load_tile_async<kBlockM, kDimV, Tile::kThreads>(do_tile, dout + row_base * kDimV, kDimV, 0,
                                                  heads, thread);
  const int warp_row = warp * 16 + lane / 4;  // this lane's rows: warp_row and warp_row + 8
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = warp_row + 8 * r;
    const float lse = row < heads ? p.lse[(batch * p.heads_q + head_begin + row) * p.seqlen_q +
                                          token]
                                  : -INFINITY;
    lse2[r] = lse == -INFINITY ? INFINITY : lse * float(kLog2e);  // P = 0 for such rows
    delta[r] = row < heads ? p.delta[row_base + row] : 0.f;
  }

  // Step n holds list slots n·kBlockN.. (blocks walked key by key; unseen slots load zeros).
  auto load_kv = [&](int stage, int64_t step) {
    T* k_rows = k_tiles + stage * Tile::kKElements;
    T* v_rows = v_tiles + stage * Tile::kVElements;
    if (thread < kBlockN) {  // plain stores, read after the step's barrier
      const int64_t entry = step * kBlockN + thread;
      tile_keys[stage * kBlockN + thread] =
          entry < p.num_entries() ? int32_t(p.key_of_entry(list, entry, token)) : -1;
    }
    constexpr int kChunksQK = kDimQK / 8, kChunksV = kDimV / 8;
    for (int chunk = thread; chunk < kBlockN * (kChunksQK + kChunksV); chunk += Tile::kThreads) {
      const bool is_k = chunk < kBlockN * kChunksQK;
      const int local = is_k ? chunk : chunk - kBlockN * kChunksQK;
      const int per_row = is_k ? kChunksQK : kChunksV;
      const int slot = local / per_row, column = (local % per_row) * 8;
      const int64_t entry = step * kBlockN + slot;
      const int64_t key = entry < p.num_entries() ? p.key_of_entry(list, entry, token) : -1;
      const int64_t kv_row = (batch * p.seqlen_k + (key < 0 ? 0 : key)) * p.heads_kv + kv_head;
      const T* source = is_k ? k + kv_row * kDimQK + column : v + kv_row * kDimV + column;
      T* target = is_k ? k_rows + slot * Tile::kPitchQK + column
                       : v_rows + slot * Tile::kPitchV + column;
      cp_async_16(target, key < 0 ? k : source, key >= 0);
    }
  };

  float dq_acc[kDimQK / 8][4] = {};
  const int64_t steps = (p.num_entries() + kBlockN - 1) / kBlockN;
  const bool warp_has_rows = warp * 16 < heads;
  const float scale_log2 = p.scale * float(kLog2e);
  load_kv(0, 0);
  cp_async_commit();
  for (int64_t step = 0; step < steps; ++step) {
    const int stage = cp_async_double_buffer_step(step, 0, steps, load_kv);
    if (warp_has_rows) {
      const T* k_tile = k_tiles + stage * Tile::kKElements;
      const T* v_tile = v_tiles + stage * Tile::kVElements;
      const int32_t* keys = tile_keys + stage * kBlockN;
      float probs[kAccN][4] = {};
      mma_a_bt<kDType, kDimQK, kBlockN>(probs, q_tile, warp * 16, k_tile, lane);
#pragma unroll
      for (int n = 0; n < kAccN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool seen = keys[n * 8 + (lane % 4) * 2 + (e & 1)] >= 0;
          probs[n][e] = seen ? exp2f(probs[n][e] * scale_log2 - lse2[e / 2]) : 0.f;
        }
      }
      uint32_t ds_frags[kBlockN / 16][4];  // dP = dO Vᵀ, then dS = P ∘ (dP − Δ)
      softmax_grad_fragments<kDType, kDimV, kBlockN>(
          ds_frags, probs, do_tile, warp * 16, v_tile, lane,
          [&](int, int e, float p, float dp) { return p * (dp - delta[e / 2]); });
      mma_a_regs_b<kDType, kBlockN, kDimQK, Tile::kPitchQK>(dq_acc, ds_frags, k_tile, 0, lane);
    }
    __syncthreads();  // the stage is refilled by a later step
  }
  cp_async_wait<0>();  // the Q/dO loads when the list is empty

  T* dq = static_cast<T*>(p.dq) + row_base * kDimQK;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = warp_row + 8 * r;
    if (row < heads) store_fragment_row<kDType>(dq + row * kDimQK, dq_acc, r, p.scale, lane);
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
