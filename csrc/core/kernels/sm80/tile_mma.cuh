#pragma once
// The register-fragment products of the sm80 attention kernels (core forward, flash forward,
// split-KV, backward):
// ldmatrix + mma.sync m16n8k16 over the shared-memory tiles of tile_copy.cuh.

#include <cstdint>

#include "common/cuda_mma.cuh"
#include "core/kernels/sm80/tile_copy.cuh"

namespace deepseek_attn {
namespace cuda {

// acc[n8 tile] += A (16 rows of `a_tile` from `a_row`, all kDepth columns) x B^T, where B's rows
// are the kCols rows of `b_tile` (row-major, depth contiguous): scores = Q K^T and friends.
template <DType kDType, int kDepth, int kCols, typename T>
__device__ __forceinline__ void mma_a_bt(float (&acc)[kCols / 8][4], const T* a_tile, int a_row,
                                         const T* b_tile, int lane) {
  constexpr int kPitch = TilePitch<kDepth>::value;
#pragma unroll
  for (int k = 0; k < kDepth / 16; ++k) {
    uint32_t a[4];
    ldmatrix_x4(a, a_tile + (a_row + lane % 16) * kPitch + k * 16 + (lane / 16) * 8);
#pragma unroll
    for (int n = 0; n < kCols / 16; ++n) {
      uint32_t b[4];
      const int b_row = n * 16 + lane % 8 + (lane / 16) * 8;
      ldmatrix_x4(b, b_tile + b_row * kPitch + k * 16 + ((lane / 8) % 2) * 8);
      mma_16x8x16<kDType>(acc[2 * n], a, b[0], b[1]);
      mma_16x8x16<kDType>(acc[2 * n + 1], a, b[2], b[3]);
    }
  }
}

// A fragments of a 16 x kCols product held in C-fragment registers (fp32), rounded to 16 bits:
// two adjacent n8 accumulators form the A fragment of one k16 step (FlashAttention-2's trick).
template <DType kDType, int kCols>
__device__ __forceinline__ void accumulators_to_a_fragments(const float (&acc)[kCols / 8][4],
                                                            uint32_t (&a)[kCols / 16][4]) {
#pragma unroll
  for (int k = 0; k < kCols / 16; ++k) {
    a[k][0] = pack_pair<kDType>(acc[2 * k][0], acc[2 * k][1]);
    a[k][1] = pack_pair<kDType>(acc[2 * k][2], acc[2 * k][3]);
    a[k][2] = pack_pair<kDType>(acc[2 * k + 1][0], acc[2 * k + 1][1]);
    a[k][3] = pack_pair<kDType>(acc[2 * k + 1][2], acc[2 * k + 1][3]);
  }
}

// acc[n8 tile of columns] += A (register fragments, 16 x kDepth) x B, where B is the
// (kDepth x kCols) tile `b_tile` stored row-major with pitch kBPitch: O += P V and friends.
// Only columns [col_begin, col_begin + kCols) of the tile are used.
template <DType kDType, int kDepth, int kCols, int kBPitch, typename T>
__device__ __forceinline__ void mma_a_regs_b(float (&acc)[kCols / 8][4],
                                             const uint32_t (&a)[kDepth / 16][4], const T* b_tile,
                                             int col_begin, int lane) {
#pragma unroll
  for (int k = 0; k < kDepth / 16; ++k) {
#pragma unroll
    for (int n = 0; n < kCols / 16; ++n) {
      uint32_t b[4];
      const int b_row = k * 16 + lane % 8 + ((lane / 8) % 2) * 8;
      ldmatrix_x4_trans(b, b_tile + b_row * kBPitch + col_begin + n * 16 + (lane / 16) * 8);
      mma_16x8x16<kDType>(acc[2 * n], a[k], b[0], b[1]);
      mma_16x8x16<kDType>(acc[2 * n + 1], a[k], b[2], b[3]);
    }
  }
}

// The softmax-gradient step of every sm80 attention backward: dP = A Bᵀ for a warp's 16 rows
// of `a_tile` (dO rows against V rows, or V rows against dO rows for the transposed product),
// dS = ds_of(n, e, P, dP) elementwise (P ∘ (dP − Δ), times the soft-cap derivative where
// there is one), rounded into the A fragments of the next product (dQ += dS K, dK += dSᵀ Q).
template <DType kDType, int kDepth, int kCols, typename T, typename DsOf>
__device__ __forceinline__ void softmax_grad_fragments(uint32_t (&ds)[kCols / 16][4],
                                                       const float (&probs)[kCols / 8][4],
                                                       const T* a_tile, int a_row,
                                                       const T* b_tile, int lane, DsOf ds_of) {
  float dp[kCols / 8][4] = {};
  mma_a_bt<kDType, kDepth, kCols>(dp, a_tile, a_row, b_tile, lane);
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dp[n][e] = ds_of(n, e, probs[n][e], dp[n][e]);
  }
  accumulators_to_a_fragments<kDType, kCols>(dp, ds);
}

}  // namespace cuda
}  // namespace deepseek_attn
