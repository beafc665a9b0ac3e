#pragma once
// The split-KV combine of every forward (flash attention and the core): Params is any params
// struct with the shape fields, out, out_strides and lse (AttentionFwdParams, CoreFwdParams).

#include <cstdint>

#include "common/attention_shape.h"
#include "common/element.cuh"

namespace deepseek_attn {
namespace cuda {

// Merges the partials of one (batch, head, row) — slots first..last, at partial rows
// partial_row(slot) — into out and lse (SPEC §0 LSE merge); no slot gives 0 and -inf.
template <DType kDType, class Params, class PartialRow>
__device__ __forceinline__ void combine_partial_rows(const Params& p, const SplitKvParams& split,
                                                     int64_t flat_row, int64_t first,
                                                     int64_t last, const PartialRow& partial_row) {
  using T = Element<kDType>;
  float max_lse = -INFINITY;
  for (int64_t s = first; s <= last; ++s) {
    max_lse = fmaxf(max_lse, split.partial_lse[partial_row(s)]);
  }
  float total = 0.f;
  if (max_lse != -INFINITY) {
    for (int64_t s = first; s <= last; ++s) total += expf(split.partial_lse[partial_row(s)] - max_lse);
  }
  const float lse = total > 0.f ? max_lse + logf(total) : -INFINITY;

  const int64_t row = flat_row % p.seqlen_q;
  const int64_t head = (flat_row / p.seqlen_q) % p.heads_q;
  const int64_t batch = flat_row / (p.seqlen_q * p.heads_q);
  T* out = static_cast<T*>(p.out) + batch * p.out_strides.batch + head * p.out_strides.head +
           row * p.out_strides.row;
  for (int64_t d = threadIdx.x; d < p.head_dim_v; d += blockDim.x) {
    float value = 0.f;
    if (lse != -INFINITY) {
      for (int64_t s = first; s <= last; ++s) {
        const int64_t partial = partial_row(s);
        value += expf(split.partial_lse[partial] - lse) * split.partial_out[partial * p.head_dim_v + d];
      }
    }
    out[d] = T(value);
  }
  if (threadIdx.x == 0) p.lse[flat_row] = lse;
}

// One block per (batch, head, row): merges the num_splits partials of the uniform split.
template <DType kDType, class Params>
__global__ void split_kv_combine_kernel(const Params p, const SplitKvParams split) {
  const int64_t flat_row = blockIdx.x;  // (batch * Hq + head) * Sq + row
  const int64_t rows_per_split = p.batch * p.heads_q * p.seqlen_q;
  combine_partial_rows<kDType>(p, split, flat_row, 0, split.num_splits - 1,
                               [&](int64_t s) { return s * rows_per_split + flat_row; });
}

}  // namespace cuda
}  // namespace deepseek_attn
