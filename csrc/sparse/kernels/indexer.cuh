#pragma once
// The lightning indexer's CUDA kernels (SPEC §4), sm80 mma.sync (run on sm90 too). One CTA of
// four warps per query token. Per block of 64 keys: Q (the token's heads, padded to 16-row mma
// tiles) times Kᵀ on tensor cores, ReLU times each head's weight summed over the heads in
// registers and then across warps in shared memory. indexer_logits_kernel writes the scores;
// indexer_topk_kernel admits the keys that beat the current k-th best into shared memory and, when
// the buffer could overflow, bitonic-sorts kept and admitted keys and keeps the best topk — the
// (Sq, Sk) scores never reach memory. FP8 inputs are widened to bf16 (exactly) on their way to
// shared memory.

#include <cmath>
#include <cstdint>

#include "common/cuda_mma.cuh"
#include "common/element.cuh"
#include "common/fp8.h"
#include "core/kernels/sm80/tile_copy.cuh"
#include "core/kernels/sm80/tile_mma.cuh"
#include "sparse/params.h"

namespace deepseek_attn {
namespace cuda {

constexpr int kIndexerWarps = 4;
constexpr int kIndexerThreads = kIndexerWarps * 32;

// Byte offsets into one CTA's dynamic shared memory (host and device agree on them).
struct IndexerSmemLayout {
  int heads_pad;  // heads rounded up to 16
  int pitch;      // elements per shared row: head_dim + 8
  int capacity;   // top-k kernel: kept and admitted slots, each; 0 for the logits kernel

