#pragma once
// How the sm80 attention kernels (the core and the attention family) move tiles: cp.async loads of
// Q/K/V row blocks into shared-memory tiles (row-major, pitch dim + 8 elements: 16 extra bytes per
// row make every ldmatrix of 8 rows hit 32 distinct banks), and 16-bit stores of accumulator rows.

#include <cstdint>

#include "common/attention_shape.h"
#include "common/cuda_mma.cuh"

namespace deepseek_attn {
namespace cuda {

template <int kDim>
struct TilePitch {
  static constexpr int value = kDim + 8;
};

// Issues cp.async copies of rows [row_begin, row_begin + kRows) of a (seqlen, kDim) matrix
// (row stride in elements) into shared memory; rows at or past `seqlen` are zero-filled.
template <int kRows, int kDim, int kThreads, typename T>
__device__ __forceinline__ void load_tile_async(T* shared, const T* global, int64_t row_stride,
                                                int64_t row_begin, int64_t seqlen, int thread) {
  constexpr int kChunksPerRow = kDim / 8;  // 16-byte chunks
  constexpr int kPitch = TilePitch<kDim>::value;
#pragma unroll
  for (int chunk = thread; chunk < kRows * kChunksPerRow; chunk += kThreads) {
    const int row = chunk / kChunksPerRow;
    const int column = (chunk % kChunksPerRow) * 8;
    const int64_t source_row = row_begin + row;
    const bool valid = source_row < seqlen;
    const T* source = valid ? global + source_row * row_stride + column : global;
    cp_async_16(shared + row * kPitch + column, source, valid);
  }
}

// Issues the cp.async copies of key block `n_block` (kBlockN rows) of both K and V.
template <int kBlockN, int kDimQK, int kDimV, int kThreads, typename T>
__device__ __forceinline__ void load_kv_block_async(T* k_tile, T* v_tile, const T* k, const T* v,
                                                    const AttentionShape& p,
                                                    const BshdStrides& k_strides,
                                                    const BshdStrides& v_strides, int64_t n_block,
                                                    int thread) {
  load_tile_async<kBlockN, kDimQK, kThreads>(k_tile, k, k_strides.row, n_block * kBlockN,
                                             p.seqlen_k, thread);
  load_tile_async<kBlockN, kDimV, kThreads>(v_tile, v, v_strides.row, n_block * kBlockN, p.seqlen_k,
                                            thread);
}

// Writes this lane's part of one C-fragment row (`half` 0: row `group`, 1: row `group + 8`) of
// a 16 x (8·kTiles) accumulator, times `scale`, as 16-bit pairs; `row` points at column 0.
template <DType kDType, int kTiles, typename T>
__device__ __forceinline__ void store_fragment_row(T* row, const float (&acc)[kTiles][4], int half,
                                                   float scale, int lane) {
#pragma unroll
  for (int d = 0; d < kTiles; ++d) {
    *reinterpret_cast<uint32_t*>(row + d * 8 + (lane % 4) * 2) =
        pack_pair<kDType>(acc[d][2 * half] * scale, acc[d][2 * half + 1] * scale);
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
