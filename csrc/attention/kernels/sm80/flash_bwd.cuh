#pragma once
// Tiled attention backward on tensor cores (SPEC §1), recomputing P from the saved LSE:
//   flash_bwd_delta_kernel   Δ_i = Σ_d dO_id · O_id                      (one warp per row)
//   flash_bwd_dkdv_kernel    per 64-key block of one kv head: loops over the query heads of
//                            its GQA group and the query blocks that see the keys;
//                            dV += Pᵀ dO, dK += dSᵀ Q, summed in registers (no reduction).
//                            Wide heads run it twice (dV pass, dK pass) to bound registers.
//                            Default (deterministic=False): the dK pass also adds dS K into an
//                            fp32 dQ buffer with atomics (FlashAttention-2's scheme), then
//   flash_bwd_dq_convert_kernel scales and rounds that buffer into dQ.
//   flash_bwd_dq_kernel      deterministic=True instead: per 64-query block, loops over its key
//                            band, dQ += dS K in registers — no float atomics, so gradients are
//                            bit-identical run to run, at the price of recomputing P and dP.

#include <cstdint>

#include "attention/heuristics.h"
#include "attention/params.h"
#include "common/online_softmax.h"
#include "core/kernels/sm80/tile_mma.cuh"

namespace deepseek_attn {
namespace cuda {

// Δ (B, Hq, Sq) fp32. Rows of a 4-warp block, one warp each.
template <DType kDType>
__global__ void flash_bwd_delta_kernel(const AttentionBwdParams p, float* delta) {
  using T = Element<kDType>;
  const int64_t flat_row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;  // (b * Hq + h) * Sq + i
  const int lane = threadIdx.x % 32;
  if (flat_row >= p.batch * p.heads_q * p.seqlen_q) return;
  const int64_t row = flat_row % p.seqlen_q;
  const int64_t head = (flat_row / p.seqlen_q) % p.heads_q;
  const int64_t batch = flat_row / (p.seqlen_q * p.heads_q);
  const T* dout = static_cast<const T*>(p.dout) + batch * p.dout_strides.batch +
                  head * p.dout_strides.head + row * p.dout_strides.row;
  const T* out = static_cast<const T*>(p.out) + batch * p.out_strides.batch +
                 head * p.out_strides.head + row * p.out_strides.row;
  float sum = 0.f;
  for (int64_t d = lane; d < p.head_dim_v; d += 32) sum += float(dout[d]) * float(out[d]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) delta[flat_row] = sum;
}

// Logit transform shared by both gradient kernels: returns the log2-domain logit of a raw
// q·k product and, when soft-capping, d(logit)/d(scaled score) = 1 - tanh² in `dcap`.
struct LogitTransform {
  float scale_log2, cap_inverse, cap_log2;
  bool softcap;
  __device__ __forceinline__ float operator()(float raw, float& dcap) const {
    if (!softcap) {
      dcap = 1.f;
      return raw * scale_log2;
    }
    const float t = tanhf(raw * cap_inverse);
    dcap = 1.f - t * t;
    return cap_log2 * t;
  }
  __device__ static LogitTransform of(const AttentionFwdParams& p) {
    return {p.softmax_scale * float(kLog2e),
            p.softcap > 0.f ? p.softmax_scale / p.softcap : 0.f, p.softcap * float(kLog2e),
            p.softcap > 0.f};
  }
};

// LSE in the log2 domain for P = exp2(logit - lse2); rows past the end or without keys get +inf
// so their probabilities are exactly 0.
__device__ __forceinline__ float lse_log2_or_inf(const float* lse, int64_t row, int64_t seqlen) {
  if (row >= seqlen) return INFINITY;
  const float value = lse[row];
  return value == -INFINITY ? INFINITY : value * float(kLog2e);
}

template <int kDimQK, int kDimV>
struct DkDvTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockN = 16 * kWarps;  // keys per CTA, 16 per warp
  static constexpr int kBlockM = 32;           // query rows per step
  static constexpr int kPitchQK = TilePitch<kDimQK>::value;
  static constexpr int kPitchV = TilePitch<kDimV>::value;
  static constexpr int kKElements = kBlockN * kPitchQK;
  static constexpr int kVElements = kBlockN * kPitchV;
  static constexpr int kQElements = kBlockM * kPitchQK;
  static constexpr int kDoElements = kBlockM * kPitchV;
  static constexpr int kStageElements = kQElements + kDoElements;
  static constexpr int kSmemBytes =
      (kKElements + kVElements + 2 * kStageElements) * 2 + 2 * 2 * kBlockM * 4;
  // dK and dV accumulators together exceed the register budget past 256 columns.
  static constexpr bool kTwoPasses = kDimQK + kDimV > 256;
  // The atomic-dQ variant keeps dSᵀ of one step in shared memory to read it transposed.
  static constexpr int kDsPitch = kBlockM + 8;
  static constexpr int kSmemBytesWithDq = kSmemBytes + kBlockN * kDsPitch * 2;
};

// dQ_accum[rows of the step] += dS K for one step of the dK/dV kernel. `ds_frags` is this warp's
// dSᵀ (16 keys x kBlockM rows) as A fragments; it goes through shared memory because dQ needs dS
// itself as the A operand. Warp w then owns query rows (w % 2) * 16 and half of the columns.
template <int kDimQK, int kDimV, DType kDType, typename T>
__device__ __forceinline__ void accumulate_dq_atomic(
    const AttentionBwdParams& p,
    const uint32_t (&ds_frags)[DkDvTile<kDimQK, kDimV>::kBlockM / 16][4], T* ds_tile,
    const T* k_tile, int64_t rows_base, int64_t row0, int warp, int lane) {
  using Tile = DkDvTile<kDimQK, kDimV>;
  constexpr int kPitch = Tile::kDsPitch;
  uint32_t* ds_words = reinterpret_cast<uint32_t*>(ds_tile);
  const int key = warp * 16 + lane / 4, row_pair = 2 * (lane % 4);
#pragma unroll
  for (int k = 0; k < Tile::kBlockM / 16; ++k) {
    ds_words[(key * kPitch + 16 * k + row_pair) / 2] = ds_frags[k][0];
    ds_words[((key + 8) * kPitch + 16 * k + row_pair) / 2] = ds_frags[k][1];
    ds_words[(key * kPitch + 16 * k + 8 + row_pair) / 2] = ds_frags[k][2];
    ds_words[((key + 8) * kPitch + 16 * k + 8 + row_pair) / 2] = ds_frags[k][3];
  }
  __syncthreads();

  const int warp_row = (warp % 2) * 16, warp_col = (warp / 2) * (kDimQK / 2);
  const int64_t row = row0 + warp_row + lane / 4;  // this lane's rows: row and row + 8
  const bool row_valid[2] = {row < p.seqlen_q, row + 8 < p.seqlen_q};
  float* dq_row = p.dq_accum + (rows_base + row) * kDimQK + warp_col + row_pair;
#pragma unroll 1  // one chunk at a time: hoisting loads across chunks spills beside dK/dV
  for (int column0 = 0; column0 < kDimQK / 2; column0 += 16) {
    float part[2][4] = {};
#pragma unroll
    for (int k = 0; k < Tile::kBlockN / 16; ++k) {
      uint32_t ds_a[1][4];
      ldmatrix_x4_trans(ds_a[0], ds_tile + (k * 16 + (lane / 16) * 8 + lane % 8) * kPitch +
                                     warp_row + ((lane / 8) % 2) * 8);
      mma_a_regs_b<kDType, 16, 16, Tile::kPitchQK>(part, ds_a, k_tile + k * 16 * Tile::kPitchQK,
                                                   warp_col + column0, lane);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (!row_valid[e / 2]) continue;
      float* target = dq_row + (e / 2) * 8 * kDimQK + column0 + (e & 1);
      atomicAdd(target, part[0][e]);
      atomicAdd(target + 8, part[1][e]);
    }
  }
}

// One pass of the dK/dV kernel computes dV (kDv), dK (kDk) or both, and with kDq (needs kDk)
// adds dQ into p.dq_accum.
template <int kDimQK, int kDimV, DType kDType, bool kDk, bool kDv, bool kDq>
__global__ void __launch_bounds__(DkDvTile<kDimQK, kDimV>::kThreads)
    flash_bwd_dkdv_kernel(const AttentionBwdParams p) {
  using Tile = DkDvTile<kDimQK, kDimV>;
  using T = Element<kDType>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN;
  constexpr int kAccM = kBlockM / 8;

  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  T* k_tile = reinterpret_cast<T*>(shared_bytes);
  T* v_tile = k_tile + Tile::kKElements;
  T* stages = v_tile + Tile::kVElements;  // 2 x (Q tile, dO tile)
  float* row_stats = reinterpret_cast<float*>(stages + 2 * Tile::kStageElements);  // 2 x (lse2, Δ)
  T* ds_tile = reinterpret_cast<T*>(row_stats + 2 * 2 * kBlockM);  // kDq only
  static_assert(!kDq || kDk, "dQ is accumulated from the dS of the dK pass");

  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t n_block = blockIdx.x, kv_head = blockIdx.y, batch = blockIdx.z;
  const int64_t group = p.heads_per_kv();
  const KeyWindow window = p.key_window();
  const LogitTransform logit = LogitTransform::of(p);

  const int64_t key_begin = n_block * kBlockN;
  const int64_t key_end = key_begin + kBlockN < p.seqlen_k ? key_begin + kBlockN : p.seqlen_k;
  const int64_t rows_from = window.first_row_seeing(key_begin);
  const int64_t rows_to = window.end_row_seeing(key_end);
  const int64_t m_begin = rows_from / kBlockM;
  const int64_t m_end = rows_to > rows_from ? (rows_to + kBlockM - 1) / kBlockM : m_begin;
  const int64_t steps_per_head = m_end - m_begin;

  const T* k = static_cast<const T*>(p.k) + batch * p.k_strides.batch + kv_head * p.k_strides.head;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_strides.batch + kv_head * p.v_strides.head;
  load_tile_async<kBlockN, kDimQK, Tile::kThreads>(k_tile, k, p.k_strides.row, key_begin,
                                                   p.seqlen_k, thread);
  load_tile_async<kBlockN, kDimV, Tile::kThreads>(v_tile, v, p.v_strides.row, key_begin,
                                                  p.seqlen_k, thread);

  // Step s covers query head kv_head * group + s / steps_per_head, query block m_begin + s % ...
  auto load_step = [&](int stage, int64_t step) {
    const int64_t head = kv_head * group + step / steps_per_head;
    const int64_t row0 = (m_begin + step % steps_per_head) * kBlockM;
    T* q_tile = stages + stage * Tile::kStageElements;
    const T* q = static_cast<const T*>(p.q) + batch * p.q_strides.batch + head * p.q_strides.head;
    load_tile_async<kBlockM, kDimQK, Tile::kThreads>(q_tile, q, p.q_strides.row, row0,
                                                     p.seqlen_q, thread);
    const T* dout = static_cast<const T*>(p.dout) + batch * p.dout_strides.batch +
                    head * p.dout_strides.head;
    load_tile_async<kBlockM, kDimV, Tile::kThreads>(q_tile + Tile::kQElements, dout,
                                                    p.dout_strides.row, row0, p.seqlen_q, thread);
  };
  auto load_row_stats = [&](int stage, int64_t step) {  // plain loads, visible after a barrier
    const int64_t head = kv_head * group + step / steps_per_head;
    const int64_t row0 = (m_begin + step % steps_per_head) * kBlockM;
    if (thread < kBlockM) {
      const int64_t rows_base = (batch * p.heads_q + head) * p.seqlen_q;
      const int64_t row = row0 + thread;
      float* stats = row_stats + stage * 2 * kBlockM;
      stats[thread] = lse_log2_or_inf(p.lse + rows_base, row, p.seqlen_q);
      stats[kBlockM + thread] = row < p.seqlen_q ? p.delta[rows_base + row] : 0.f;
    }
  };

  float dk_acc[kDk ? kDimQK / 8 : 1][4] = {};
  float dv_acc[kDv ? kDimV / 8 : 1][4] = {};
  const int64_t total_steps = steps_per_head * group;
  if (total_steps > 0) {
    load_step(0, 0);
  }
  cp_async_commit();
  const int warp_key = warp * 16 + lane / 4;  // this lane's key rows: warp_key and warp_key + 8

  for (int64_t step = 0; step < total_steps; ++step) {
    load_row_stats(int(step % 2), step);  // the stage the pipeline step below hands back
    const int stage = cp_async_double_buffer_step(step, 0, total_steps, load_step);
    const T* q_tile = stages + stage * Tile::kStageElements;
    const T* do_tile = q_tile + Tile::kQElements;
    const float* lse2 = row_stats + stage * 2 * kBlockM;
    const float* delta = lse2 + kBlockM;
    const int64_t row0 = (m_begin + step % steps_per_head) * kBlockM;

    // Sᵀ = K Qᵀ: this warp's 16 keys x kBlockM query rows.
    float probs[kAccM][4] = {};
    mma_a_bt<kDType, kDimQK, kBlockM>(probs, k_tile, warp * 16, q_tile, lane);
    const int64_t row_last = row0 + kBlockM < p.seqlen_q ? row0 + kBlockM : p.seqlen_q;
    const bool needs_mask = key_begin + kBlockN > p.seqlen_k || row0 + kBlockM > p.seqlen_q ||
                            !window.tile_fully_visible(row0, row_last, key_begin, key_end);
    float dcap[kAccM][4];
#pragma unroll
    for (int n = 0; n < kAccM; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int column = n * 8 + (lane % 4) * 2 + (e & 1);
        float p_value = exp2f(logit(probs[n][e], dcap[n][e]) - lse2[column]);
        if (needs_mask) {
          const int64_t key = key_begin + warp_key + (e >= 2 ? 8 : 0);
          if (key >= p.seqlen_k || !window.visible(row0 + column, key)) p_value = 0.f;
        }
        probs[n][e] = p_value;
      }
    }

    if constexpr (kDv) {  // dV += Pᵀ dO
      uint32_t p_frags[kBlockM / 16][4];
      accumulators_to_a_fragments<kDType, kBlockM>(probs, p_frags);
      mma_a_regs_b<kDType, kBlockM, kDimV, Tile::kPitchV>(dv_acc, p_frags, do_tile, 0, lane);
    }
    if constexpr (kDk) {  // dPᵀ = V dOᵀ; dSᵀ = Pᵀ ∘ (dPᵀ − Δ) ∘ dcap; dK += dSᵀ Q
      uint32_t ds_frags[kBlockM / 16][4];
      softmax_grad_fragments<kDType, kDimV, kBlockM>(
          ds_frags, probs, v_tile, warp * 16, do_tile, lane, [&](int n, int e, float p, float dp) {
            return p * (dp - delta[n * 8 + (lane % 4) * 2 + (e & 1)]) * dcap[n][e];
          });
      mma_a_regs_b<kDType, kBlockM, kDimQK, Tile::kPitchQK>(dk_acc, ds_frags, q_tile, 0, lane);
      if constexpr (kDq) {
        const int64_t head = kv_head * group + step / steps_per_head;
        accumulate_dq_atomic<kDimQK, kDimV, kDType>(p, ds_frags, ds_tile, k_tile,
                                                    (batch * p.heads_q + head) * p.seqlen_q, row0,
                                                    warp, lane);
      }
    }
    __syncthreads();  // the stage (and the dS tile) is refilled by a later step
  }
  cp_async_wait<0>();  // nothing may stay in flight when there was no step at all

