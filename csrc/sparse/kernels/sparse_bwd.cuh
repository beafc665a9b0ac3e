#pragma once
// The sparse attention backward's CUDA kernels (SPEC §4; block lists SPEC §5), plain SIMT fp32
// (no tensor cores yet):
// a warp owns a query head (dq kernel) or a slice of (token, head) references (dk/dv kernel) and
// a lane owns column pairs 2·lane + 64·j of every row, so dot products are lane-local sums and a
// five-step butterfly. P is recomputed from the forward's LSE entry by entry, so a key listed
// twice counts twice as in the forward; rows that saw no key (LSE -inf) contribute nothing.
// Block lists are walked key by key (SparseBwdParams::key_of_entry), never expanded in memory.
//   sparse_bwd_dq_kernel: a CTA per (token, kv head, 8 query heads); the entries' K (and V) rows
//     are gathered into shared memory 16 at a time and shared by the CTA's heads.
//   sparse_bwd_dkv_kernel: a CTA per (key, kv head) over the tokens that list it or its block
//     (the inverse index); its four warps' partial rows are summed in shared memory and written
//     once.

#include <cmath>
#include <cstdint>

#include "common/cuda_mma.cuh"
#include "common/element.cuh"
#include "sparse/params.h"

namespace deepseek_attn {
namespace cuda {

constexpr int kSparseBwdWarps = 4;
constexpr int kSparseBwdThreads = kSparseBwdWarps * 32;
constexpr int kSparseBwdHeadsPerWarp = 2;
constexpr int kSparseBwdHeadsPerCta = kSparseBwdWarps * kSparseBwdHeadsPerWarp;
constexpr int kSparseBwdEntries = 16;  // K/V rows gathered per step of the dq kernel

// This lane's column pairs of a row: columns 2·lane + 64·j and the next, j < kDim / 64.
template <DType kDType, int kDim>
struct LaneRow {
  static constexpr int kPairs = kDim / 64;
  float2 values[kPairs];

  __device__ __forceinline__ void load(const Element<kDType>* row, int lane) {
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      values[j] = unpack_pair<kDType>(*reinterpret_cast<const uint32_t*>(row + 2 * lane + 64 * j));
    }
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int j = 0; j < kPairs; ++j) values[j] = make_float2(0.f, 0.f);
  }
  // Σ over this lane's columns of values · row (the caller sums the lanes).
  __device__ __forceinline__ float partial_dot(const Element<kDType>* row, int lane) const {
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      const float2 x = unpack_pair<kDType>(*reinterpret_cast<const uint32_t*>(row + 2 * lane + 64 * j));
      sum += values[j].x * x.x + values[j].y * x.y;
    }
    return sum;
  }
  __device__ __forceinline__ void add_scaled(float alpha, const Element<kDType>* row, int lane) {
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      const float2 x = unpack_pair<kDType>(*reinterpret_cast<const uint32_t*>(row + 2 * lane + 64 * j));
      values[j].x += alpha * x.x;
      values[j].y += alpha * x.y;
    }
  }
};

// P and dS of one (query row, key) entry: p = exp(scale·q·k - lse), ds = p·(dout·v - delta).
template <DType kDType, int kDimQK, int kDimV>
__device__ __forceinline__ void entry_gradients(const LaneRow<kDType, kDimQK>& q,
                                                const LaneRow<kDType, kDimV>& dout,
                                                const Element<kDType>* k_row,
                                                const Element<kDType>* v_row, float lse,
                                                float delta, float scale, int lane, float& p,
                                                float& ds) {
  const float score = warp_sum(q.partial_dot(k_row, lane));
  const float dp = warp_sum(dout.partial_dot(v_row, lane));
  p = lse == -INFINITY ? 0.f : expf(scale * score - lse);
  ds = p * (dp - delta);
}