  DEEPSEEK_ATTN_HOST_DEVICE int k_offset() const { return heads_pad * pitch * 2; }
  DEEPSEEK_ATTN_HOST_DEVICE int weights_offset() const {
    return k_offset() + 2 * kIndexerBlockKeys * pitch * 2;
  }
  DEEPSEEK_ATTN_HOST_DEVICE int partial_offset() const { return weights_offset() + heads_pad * 4; }
  DEEPSEEK_ATTN_HOST_DEVICE int keys_offset() const {
    return partial_offset() + kIndexerWarps * kIndexerBlockKeys * 4;  // a multiple of 8
  }
  DEEPSEEK_ATTN_HOST_DEVICE int state_offset() const { return keys_offset() + 2 * capacity * 8; }
  // The top-k state after the slots: the floor (8 bytes) and three int counts.
  DEEPSEEK_ATTN_HOST_DEVICE int bytes() const { return state_offset() + (capacity > 0 ? 24 : 0); }
};

// The top-k buffer's capacity for `topk`: a power of two with room for a whole key block.
DEEPSEEK_ATTN_HOST_DEVICE int indexer_topk_capacity(int64_t topk) {
  int capacity = kIndexerBlockKeys;
  while (capacity < topk) capacity *= 2;
  return capacity;
}

// A candidate as one integer that sorts like SPEC §4's order: the score's bits made monotone in
// the high half, the complemented key in the low half (equal scores: the lower key is larger).
// 0 is below every real candidate, so it marks an empty slot.
__device__ __forceinline__ uint64_t topk_candidate(float score, int64_t key) {
  const uint32_t bits = float_bits(score);
  const uint32_t monotone = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (uint64_t(monotone) << 32) | uint64_t(~uint32_t(key));
}

// Rows [row_begin, row_begin + kRows) of a (rows, kDim) e4m3 matrix into a bf16 shared tile
// (pitch kDim + 8), widened exactly; rows at or past `rows` read as zero.
template <int kRows, int kDim>
__device__ __forceinline__ void load_fp8_tile_as_bf16(__nv_bfloat16* shared,
                                                      const uint8_t* global, int64_t row_stride,
                                                      int64_t row_begin, int64_t rows,
                                                      int thread) {
  constexpr int kChunksPerRow = kDim / 8;
  constexpr int kPitch = TilePitch<kDim>::value;
  for (int chunk = thread; chunk < kRows * kChunksPerRow; chunk += kIndexerThreads) {
    const int row = chunk / kChunksPerRow, column = (chunk % kChunksPerRow) * 8;
    uint32_t packed[4] = {0, 0, 0, 0};
    if (row_begin + row < rows) {
      const uint2 bytes =
          *reinterpret_cast<const uint2*>(global + (row_begin + row) * row_stride + column);
#pragma unroll
      for (int pair = 0; pair < 4; ++pair) {
        const uint32_t word = pair < 2 ? bytes.x : bytes.y;
        const int shift = (pair % 2) * 16;
        packed[pair] = pack_pair<DType::kBFloat16>(e4m3_to_float(uint8_t(word >> shift)),
                                                   e4m3_to_float(uint8_t(word >> (shift + 8))));
      }
    }
    *reinterpret_cast<uint4*>(shared + row * kPitch + column) =
        make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

// Rows of q or k into a shared tile: cp.async for 16-bit inputs (the caller commits), widening
// stores for FP8.
template <DType kInput, int kRows, int kDim, typename T>
__device__ __forceinline__ void load_indexer_rows(T* shared, const void* global,
                                                  int64_t row_stride, int64_t row_begin,
                                                  int64_t rows, int thread) {
  if constexpr (kInput == DType::kE4m3) {
    load_fp8_tile_as_bf16<kRows, kDim>(shared, static_cast<const uint8_t*>(global), row_stride,
                                       row_begin, rows, thread);
  } else {
    load_tile_async<kRows, kDim, kIndexerThreads>(shared, static_cast<const T*>(global),
                                                  row_stride, row_begin, rows, thread);
  }
}

// One query token's scores, a block of 64 keys at a time: sink.consume(key_begin, score, key)
// is called by every thread after each block (threads 0..63 carry key key_begin + thread and its
// score; the others key -1), then sink.finish(blocks).
template <DType kInput, int kHeadDim, class Sink>
__device__ __forceinline__ void indexer_token_scores(const IndexerParams& p,
                                                     const IndexerSmemLayout& layout,
                                                     int64_t visible_end, char* smem,
                                                     Sink& sink) {
  constexpr DType kMma = kInput == DType::kE4m3 ? DType::kBFloat16 : kInput;
  using T = Element<kMma>;
  constexpr int kPitch = TilePitch<kHeadDim>::value;
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t b = blockIdx.y, t = blockIdx.x;
  T* q_tile = reinterpret_cast<T*>(smem);
  T* k_tiles = reinterpret_cast<T*>(smem + layout.k_offset());
  float* weights = reinterpret_cast<float*>(smem + layout.weights_offset());
  float* partial = reinterpret_cast<float*>(smem + layout.partial_offset());
  const int64_t blocks = (visible_end + kIndexerBlockKeys - 1) / kIndexerBlockKeys;
  const int head_tiles = layout.heads_pad / 16;

  const char* q_bytes = static_cast<const char*>(p.q);
  const char* k_bytes = static_cast<const char*>(p.k);
  constexpr int kElementBytes = kInput == DType::kE4m3 ? 1 : 2;
  const void* q_rows = q_bytes + (b * p.q_batch_stride + t * p.q_token_stride) * kElementBytes;
  const void* k_rows = k_bytes + b * p.k_batch_stride * kElementBytes;
  const auto load_keys = [&](int stage, int64_t block) {
    load_indexer_rows<kInput, kIndexerBlockKeys, kHeadDim>(
        k_tiles + stage * kIndexerBlockKeys * kPitch, k_rows, p.k_token_stride,
        block * kIndexerBlockKeys, visible_end, thread);
  };
  for (int h = thread; h < layout.heads_pad; h += kIndexerThreads) {
    weights[h] = h < p.heads ? p.weights[(b * p.seqlen_q + t) * p.heads + h] * p.scale : 0.f;
  }
  if (blocks > 0) {
    for (int r0 = 0; r0 < layout.heads_pad; r0 += 16) {
      load_indexer_rows<kInput, 16, kHeadDim>(q_tile + r0 * kPitch, q_rows, p.q_head_stride, r0,
                                              p.heads, thread);
    }
    load_keys(0, 0);
    cp_async_commit();
  }
  for (int64_t block = 0; block < blocks; ++block) {
    const int stage = cp_async_double_buffer_step(block, 0, blocks, load_keys);
    // Σ_h w_h·ReLU(q_h·k) of this lane's columns over the row pairs of its head tiles.
    float column_sums[kIndexerBlockKeys / 8][2] = {};
    for (int tile = warp; tile < head_tiles; tile += kIndexerWarps) {
      float acc[kIndexerBlockKeys / 8][4] = {};
      mma_a_bt<kMma, kHeadDim, kIndexerBlockKeys>(acc, q_tile, tile * 16,
                                                  k_tiles + stage * kIndexerBlockKeys * kPitch,
                                                  lane);
      const float w_low = weights[tile * 16 + lane / 4], w_high = weights[tile * 16 + lane / 4 + 8];
#pragma unroll
      for (int n = 0; n < kIndexerBlockKeys / 8; ++n) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          column_sums[n][c] += w_low * fmaxf(acc[n][c], 0.f) + w_high * fmaxf(acc[n][2 + c], 0.f);
        }
      }
    }
#pragma unroll
    for (int n = 0; n < kIndexerBlockKeys / 8; ++n) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {  // over the eight row groups: lanes of equal lane % 4
        float sum = column_sums[n][c];
        sum += __shfl_xor_sync(0xffffffffu, sum, 4);
        sum += __shfl_xor_sync(0xffffffffu, sum, 8);
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
        if (lane < 4) partial[warp * kIndexerBlockKeys + n * 8 + 2 * lane + c] = sum;
      }
    }
    __syncthreads();
    int64_t key = -1;
    float score = 0.f;
    if (thread < kIndexerBlockKeys && block * kIndexerBlockKeys + thread < visible_end) {
      key = block * kIndexerBlockKeys + thread;
      for (int w = 0; w < kIndexerWarps; ++w) score += partial[w * kIndexerBlockKeys + thread];
      if (p.k_scale != nullptr) score *= p.k_scale[b * p.seqlen_k + key];
    }
    sink.consume(block * kIndexerBlockKeys, score, key);
    __syncthreads();  // the partial sums and this stage are reused by the next block
  }
  sink.finish(blocks);
}

// The keys [0, visible end) that query token blockIdx.x of sequence blockIdx.y sees.
__device__ __forceinline__ int64_t indexer_visible_end_of_block(const IndexerParams& p) {
  int64_t keys = p.seqlen_k;
  if (p.seqlens_k != nullptr) {  // out-of-range lengths are clamped (the host may check them)
    const int64_t given = p.seqlens_k[blockIdx.y];
    keys = given < 0 ? 0 : (given > p.seqlen_k ? p.seqlen_k : given);
  }
  return indexer_visible_end(blockIdx.x, p.seqlen_q, keys, p.causal);
}

// Writes a row of logits: scores where visible, -inf elsewhere.
struct LogitsRowSink {
  float* row;
  int64_t visible_end, seqlen_k;

