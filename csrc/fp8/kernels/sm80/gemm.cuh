#pragma once
// Block-scaled FP8 "NT" GEMM of SPEC §2 for sm80 and later: C = Σ_kb sa·sb·(A_kb B_kbᵀ).
//
// The e4m3 tiles are staged in shared memory (cp.async, double buffered). On sm89/sm90 the
// fragments feed FP8 mma.sync (m16n8k32) directly; on sm80, which has no FP8 tensor cores, they
// are widened to fp16 (exact: e4m3 is a subset of fp16) for fp16 mma.sync. Either way each
// 128-wide K block is an exact-product fp32 partial, promoted with its scales into a separate
// fp32 accumulator as the recipe prescribes, so A100 users get the same numerics as Hopper users.
// CTA tile 128 x 64 (8 warps, 4 x 2, 32 x 32 each; wider warp tiles spill on sm90 with two
// fp32 accumulators), K step 128 = one scale block.

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "common/cuda_mma.cuh"
#include "common/element.cuh"
#include "fp8/params.h"

namespace deepseek_attn {
namespace cuda {

struct Fp8GemmTile {
  static constexpr int kBlockM = 128, kBlockN = 64, kBlockK = 128;
  static constexpr int kMTiles = 2, kNTiles = 4;  // per warp: 32 x 32 (4 x 2 warps)
  static constexpr int kThreads = 256;
  static constexpr int kPitch = kBlockK + 16;  // bytes per tile row; keeps fragment reads spread
  static constexpr int kStageBytes = (kBlockM + kBlockN) * kPitch;
  static constexpr int kSmemBytes = 2 * kStageBytes;
};



// Two adjacent e4m3 bytes widened (exactly) to an fp16 pair, the first in the low half.
__device__ __forceinline__ uint32_t e4m3_pair_to_half2(const uint8_t* pair) {
  const __nv_fp8x2_storage_t raw = *reinterpret_cast<const uint16_t*>(pair);
  const __half2_raw halves = __nv_cvt_fp8x2_to_halfraw2(raw, __NV_E4M3);
  uint32_t packed;
  memcpy(&packed, &halves, sizeof(packed));
  return packed;
}

// Issues the cp.async copies of one (kRows x 128) e4m3 tile; rows or K chunks past the end read 0.
template <int kRows>
__device__ __forceinline__ void load_fp8_tile(uint8_t* shared, const uint8_t* global,
                                              int64_t row0, int64_t rows_total, int64_t k0,
                                              int64_t k_total, int thread) {
  constexpr int kChunksPerRow = Fp8GemmTile::kBlockK / 16;
#pragma unroll
  for (int chunk = thread; chunk < kRows * kChunksPerRow; chunk += Fp8GemmTile::kThreads) {
    const int row = chunk / kChunksPerRow, column = (chunk % kChunksPerRow) * 16;
    const bool valid = row0 + row < rows_total && k0 + column < k_total;
    const uint8_t* source = valid ? global + (row0 + row) * k_total + k0 + column : global;
    cp_async_16(shared + row * Fp8GemmTile::kPitch + column, source, valid);
  }
}

template <DType kOut>
__global__ void __launch_bounds__(Fp8GemmTile::kThreads) fp8_gemm_kernel(const Fp8GemmParams p) {
  using Tile = Fp8GemmTile;
  using Out = Element<kOut>;
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(uint8_t, shared);
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int group = lane / 4, quad = lane % 4;
  const int64_t m0 = int64_t(blockIdx.x) * Tile::kBlockM;
  const int64_t n0 = int64_t(blockIdx.y) * Tile::kBlockN;
  const int warp_m = (warp / 2) * 32, warp_n = (warp % 2) * 32;

  // [m16 tile][n8 tile][fragment], promoted across K blocks.
  float total[Tile::kMTiles][Tile::kNTiles][4] = {};
  auto load_stage = [&](int stage, int64_t kb) {
    uint8_t* a_tile = shared + stage * Tile::kStageBytes;
    load_fp8_tile<Tile::kBlockM>(a_tile, p.a, m0, p.m, kb * Tile::kBlockK, p.k, thread);
    load_fp8_tile<Tile::kBlockN>(a_tile + Tile::kBlockM * Tile::kPitch, p.b, n0, p.n,
                                 kb * Tile::kBlockK, p.k, thread);
  };
  load_stage(0, 0);
  cp_async_commit();

  for (int64_t kb = 0; kb < p.k_blocks; ++kb) {
    const int stage = cp_async_double_buffer_step(kb, 0, p.k_blocks, load_stage);
    const uint8_t* a_tile = shared + stage * Tile::kStageBytes;
    const uint8_t* b_tile = a_tile + Tile::kBlockM * Tile::kPitch;

    float block[Tile::kMTiles][Tile::kNTiles][4] = {};  // exact products of this K block, fp32 sums
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    // FP8 tensor cores (sm89, sm90): e4m3 fragments straight from shared memory, 4 per register.
#pragma unroll
    for (int kk = 0; kk < Tile::kBlockK; kk += 32) {
      uint32_t a[Tile::kMTiles][4], b[Tile::kNTiles][2];
#pragma unroll
      for (int mt = 0; mt < Tile::kMTiles; ++mt) {
        const uint8_t* row = a_tile + (warp_m + mt * 16 + group) * Tile::kPitch + kk + 4 * quad;
        a[mt][0] = *reinterpret_cast<const uint32_t*>(row);
        a[mt][1] = *reinterpret_cast<const uint32_t*>(row + 8 * Tile::kPitch);
        a[mt][2] = *reinterpret_cast<const uint32_t*>(row + 16);
        a[mt][3] = *reinterpret_cast<const uint32_t*>(row + 8 * Tile::kPitch + 16);
      }
#pragma unroll
      for (int nt = 0; nt < Tile::kNTiles; ++nt) {
        const uint8_t* row = b_tile + (warp_n + nt * 8 + group) * Tile::kPitch + kk + 4 * quad;
        b[nt][0] = *reinterpret_cast<const uint32_t*>(row);
        b[nt][1] = *reinterpret_cast<const uint32_t*>(row + 16);
      }
#pragma unroll
      for (int mt = 0; mt < Tile::kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < Tile::kNTiles; ++nt)
          mma_16x8x32_e4m3(block[mt][nt], a[mt], b[nt][0], b[nt][1]);
      }
    }
#else
    // sm80 has no FP8 tensor cores: widen to fp16 (exact) and use fp16 mma.sync.
#pragma unroll
    for (int kk = 0; kk < Tile::kBlockK; kk += 16) {
      uint32_t a[Tile::kMTiles][4], b[Tile::kNTiles][2];
#pragma unroll
      for (int mt = 0; mt < Tile::kMTiles; ++mt) {
        const uint8_t* row = a_tile + (warp_m + mt * 16 + group) * Tile::kPitch + kk + 2 * quad;
        a[mt][0] = e4m3_pair_to_half2(row);
        a[mt][1] = e4m3_pair_to_half2(row + 8 * Tile::kPitch);
        a[mt][2] = e4m3_pair_to_half2(row + 8);
        a[mt][3] = e4m3_pair_to_half2(row + 8 * Tile::kPitch + 8);
      }
#pragma unroll
      for (int nt = 0; nt < Tile::kNTiles; ++nt) {
        const uint8_t* row = b_tile + (warp_n + nt * 8 + group) * Tile::kPitch + kk + 2 * quad;
        b[nt][0] = e4m3_pair_to_half2(row);
        b[nt][1] = e4m3_pair_to_half2(row + 8);
      }
#pragma unroll
      for (int mt = 0; mt < Tile::kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < Tile::kNTiles; ++nt)
          mma_16x8x16<DType::kFloat16>(block[mt][nt], a[mt], b[nt][0], b[nt][1]);
      }
    }

#endif
    // Promotion: total += (partial · sa[row]) · sb[column or block], SPEC §2 order.
    float a_scale[Tile::kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < Tile::kMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t row = m0 + warp_m + mt * 16 + group + 8 * half;
        a_scale[mt][half] = row < p.m ? p.a_scales[row * p.k_blocks + kb] : 0.f;
      }
    }
#pragma unroll
    for (int nt = 0; nt < Tile::kNTiles; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t column = n0 + warp_n + nt * 8 + 2 * quad + j;
        const int64_t scale_row = p.b_scaling == Fp8BScaling::kRow ? column : column / 128;
        const float b_scale = column < p.n ? p.b_scales[scale_row * p.k_blocks + kb] : 0.f;
#pragma unroll
        for (int mt = 0; mt < Tile::kMTiles; ++mt) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            total[mt][nt][2 * half + j] +=
                block[mt][nt][2 * half + j] * a_scale[mt][half] * b_scale;
          }
        }
      }
    }
    __syncthreads();  // the stage is refilled by the prefetch of the next iteration
  }

  Out* out = static_cast<Out*>(p.out);
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = m0 + warp_m + mt * 16 + group + 8 * half;
      if (row >= p.m) continue;
#pragma unroll
      for (int nt = 0; nt < Tile::kNTiles; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t column = n0 + warp_n + nt * 8 + 2 * quad + j;
          if (column < p.n) out[row * p.n + column] = Out(total[mt][nt][2 * half + j]);
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