  // dK = scale · Σ dSᵀ Q; rows past seqlen_k are not written.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = key_begin + warp_key + 8 * r;
    if (key >= p.seqlen_k) continue;
    if constexpr (kDk) {
      T* dk = static_cast<T*>(p.dk) + batch * p.dk_strides.batch + kv_head * p.dk_strides.head +
              key * p.dk_strides.row;
      store_fragment_row<kDType>(dk, dk_acc, r, p.softmax_scale, lane);
    }
    if constexpr (kDv) {
      T* dv = static_cast<T*>(p.dv) + batch * p.dv_strides.batch + kv_head * p.dv_strides.head +
              key * p.dv_strides.row;
      store_fragment_row<kDType>(dv, dv_acc, r, 1.f, lane);
    }
  }
}

// dQ = scale · dq_accum, rounded to the input dtype (after the atomic dK/dQ pass).
template <DType kDType>
__global__ void flash_bwd_dq_convert_kernel(const AttentionBwdParams p) {
  using T = Element<kDType>;
  const int64_t pairs = p.batch * p.heads_q * p.seqlen_q * p.head_dim_qk / 2;
  for (int64_t pair = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; pair < pairs;
       pair += int64_t(gridDim.x) * blockDim.x) {
    const int64_t column = (2 * pair) % p.head_dim_qk, flat_row = (2 * pair) / p.head_dim_qk;
    const int64_t row = flat_row % p.seqlen_q, head = (flat_row / p.seqlen_q) % p.heads_q;
    const int64_t batch = flat_row / (p.seqlen_q * p.heads_q);
    const float2 value = reinterpret_cast<const float2*>(p.dq_accum)[pair];
    T* dq = static_cast<T*>(p.dq) + batch * p.dq_strides.batch + head * p.dq_strides.head +
            row * p.dq_strides.row + column;
    *reinterpret_cast<uint32_t*>(dq) =
        pack_pair<kDType>(value.x * p.softmax_scale, value.y * p.softmax_scale);
  }
}