  __device__ __forceinline__ void consume(int64_t key_begin, float score, int64_t key) {
    const int64_t column = key_begin + threadIdx.x;
    if (threadIdx.x < kIndexerBlockKeys && column < seqlen_k) {
      row[column] = key >= 0 ? score : -INFINITY;
    }
  }
  __device__ __forceinline__ void finish(int64_t blocks) {
    for (int64_t column = blocks * kIndexerBlockKeys + threadIdx.x; column < seqlen_k;
         column += kIndexerThreads) {
      row[column] = -INFINITY;
    }
  }
};

template <DType kInput, int kHeadDim>
__global__ void __launch_bounds__(kIndexerThreads)
    indexer_logits_kernel(const IndexerParams p, const IndexerSmemLayout layout) {
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(char, smem);
  const int64_t visible_end = indexer_visible_end_of_block(p);
  LogitsRowSink sink{p.logits + (int64_t(blockIdx.y) * p.seqlen_q + blockIdx.x) * p.seqlen_k,
                     visible_end, p.seqlen_k};
  indexer_token_scores<kInput, kHeadDim>(p, layout, visible_end, smem, sink);
}

// A query row's running top-k in shared memory: `kept` (capacity slots, sorted, best first, 0
// past the kept ones) then `admitted` (capacity slots, filled in key order); `floor` is the k-th
// best kept so far (0 until topk are kept).
struct TopkRowSink {
  uint64_t* slots;  // kept then admitted
  uint64_t* floor;
  int* admitted;    // count; admitted[1], [2]: per-warp counts of the current block
  int capacity, topk;
  int32_t* out;

  __device__ __forceinline__ void init() {
    for (int i = threadIdx.x; i < 2 * capacity; i += kIndexerThreads) slots[i] = 0;
    if (threadIdx.x == 0) {
      *floor = 0;
      admitted[0] = 0;
    }
    __syncthreads();
  }