template <DType kDType, int kDimQK, int kDimV>
__global__ void __launch_bounds__(kSparseBwdThreads) sparse_bwd_dq_kernel(const SparseBwdParams p) {
  using T = Element<kDType>;
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(T, k_rows, kSparseBwdEntries * kDimQK);
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(T, v_rows, kSparseBwdEntries * kDimV);
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(int, keys, kSparseBwdEntries);
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t chunks = (group + kSparseBwdHeadsPerCta - 1) / kSparseBwdHeadsPerCta;
  const int64_t t = blockIdx.x, hk = blockIdx.y / chunks, b = blockIdx.z;
  const int64_t first_head = hk * group + (blockIdx.y % chunks) * kSparseBwdHeadsPerCta;
  const int64_t group_end = (hk + 1) * group;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  const bool latent = p.dv == nullptr;  // values: the first Dv columns of the gathered K rows

  LaneRow<kDType, kDimQK> q_rows[kSparseBwdHeadsPerWarp], dq[kSparseBwdHeadsPerWarp];
  LaneRow<kDType, kDimV> dout_rows[kSparseBwdHeadsPerWarp];
  float lse[kSparseBwdHeadsPerWarp], delta[kSparseBwdHeadsPerWarp];
#pragma unroll
  for (int i = 0; i < kSparseBwdHeadsPerWarp; ++i) {
    const int64_t h = first_head + warp * kSparseBwdHeadsPerWarp + i;
    const int64_t row = (b * p.seqlen_q + t) * p.heads_q + (h < group_end ? h : first_head);
    q_rows[i].load(q + row * kDimQK, lane);
    dout_rows[i].load(dout + row * kDimV, lane);
    dq[i].zero();
    // A head past the group's end computes nothing: its LSE reads as -inf.
    lse[i] = h < group_end ? p.lse[(b * p.heads_q + h) * p.seqlen_q + t] : -INFINITY;
    delta[i] = p.delta[row];
  }
  const int32_t* list = p.indices + ((b * p.seqlen_q + t) * p.heads_kv + hk) * p.num_indices;
  for (int64_t n0 = 0; n0 < p.num_entries(); n0 += kSparseBwdEntries) {
    __syncthreads();  // the previous rows are consumed
    if (thread < kSparseBwdEntries) {  // out-of-range and unseen keys are skipped
      const int64_t n = n0 + thread;
      keys[thread] = n < p.num_entries() ? int(p.key_of_entry(list, n, t)) : -1;
    }
    __syncthreads();
    constexpr int kChunksQK = kDimQK / 8, kChunksV = kDimV / 8;  // 16-byte chunks per row
    const int chunks = kSparseBwdEntries * (kChunksQK + (latent ? 0 : kChunksV));
    for (int c = thread; c < chunks; c += kSparseBwdThreads) {
      const bool is_key = c < kSparseBwdEntries * kChunksQK;
      const int local = is_key ? c : c - kSparseBwdEntries * kChunksQK;
      const int chunks_per_row = is_key ? kChunksQK : kChunksV;
      const int e = local / chunks_per_row, column = (local % chunks_per_row) * 8;
      if (keys[e] < 0) continue;
      const int64_t kv_row = (b * p.seqlen_k + keys[e]) * p.heads_kv + hk;
      const T* source = is_key ? k + kv_row * kDimQK + column : v + kv_row * p.v_row + column;
      T* target = is_key ? k_rows + e * kDimQK + column : v_rows + e * kDimV + column;
      *reinterpret_cast<uint4*>(target) = *reinterpret_cast<const uint4*>(source);
    }
    __syncthreads();
    for (int e = 0; e < kSparseBwdEntries; ++e) {
      if (keys[e] < 0) continue;  // the same for every thread
#pragma unroll
      for (int i = 0; i < kSparseBwdHeadsPerWarp; ++i) {
        float prob, ds;
        entry_gradients(q_rows[i], dout_rows[i], k_rows + e * kDimQK,
                        latent ? k_rows + e * kDimQK : v_rows + e * kDimV, lse[i], delta[i],
                        p.scale, lane, prob, ds);
        dq[i].add_scaled(ds, k_rows + e * kDimQK, lane);
      }
    }
  }
  T* dq_out = static_cast<T*>(p.dq);
#pragma unroll
  for (int i = 0; i < kSparseBwdHeadsPerWarp; ++i) {
    const int64_t h = first_head + warp * kSparseBwdHeadsPerWarp + i;
    if (h >= group_end) continue;
    T* row = dq_out + ((b * p.seqlen_q + t) * p.heads_q + h) * kDimQK;
#pragma unroll
    for (int j = 0; j < LaneRow<kDType, kDimQK>::kPairs; ++j) {
      *reinterpret_cast<uint32_t*>(row + 2 * lane + 64 * j) =
          pack_pair<kDType>(p.scale * dq[i].values[j].x, p.scale * dq[i].values[j].y);
    }
  }
}

