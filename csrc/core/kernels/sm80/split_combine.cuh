#pragma once
// The split-KV combine of every forward (flash attention and the core): Params is any params
// struct with the shape fields, out, out_strides and lse (AttentionFwdParams, CoreFwdParams).

#include <cstdint>

#include "common/attention_shape.h"
#include "common/element.cuh"

namespace deepseek_attn {
namespace cuda {

// Merges the split partials of one (batch, head, row) per block (SPEC §0 LSE merge).
template <DType kDType, class Params>
__global__ void split_kv_combine_kernel(const Params p, const SplitKvParams split) {
  using T = Element<kDType>;
  const int64_t flat_row = blockIdx.x;  // (batch * Hq + head) * Sq + row
  const int64_t rows_per_split = p.batch * p.heads_q * p.seqlen_q;
  float max_lse = -INFINITY;
  for (int s = 0; s < split.num_splits; ++s) {
    max_lse = fmaxf(max_lse, split.partial_lse[s * rows_per_split + flat_row]);
  }
  float total = 0.f;
  if (max_lse != -INFINITY) {
    for (int s = 0; s < split.num_splits; ++s) {
      total += expf(split.partial_lse[s * rows_per_split + flat_row] - max_lse);
    }
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
      for (int s = 0; s < split.num_splits; ++s) {
        const float weight = expf(split.partial_lse[s * rows_per_split + flat_row] - lse);
        value += weight * split.partial_out[(s * rows_per_split + flat_row) * p.head_dim_v + d];
      }
    }
    out[d] = T(value);
  }
  if (threadIdx.x == 0) p.lse[flat_row] = lse;
}

}  // namespace cuda
}  // namespace deepseek_attn
