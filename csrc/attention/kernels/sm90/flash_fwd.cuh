#pragma once
// Hopper (sm90a) attention forward for head dims 128/128, FlashAttention-3 style:
// one CTA = 3 warpgroups over 128 query rows of one (batch, head).
//   warpgroup 0  producer: one thread issues TMA box loads of Q once and of K/V tiles
//                (128 keys) into a 2-stage ring, each stage guarded by full/empty mbarriers;
//                the warpgroup gives its registers up (setmaxnreg) for the consumers.
//   warpgroups 1, 2  consumers, 64 rows each: S = Q Kᵀ by wgmma from shared memory, online
//                softmax in registers (the core's sm80 fragment helpers), O += P V by wgmma
//                with P from registers and V read N-major (transposed) from shared memory.
// Tiles are 128-byte swizzled by TMA (two 64-column halves per 128-wide row) and read by wgmma
// through swizzle-128 descriptors. Out-of-range rows and keys arrive as zeros and are masked.
// The core's sm80 kernel (core/kernels/sm80/core_fwd.cuh) takes other head dims, split-KV
// decode, other GPUs, and the launches when the Hopper kernels are switched off.

#include <cstdint>

#include "attention/heuristics.h"
#include "attention/params.h"
#include "common/cuda_hopper.cuh"
#include "core/kernels/sm80/softmax_fragments.cuh"
#include "core/kernels/sm80/tile_mma.cuh"

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

struct HopperFwdTile {
  static constexpr int kDim = kHopperForwardHeadDim;
  static constexpr int kBlockM = 128, kBlockN = 128;
  static constexpr int kThreads = 3 * 128;
  static constexpr int kHalfBytes = 128 * 64 * 2;  // one TMA box: 128 rows x 64 columns
  static constexpr int kTileBytes = 2 * kHalfBytes;
  static constexpr int kStages = 2;
  // Q, K stages, V stages, then the mbarriers; +1024 to align the base for swizzle-128.
  static constexpr int kBarrierOffset = kTileBytes * (1 + 2 * kStages);
  static constexpr int kSmemBytes = kBarrierOffset + 8 * (1 + 3 * kStages) + 1024;
  static constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;
  static_assert(warpgroup_registers_fit(kThreads, kProducerRegisters, kConsumerRegisters),
                "setmaxnreg: the consumers take more registers than the producer gives up");
};