  __device__ __forceinline__ void consume(int64_t, float score, int64_t key) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint64_t candidate = 0;
    if (key >= 0 && score == score) {  // NaN cannot be ranked
      candidate = topk_candidate(score, key);
      if (candidate <= *floor) candidate = 0;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, candidate != 0);
    if (lane == 0 && warp < 2) admitted[1 + warp] = __popc(ballot);
    __syncthreads();
    if (candidate != 0) {  // in key order: warp 0's keys, then warp 1's
      const int slot = admitted[0] + (warp == 1 ? admitted[1] : 0) + __popc(ballot & ((1u << lane) - 1u));
      slots[capacity + slot] = candidate;
    }
    __syncthreads();
    if (threadIdx.x == 0) admitted[0] += admitted[1] + admitted[2];
    __syncthreads();
    if (admitted[0] > capacity - kIndexerBlockKeys) merge();  // the next block might not fit
  }

  // Sorts all slots best first (bitonic), keeps the best topk and empties the rest.
  __device__ __forceinline__ void merge() {
    const int size = 2 * capacity;
    for (int span = 2; span <= size; span *= 2) {
      for (int stride = span / 2; stride > 0; stride /= 2) {
        for (int i = threadIdx.x; i < size; i += kIndexerThreads) {
          const int partner = i ^ stride;
          if (partner > i) {
            const uint64_t a = slots[i], c = slots[partner];
            const bool descending = (i & span) == 0;
            if (descending ? a < c : a > c) {
              slots[i] = c;
              slots[partner] = a;
            }
          }
        }
        __syncthreads();
      }
    }
    for (int i = topk + threadIdx.x; i < size; i += kIndexerThreads) slots[i] = 0;
    if (threadIdx.x == 0) {
      *floor = slots[topk - 1];
      admitted[0] = 0;
    }
    __syncthreads();
  }

  __device__ __forceinline__ void finish(int64_t) {
    if (admitted[0] > 0) merge();
    for (int r = threadIdx.x; r < topk; r += kIndexerThreads) {
      out[r] = slots[r] != 0 ? int32_t(~uint32_t(slots[r])) : -1;
    }
  }
};

template <DType kInput, int kHeadDim>
__global__ void __launch_bounds__(kIndexerThreads)
    indexer_topk_kernel(const IndexerParams p, const IndexerSmemLayout layout) {
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(char, smem);
  TopkRowSink sink{reinterpret_cast<uint64_t*>(smem + layout.keys_offset()),
                   reinterpret_cast<uint64_t*>(smem + layout.state_offset()),
                   reinterpret_cast<int*>(smem + layout.state_offset() + 8),
                   layout.capacity,
                   int(p.topk),
                   p.indices + (int64_t(blockIdx.y) * p.seqlen_q + blockIdx.x) * p.topk};
  sink.init();
  indexer_token_scores<kInput, kHeadDim>(p, layout, indexer_visible_end_of_block(p), smem, sink);
}

}  // namespace cuda
}  // namespace deepseek_attn