template <int kDimQK, int kDimV>
struct DqTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = fwd_block_n(kDimQK, kDimV);  // the forward's rule
  static constexpr int kPitchQK = TilePitch<kDimQK>::value;
  static constexpr int kPitchV = TilePitch<kDimV>::value;
  static constexpr int kQElements = kBlockM * kPitchQK;
  static constexpr int kDoElements = kBlockM * kPitchV;
  static constexpr int kKElements = kBlockN * kPitchQK;
  static constexpr int kVElements = kBlockN * kPitchV;
  static constexpr int kSmemBytes =
      (kQElements + kDoElements + 2 * (kKElements + kVElements)) * 2;
};

template <int kDimQK, int kDimV, DType kDType>
__global__ void __launch_bounds__(DqTile<kDimQK, kDimV>::kThreads)
    flash_bwd_dq_kernel(const AttentionBwdParams p) {
  using Tile = DqTile<kDimQK, kDimV>;
  using T = Element<kDType>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN;
  constexpr int kAccN = kBlockN / 8;

  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  T* q_tile = reinterpret_cast<T*>(shared_bytes);
  T* do_tile = q_tile + Tile::kQElements;
  T* k_tiles = do_tile + Tile::kDoElements;      // two stages
  T* v_tiles = k_tiles + 2 * Tile::kKElements;   // two stages

  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t m_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const int64_t kv_head = head / p.heads_per_kv();
  const KeyWindow window = p.key_window();
  const LogitTransform logit = LogitTransform::of(p);

  const int64_t row_begin = m_block * kBlockM;
  const int64_t row_end = row_begin + kBlockM < p.seqlen_q ? row_begin + kBlockM : p.seqlen_q;
  const int64_t key_begin = window.first_key(row_begin);
  const int64_t key_end = window.end_key(row_end - 1);
  const int64_t n_begin = key_begin / kBlockN;
  const int64_t n_end = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN : n_begin;

  const T* q = static_cast<const T*>(p.q) + batch * p.q_strides.batch + head * p.q_strides.head;
  const T* dout =
      static_cast<const T*>(p.dout) + batch * p.dout_strides.batch + head * p.dout_strides.head;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_strides.batch + kv_head * p.k_strides.head;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_strides.batch + kv_head * p.v_strides.head;

  const int warp_row = warp * 16 + lane / 4;
  const int64_t rows_base = (batch * p.heads_q + head) * p.seqlen_q;
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row_begin + warp_row + 8 * r;
    lse2[r] = lse_log2_or_inf(p.lse + rows_base, row, p.seqlen_q);
    delta[r] = row < p.seqlen_q ? p.delta[rows_base + row] : 0.f;
  }

  float dq_acc[kDimQK / 8][4] = {};
  if (n_begin < n_end) {
    load_tile_async<kBlockM, kDimQK, Tile::kThreads>(q_tile, q, p.q_strides.row, row_begin,
                                                     p.seqlen_q, thread);
    load_tile_async<kBlockM, kDimV, Tile::kThreads>(do_tile, dout, p.dout_strides.row, row_begin,
                                                    p.seqlen_q, thread);
    auto load_kv = [&](int stage, int64_t n_block) {
      load_kv_block_async<kBlockN, kDimQK, kDimV, Tile::kThreads>(
          k_tiles + stage * Tile::kKElements, v_tiles + stage * Tile::kVElements, k, v, p,
          p.k_strides, p.v_strides, n_block, thread);
    };
    load_kv(0, n_begin);
    cp_async_commit();

    for (int64_t n_block = n_begin; n_block < n_end; ++n_block) {
      const int stage = cp_async_double_buffer_step(n_block, n_begin, n_end, load_kv);
      const T* k_tile = k_tiles + stage * Tile::kKElements;
      const T* v_tile = v_tiles + stage * Tile::kVElements;

      float probs[kAccN][4] = {};
      mma_a_bt<kDType, kDimQK, kBlockN>(probs, q_tile, warp * 16, k_tile, lane);
      const int64_t key0 = n_block * kBlockN;
      const int64_t key_last = key0 + kBlockN < p.seqlen_k ? key0 + kBlockN : p.seqlen_k;
      const bool needs_mask = key0 + kBlockN > p.seqlen_k ||
                              !window.tile_fully_visible(row_begin, row_end, key0, key_last);
      float dcap[kAccN][4];
#pragma unroll
      for (int n = 0; n < kAccN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float p_value = exp2f(logit(probs[n][e], dcap[n][e]) - lse2[e / 2]);
          if (needs_mask) {
            const int64_t row = row_begin + warp_row + (e >= 2 ? 8 : 0);
            const int64_t key = key0 + n * 8 + (lane % 4) * 2 + (e & 1);
            if (key >= p.seqlen_k || !window.visible(row, key)) p_value = 0.f;
          }
          probs[n][e] = p_value;
        }
      }
      uint32_t ds_frags[kBlockN / 16][4];  // dP = dO Vᵀ, then dS = P ∘ (dP − Δ) ∘ dcap
      softmax_grad_fragments<kDType, kDimV, kBlockN>(
          ds_frags, probs, do_tile, warp * 16, v_tile, lane,
          [&](int n, int e, float p, float dp) { return p * (dp - delta[e / 2]) * dcap[n][e]; });
      mma_a_regs_b<kDType, kBlockN, kDimQK, Tile::kPitchQK>(dq_acc, ds_frags, k_tile, 0, lane);
      __syncthreads();
    }
  }

  T* dq = static_cast<T*>(p.dq) + batch * p.dq_strides.batch + head * p.dq_strides.head;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row_begin + warp_row + 8 * r;
    if (row >= p.seqlen_q) continue;
    store_fragment_row<kDType>(dq + row * p.dq_strides.row, dq_acc, r, p.softmax_scale, lane);
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