template <DType kDType>
__global__ void __launch_bounds__(HopperFwdTile::kThreads, 1)
    flash_fwd_hopper_kernel(const __grid_constant__ CUtensorMap q_map,
                            const __grid_constant__ CUtensorMap k_map,
                            const __grid_constant__ CUtensorMap v_map, const AttentionFwdParams p) {
#if defined(DEEPSEEK_ATTN_HOPPER_DEVICE)
  using Tile = HopperFwdTile;
  using T = Element<kDType>;
  constexpr int kAccN = Tile::kBlockN / 8, kAccV = Tile::kDim / 8;

  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_raw);
  unsigned char* shared = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* q_tile = shared;
  unsigned char* k_tiles = q_tile + Tile::kTileBytes;
  unsigned char* v_tiles = k_tiles + Tile::kStages * Tile::kTileBytes;
  uint64_t* barriers = reinterpret_cast<uint64_t*>(shared + Tile::kBarrierOffset);
  uint64_t* q_full = barriers;
  uint64_t* k_full = barriers + 1;                  // [kStages]
  uint64_t* v_full = k_full + Tile::kStages;        // [kStages]
  uint64_t* kv_empty = v_full + Tile::kStages;      // [kStages], one arrival per consumer warp

  const int thread = threadIdx.x, warpgroup = thread / 128;
  const int64_t m_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const int64_t kv_head = head / p.heads_per_kv();
  const KeyWindow window = p.key_window();
  const int64_t row_begin = m_block * Tile::kBlockM;
  const int64_t row_end = row_begin + Tile::kBlockM < p.seqlen_q ? row_begin + Tile::kBlockM
                                                                 : p.seqlen_q;
  const int64_t key_begin = window.first_key(row_begin);
  const int64_t key_end = window.end_key(row_end - 1);
  const int64_t n_begin = key_begin / Tile::kBlockN;
  const int64_t n_end = key_end > key_begin ? (key_end + Tile::kBlockN - 1) / Tile::kBlockN
                                            : n_begin;

  if (thread == 0) {
    mbarrier_init(q_full, 1);
    for (int s = 0; s < Tile::kStages; ++s) {
      mbarrier_init(&k_full[s], 1);
      mbarrier_init(&v_full[s], 1);
      mbarrier_init(&kv_empty[s], 8);
    }
    mbarrier_init_fence();
  }
  __syncthreads();

  if (warpgroup == 0) {  // producer
    warpgroup_registers_decrease<Tile::kProducerRegisters>();
    if (thread == 0 && n_begin < n_end) {
      mbarrier_arrive_expect_bytes(q_full, Tile::kTileBytes);
      for (int half = 0; half < 2; ++half) {
        tma_load_4d(q_tile + half * Tile::kHalfBytes, &q_map, q_full, half * 64, int(row_begin),
                    int(head), int(batch));
      }
      for (int64_t n_block = n_begin; n_block < n_end; ++n_block) {
        const int64_t use = n_block - n_begin;
        const int stage = int(use % Tile::kStages);
        if (use >= Tile::kStages) {  // wait until the consumers released this stage's last use
          mbarrier_wait(&kv_empty[stage], uint32_t((use / Tile::kStages - 1) & 1));
        }
        const int key0 = int(n_block * Tile::kBlockN);
        mbarrier_arrive_expect_bytes(&k_full[stage], Tile::kTileBytes);
        for (int half = 0; half < 2; ++half) {
          tma_load_4d(k_tiles + stage * Tile::kTileBytes + half * Tile::kHalfBytes, &k_map,
                      &k_full[stage], half * 64, key0, int(kv_head), int(batch));
        }
        mbarrier_arrive_expect_bytes(&v_full[stage], Tile::kTileBytes);
        for (int half = 0; half < 2; ++half) {
          tma_load_4d(v_tiles + stage * Tile::kTileBytes + half * Tile::kHalfBytes, &v_map,
                      &v_full[stage], half * 64, key0, int(kv_head), int(batch));
        }
      }
    }
    return;
  }

  // Consumers: warpgroup c = 0/1 owns tile rows 64c..64c+63; warp w of it rows 16w..16w+15.
  warpgroup_registers_increase<Tile::kConsumerRegisters>();
  const int consumer = warpgroup - 1, warp = (thread / 32) % 4, lane = thread % 32;
  const int row_in_tile = consumer * 64 + warp * 16 + lane / 4;

  float out_acc[kAccV][4] = {};
  OnlineSoftmaxRow<float> rows[2];
  float partial_sum[2] = {0.f, 0.f};

  if (n_begin < n_end) {
    mbarrier_wait(q_full, 0);
    for (int64_t n_block = n_begin; n_block < n_end; ++n_block) {
      const int64_t use = n_block - n_begin;
      const int stage = int(use % Tile::kStages);
      const uint32_t parity = uint32_t((use / Tile::kStages) & 1);
      const unsigned char* k_tile = k_tiles + stage * Tile::kTileBytes;
      const unsigned char* v_tile = v_tiles + stage * Tile::kTileBytes;

      // S = Q Kᵀ over 8 k16 steps: 4 per 64-column half, 32 bytes apart inside a swizzle row.
      float scores[kAccN][4] = {};
      mbarrier_wait(&k_full[stage], parity);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < Tile::kDim / 16; ++k) {
        const int half = k / 4, offset = (k % 4) * 32;
        const uint64_t desc_q = swizzle128_descriptor(
            q_tile + half * Tile::kHalfBytes + consumer * 64 * 128 + offset, 16, 1024);
        const uint64_t desc_k =
            swizzle128_descriptor(k_tile + half * Tile::kHalfBytes + offset, 16, 1024);
        wgmma_m64n128k16_ss<kDType>(scores, desc_q, desc_k, k > 0);
      }
      wgmma_commit();
      wgmma_wait_all();
      wgmma_pin(scores);

      const int64_t key0 = n_block * Tile::kBlockN;
      const int64_t key_last = key0 + Tile::kBlockN < p.seqlen_k ? key0 + Tile::kBlockN
                                                                 : p.seqlen_k;
      const bool needs_mask = key0 + Tile::kBlockN > p.seqlen_k ||
                              !window.tile_fully_visible(row_begin, row_end, key0, key_last);
      scores_to_logits(scores, p.softmax_scale, p.softcap, needs_mask, lane,
                       BandVisibility{p, window, row_begin + row_in_tile, key0});
      online_softmax_step(scores, rows, partial_sum, out_acc);
      uint32_t probs[Tile::kBlockN / 16][4];
      accumulators_to_a_fragments<kDType, Tile::kBlockN>(scores, probs);

      // O += P V over 8 k16 steps of 16 keys (2 KB apart); V is N-major: its two 64-column
      // halves are 16 KB apart, groups of 8 keys 1 KB apart.
      mbarrier_wait(&v_full[stage], parity);
      wgmma_pin(out_acc);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < Tile::kBlockN / 16; ++k) {
        const uint64_t desc_v =
            swizzle128_descriptor(v_tile + k * 16 * 128, Tile::kHalfBytes, 1024);
        wgmma_m64n128k16_rs<kDType>(out_acc, probs[k], desc_v, true);
      }
      wgmma_commit();
      wgmma_wait_all();
      wgmma_pin(out_acc);
      __syncwarp();
      if (lane == 0) mbarrier_arrive(&kv_empty[stage]);
    }
  }

  float lse[2];
  finish_rows(rows, partial_sum, out_acc, lse);
  T* out = static_cast<T*>(p.out) + batch * p.out_strides.batch + head * p.out_strides.head;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row_begin + row_in_tile + 8 * r;
    if (row >= p.seqlen_q) continue;
    store_fragment_row<kDType>(out + row * p.out_strides.row, out_acc, r, 1.f, lane);
    if (lane % 4 == 0) p.lse[(batch * p.heads_q + head) * p.seqlen_q + row] = lse[r];
  }
#else
  __trap();  // launched only where the sm90a image exists (DeviceArch::hopper_kernels)
#endif
}

}  // namespace cuda
}  // namespace deepseek_attn