namespace deepseek_attn {
namespace cuda {

// The backward kernels (no FP8: only 16-bit inputs train). With g = scale·dI[t, s] on visible
// entries (0 elsewhere) and z = q[t, h]·k[s]:
//   dw[t, h] = Σ_s g·ReLU(z),  dz = g·w[t, h]·[z > 0],  dq[t, h] = Σ_s dz·k[s],
//   dk[s] = Σ_(t, h) dz·q[t, h]   (dz rounded to 16 bits for the tensor cores, as P in flash).
constexpr int kIndexerBwdWarps = 8;  // one 16-head tile each (at most 128 heads)
constexpr int kIndexerBwdThreads = kIndexerBwdWarps * 32;

// dq and dw: a CTA per (token, sequence), key blocks of 64 streamed as in the forward; each warp
// keeps its head tile's dq (16 x d) in registers.
template <DType kDType, int kHeadDim>
__global__ void __launch_bounds__(kIndexerBwdThreads)
    indexer_bwd_dq_kernel(const IndexerBwdParams p, const IndexerSmemLayout layout) {
  using T = Element<kDType>;
  constexpr int kPitch = TilePitch<kHeadDim>::value;
  constexpr int kBlock = kIndexerBlockKeys;
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(char, smem);
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t b = blockIdx.y, t = blockIdx.x;
  T* q_tile = reinterpret_cast<T*>(smem);
  T* k_tiles = reinterpret_cast<T*>(smem + layout.k_offset());
  float* weights = reinterpret_cast<float*>(smem + layout.weights_offset());
  float* upstream = reinterpret_cast<float*>(smem + layout.partial_offset());  // g of a block
  const int64_t visible_end = indexer_visible_end_of_block(p.forward);
  const int64_t blocks = (visible_end + kBlock - 1) / kBlock;
  const T* q_rows = static_cast<const T*>(p.forward.q) + b * p.forward.q_batch_stride +
                    t * p.forward.q_token_stride;
  const T* k_rows = static_cast<const T*>(p.forward.k) + b * p.forward.k_batch_stride;
  const float* dlogits = p.dlogits + (b * p.forward.seqlen_q + t) * p.forward.seqlen_k;
  const auto load_keys = [&](int stage, int64_t block) {
    load_tile_async<kBlock, kHeadDim, kIndexerBwdThreads>(
        k_tiles + stage * kBlock * kPitch, k_rows, p.forward.k_token_stride, block * kBlock,
        visible_end, thread);
  };
  for (int h = thread; h < layout.heads_pad; h += kIndexerBwdThreads) {
    weights[h] = h < p.forward.heads
                     ? p.forward.weights[(b * p.forward.seqlen_q + t) * p.forward.heads + h]
                     : 0.f;
  }
  if (blocks > 0) {
    for (int r0 = 0; r0 < layout.heads_pad; r0 += 16) {
      load_tile_async<16, kHeadDim, kIndexerBwdThreads>(q_tile + r0 * kPitch, q_rows,
                                                        p.forward.q_head_stride, r0,
                                                        p.forward.heads, thread);
    }
    load_keys(0, 0);
    cp_async_commit();
  }
  const bool owns_tile = warp < layout.heads_pad / 16;
  const int row0 = warp * 16;
  float dq[kHeadDim / 8][4] = {};
  float dw[2] = {0.f, 0.f};  // rows lane / 4 and lane / 4 + 8 of the tile
  for (int64_t block = 0; block < blocks; ++block) {
    if (thread < kBlock) {
      const int64_t key = block * kBlock + thread;
      upstream[thread] = key < visible_end ? p.forward.scale * dlogits[key] : 0.f;
    }
    const int stage = cp_async_double_buffer_step(block, 0, blocks, load_keys);
    const T* k_tile = k_tiles + stage * kBlock * kPitch;
    if (owns_tile) {
      float z[kBlock / 8][4] = {};
      mma_a_bt<kDType, kHeadDim, kBlock>(z, q_tile, row0, k_tile, lane);
      const float w[2] = {weights[row0 + lane / 4], weights[row0 + lane / 4 + 8]};
#pragma unroll
      for (int n = 0; n < kBlock / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float g = upstream[n * 8 + (lane % 4) * 2 + (e & 1)];
          const bool active = z[n][e] > 0.f;
          dw[e / 2] += active ? g * z[n][e] : 0.f;
          z[n][e] = active ? g * w[e / 2] : 0.f;
        }
      }
      uint32_t dz[kBlock / 16][4];
      accumulators_to_a_fragments<kDType, kBlock>(z, dz);
      mma_a_regs_b<kDType, kBlock, kHeadDim, kPitch>(dq, dz, k_tile, 0, lane);
    }
    __syncthreads();  // the stage and `upstream` are reused by the next block
  }
  if (!owns_tile) return;
  T* dq_out = static_cast<T*>(p.dq) + (b * p.forward.seqlen_q + t) * p.forward.heads * kHeadDim;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int h = row0 + lane / 4 + 8 * half;
    const float dw_row = quad_sum(dw[half]);
    if (h < p.forward.heads) {
      store_fragment_row<kDType, kHeadDim / 8>(dq_out + h * kHeadDim, dq, half, 1.f, lane);
      if (lane % 4 == 0) p.dweights[(b * p.forward.seqlen_q + t) * p.forward.heads + h] = dw_row;
    }
  }
}

// Dynamic shared memory of indexer_bwd_dk_kernel: two Q stages, the K block, two stages of the
// token's weights and of g.
DEEPSEEK_ATTN_HOST_DEVICE int indexer_bwd_dk_smem_bytes(const IndexerSmemLayout& layout) {
  return (2 * layout.heads_pad + kIndexerBlockKeys) * layout.pitch * 2 +
         2 * (layout.heads_pad + kIndexerBlockKeys) * 4;
}

