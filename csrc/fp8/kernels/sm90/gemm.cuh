#pragma once
// Block-scaled FP8 "NT" GEMM of SPEC §2 on Hopper (sm90a), DeepGEMM's recipe:
// one CTA = 3 warpgroups over a 128 x 128 output tile.
//   warpgroup 0  producer: one thread streams the e4m3 A and B tiles of each 128-wide K block
//                through a 4-stage ring by TMA (128-byte swizzle, zeros past M, N and K);
//   warpgroups 1, 2  consumers, 64 rows each: per K block, 4 FP8 wgmma (m64n128k32) into a
//                fresh fp32 block accumulator, then the block is promoted into the running
//                total with its scales — (partial · sa) · sb, the SPEC §2 order.
// The mma.sync kernel (sm80/gemm.cuh) remains for sm80/sm89 and when the Hopper kernels are
// switched off (common/device_arch.h).

#include <cstdint>

#include "common/cuda_hopper.cuh"
#include "fp8/kernels/sm80/gemm.cuh"

namespace deepseek_attn {
namespace cuda {

struct Fp8GemmHopperTile {
  static constexpr int kBlockM = 128, kBlockN = 128, kBlockK = 128;
  static constexpr int kThreads = 3 * 128;
  static constexpr int kStages = 4;
  static constexpr int kTileBytes = 128 * 128;  // one e4m3 tile of A or B per K block
  static constexpr int kStageBytes = 2 * kTileBytes;
  static constexpr int kBarrierOffset = kStages * kStageBytes;
  static constexpr int kSmemBytes = kBarrierOffset + 8 * 2 * kStages + 1024;  // +1024: alignment
  static constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;
  static_assert(warpgroup_registers_fit(kThreads, kProducerRegisters, kConsumerRegisters),
                "setmaxnreg: the consumers take more registers than the producer gives up");
};

template <DType kOut>
__global__ void __launch_bounds__(Fp8GemmHopperTile::kThreads, 1)
    fp8_gemm_hopper_kernel(const __grid_constant__ CUtensorMap a_map,
                           const __grid_constant__ CUtensorMap b_map, const Fp8GemmParams p) {
#if defined(DEEPSEEK_ATTN_HOPPER_DEVICE)
  using Tile = Fp8GemmHopperTile;
  using Out = Element<kOut>;
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_raw);
  unsigned char* shared = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(shared + Tile::kBarrierOffset);  // [kStages]
  uint64_t* empty = full + Tile::kStages;  // [kStages], one arrival per consumer warp

  const int thread = threadIdx.x, warpgroup = thread / 128;
  const int64_t m0 = int64_t(blockIdx.x) * Tile::kBlockM;
  const int64_t n0 = int64_t(blockIdx.y) * Tile::kBlockN;

  if (thread == 0) {
    for (int s = 0; s < Tile::kStages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 8);
    }
    mbarrier_init_fence();
  }
  __syncthreads();

  if (warpgroup == 0) {  // producer
    warpgroup_registers_decrease<Tile::kProducerRegisters>();
    if (thread == 0) {
      for (int64_t kb = 0; kb < p.k_blocks; ++kb) {
        const int stage = int(kb % Tile::kStages);
        if (kb >= Tile::kStages) {
          mbarrier_wait(&empty[stage], uint32_t((kb / Tile::kStages - 1) & 1));
        }
        unsigned char* a_tile = shared + stage * Tile::kStageBytes;
        mbarrier_arrive_expect_bytes(&full[stage], Tile::kStageBytes);
        tma_load_2d(a_tile, &a_map, &full[stage], int(kb * Tile::kBlockK), int(m0));
        tma_load_2d(a_tile + Tile::kTileBytes, &b_map, &full[stage], int(kb * Tile::kBlockK),
                    int(n0));
      }
    }
    return;
  }

  warpgroup_registers_increase<Tile::kConsumerRegisters>();
  const int consumer = warpgroup - 1, warp = (thread / 32) % 4, lane = thread % 32;
  const int64_t row = m0 + consumer * 64 + warp * 16 + lane / 4;  // and row + 8
  float total[16][4] = {};
  for (int64_t kb = 0; kb < p.k_blocks; ++kb) {
    const int stage = int(kb % Tile::kStages);
    const unsigned char* a_tile = shared + stage * Tile::kStageBytes;
    const unsigned char* b_tile = a_tile + Tile::kTileBytes;
    mbarrier_wait(&full[stage], uint32_t((kb / Tile::kStages) & 1));

    float block[16][4] = {};
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < Tile::kBlockK / 32; ++k) {  // 32 bytes of K per step in a swizzle row
      const uint64_t desc_a =
          swizzle128_descriptor(a_tile + consumer * 64 * 128 + k * 32, 16, 1024);
      const uint64_t desc_b = swizzle128_descriptor(b_tile + k * 32, 16, 1024);
      wgmma_m64n128k32_e4m3(block, desc_a, desc_b, k > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    wgmma_pin(block);
    __syncwarp();
    if (lane == 0) mbarrier_arrive(&empty[stage]);  // the tiles are free once in registers

    // Promotion, (partial · sa) · sb as SPEC §2 orders it. Block-scaled B has one scale per
    // 128 columns, i.e. one for the whole tile; row-scaled B (weight gradients) one per column.
    const float a_scale_low = row < p.m ? p.a_scales[row * p.k_blocks + kb] : 0.f;
    const float a_scale_high = row + 8 < p.m ? p.a_scales[(row + 8) * p.k_blocks + kb] : 0.f;
    if (p.b_scaling == Fp8BScaling::kBlock128) {
      const float b_scale = p.b_scales[(n0 / 128) * p.k_blocks + kb];
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        total[n][0] += block[n][0] * a_scale_low * b_scale;
        total[n][1] += block[n][1] * a_scale_low * b_scale;
        total[n][2] += block[n][2] * a_scale_high * b_scale;
        total[n][3] += block[n][3] * a_scale_high * b_scale;
      }
    } else {
#pragma unroll
      for (int n = 0; n < 16; ++n) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t column = n0 + n * 8 + (lane % 4) * 2 + j;
          const float b_scale = column < p.n ? p.b_scales[column * p.k_blocks + kb] : 0.f;
          total[n][j] += block[n][j] * a_scale_low * b_scale;
          total[n][2 + j] += block[n][2 + j] * a_scale_high * b_scale;
        }
      }
    }
  }

  Out* out = static_cast<Out*>(p.out);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = row + 8 * half;
    if (r >= p.m) continue;
#pragma unroll
    for (int n = 0; n < 16; ++n) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t column = n0 + n * 8 + (lane % 4) * 2 + j;
        if (column < p.n) out[r * p.n + column] = Out(total[n][2 * half + j]);
      }
    }
  }
#else
  __trap();  // launched only where the sm90a image exists (DeviceArch::hopper_kernels)
#endif
}

}  // namespace cuda
}  // namespace deepseek_attn