template <DType kDType, int kDimQK, int kDimV>
__global__ void __launch_bounds__(kSparseBwdThreads) sparse_bwd_dkv_kernel(const SparseBwdParams p) {
  using T = Element<kDType>;
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(float, partial_dk, kSparseBwdWarps * kDimQK);
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(float, partial_dv, kSparseBwdWarps * kDimV);
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t key = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t kv_row = (b * p.seqlen_k + key) * p.heads_kv + hk;
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  const T* k_row = static_cast<const T*>(p.k) + kv_row * kDimQK;
  const T* v_row = static_cast<const T*>(p.v) + kv_row * p.v_row;
  const int64_t list = (b * p.heads_kv + hk) * p.buckets() + key / p.index_block_size;
  const int64_t begin = p.key_offsets[list], references = p.key_offsets[list + 1] - begin;

  LaneRow<kDType, kDimQK> dk;
  LaneRow<kDType, kDimV> dv;
  dk.zero();
  dv.zero();
  for (int64_t pair = warp; pair < references * group; pair += kSparseBwdWarps) {
    const int64_t t = p.key_tokens[begin + pair / group], h = hk * group + pair % group;
    if (!p.sees(t, key)) continue;  // the key is in the future of this token (its block is not)
    const int64_t row = (b * p.seqlen_q + t) * p.heads_q + h;
    LaneRow<kDType, kDimQK> q_row;
    LaneRow<kDType, kDimV> dout_row;
    q_row.load(q + row * kDimQK, lane);
    dout_row.load(dout + row * kDimV, lane);
    float prob, ds;
    entry_gradients(q_row, dout_row, k_row, v_row, p.lse[(b * p.heads_q + h) * p.seqlen_q + t],
                    p.delta[row], p.scale, lane, prob, ds);
    dk.add_scaled(ds, q + row * kDimQK, lane);
    dv.add_scaled(prob, dout + row * kDimV, lane);
  }
#pragma unroll
  for (int j = 0; j < LaneRow<kDType, kDimQK>::kPairs; ++j) {
    partial_dk[warp * kDimQK + 2 * lane + 64 * j] = dk.values[j].x;
    partial_dk[warp * kDimQK + 2 * lane + 64 * j + 1] = dk.values[j].y;
  }
#pragma unroll
  for (int j = 0; j < LaneRow<kDType, kDimV>::kPairs; ++j) {
    partial_dv[warp * kDimV + 2 * lane + 64 * j] = dv.values[j].x;
    partial_dv[warp * kDimV + 2 * lane + 64 * j + 1] = dv.values[j].y;
  }
  __syncthreads();
  const bool latent = p.dv == nullptr;  // the values are k's first Dv columns
  T* dk_out = static_cast<T*>(p.dk) + kv_row * kDimQK;
  for (int column = thread; column < kDimQK; column += kSparseBwdThreads) {
    float sum = 0.f;
    for (int w = 0; w < kSparseBwdWarps; ++w) sum += partial_dk[w * kDimQK + column];
    sum *= p.scale;
    if (latent && column < kDimV) {
      for (int w = 0; w < kSparseBwdWarps; ++w) sum += partial_dv[w * kDimV + column];
    }
    dk_out[column] = T(sum);
  }
  if (!latent) {
    T* dv_out = static_cast<T*>(p.dv) + kv_row * kDimV;
    for (int column = thread; column < kDimV; column += kSparseBwdThreads) {
      float sum = 0.f;
      for (int w = 0; w < kSparseBwdWarps; ++w) sum += partial_dv[w * kDimV + column];
      dv_out[column] = T(sum);
    }
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