// dk: a CTA per (block of 64 keys, sequence); its four warps own 16 keys each (dk 16 x d in
// registers) and stream the tokens that see the block, one Q tile per token, 16 heads at a time:
// zᵀ = K·Qᵀ, then dk += dzᵀ·Q.
template <DType kDType, int kHeadDim>
__global__ void __launch_bounds__(kIndexerThreads)
    indexer_bwd_dk_kernel(const IndexerBwdParams p, const IndexerSmemLayout layout) {
  using T = Element<kDType>;
  constexpr int kPitch = TilePitch<kHeadDim>::value;
  constexpr int kBlock = kIndexerBlockKeys;
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(char, smem);
  const IndexerParams& f = p.forward;
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int64_t b = blockIdx.y, key0 = int64_t(blockIdx.x) * kBlock;
  // Layout: two Q stages (heads_pad rows each), the K block, then two stages of weights and g.
  T* q_tiles = reinterpret_cast<T*>(smem);
  T* k_tile = q_tiles + 2 * layout.heads_pad * kPitch;
  float* weights = reinterpret_cast<float*>(k_tile + kBlock * kPitch);
  float* upstream = weights + 2 * layout.heads_pad;
  int64_t keys = f.seqlen_k;
  if (f.seqlens_k != nullptr) {
    const int64_t given = f.seqlens_k[b];
    keys = given < 0 ? 0 : (given > f.seqlen_k ? f.seqlen_k : given);
  }
  // Bottom-right causal: token t sees key s iff s < t + keys - Sq + 1.
  int64_t first_token = f.causal ? key0 - (keys - f.seqlen_q) : 0;
  first_token = first_token < 0 ? 0 : first_token;
  const int64_t tokens = key0 < keys ? f.seqlen_q - first_token : 0;
  const T* q_base = static_cast<const T*>(f.q) + b * f.q_batch_stride;
  const auto load_token = [&](int stage, int64_t step) {
    const int64_t t = first_token + step;
    for (int r0 = 0; r0 < layout.heads_pad; r0 += 16) {
      load_tile_async<16, kHeadDim, kIndexerThreads>(
          q_tiles + (stage * layout.heads_pad + r0) * kPitch, q_base + t * f.q_token_stride,
          f.q_head_stride, r0, f.heads, thread);
    }
    for (int h = thread; h < layout.heads_pad; h += kIndexerThreads) {
      weights[stage * layout.heads_pad + h] =
          h < f.heads ? f.weights[(b * f.seqlen_q + t) * f.heads + h] : 0.f;
    }
    if (thread < kBlock) {
      const int64_t key = key0 + thread;
      const bool visible = key < indexer_visible_end(t, f.seqlen_q, keys, f.causal);
      upstream[stage * kBlock + thread] =
          visible ? f.scale * p.dlogits[(b * f.seqlen_q + t) * f.seqlen_k + key] : 0.f;
    }
  };
  if (tokens > 0) {
    load_tile_async<kBlock, kHeadDim, kIndexerThreads>(
        k_tile, static_cast<const T*>(f.k) + b * f.k_batch_stride, f.k_token_stride, key0, keys,
        thread);
    load_token(0, 0);
    cp_async_commit();
  }
  float dk[kHeadDim / 8][4] = {};
  const int row0 = warp * 16;  // this warp's keys within the block
  for (int64_t step = 0; step < tokens; ++step) {
    const int stage = cp_async_double_buffer_step(step, 0, tokens, load_token);
    const T* q_tile = q_tiles + stage * layout.heads_pad * kPitch;
    const float g[2] = {upstream[stage * kBlock + row0 + lane / 4],
                        upstream[stage * kBlock + row0 + lane / 4 + 8]};
    for (int tile = 0; tile < layout.heads_pad / 16; ++tile) {
      float z[2][4] = {};  // zᵀ: 16 keys x 16 heads
      mma_a_bt<kDType, kHeadDim, 16>(z, k_tile, row0, q_tile + tile * 16 * kPitch, lane);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float w = weights[stage * layout.heads_pad + tile * 16 + n * 8 + (lane % 4) * 2 +
                                  (e & 1)];
          z[n][e] = z[n][e] > 0.f ? g[e / 2] * w : 0.f;
        }
      }
      uint32_t dz[1][4];
      accumulators_to_a_fragments<kDType, 16>(z, dz);
      mma_a_regs_b<kDType, 16, kHeadDim, kPitch>(dk, dz, q_tile + tile * 16 * kPitch, 0, lane);
    }
    __syncthreads();  // this stage is refilled two steps on
  }
  T* dk_out = static_cast<T*>(p.dk) + (b * f.seqlen_k) * kHeadDim;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t key = key0 + row0 + lane / 4 + 8 * half;
    if (key < f.seqlen_k) {
      store_fragment_row<kDType, kHeadDim / 8>(dk_out + key * kHeadDim, dk, half, 1.f, lane);
    }
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
