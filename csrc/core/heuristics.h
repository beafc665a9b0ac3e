#pragma once
// Launch-shape decisions shared by the core's kernels and the attention family: the key-block
// width of each head-dim pair and the split-KV count. Plain C++ (no CUDA headers).

#include <algorithm>
#include <cstdint>

namespace deepseek_attn {
namespace cuda {

// Key-block width of the forward (and dQ) kernels for these head dims; wide heads take 32 keys
// to keep the S/P fragments and the K/V buffers small. The split-KV heuristic needs it too.
constexpr int fwd_block_n(int dim_qk, int dim_v) { return dim_qk > 128 || dim_v > 128 ? 32 : 64; }

// The core forward's tile: query rows and key-block width per KV policy (`latent`: 576-wide
// rows, a smaller tile keeps Q and both K stages within sm89's 99 KiB).
constexpr int core_block_m(bool latent) { return latent ? 32 : 64; }
constexpr int core_block_n(bool latent, int dim_qk, int dim_v) {
  return latent ? 16 : fwd_block_n(dim_qk, dim_v);
}

// Split the keys across CTAs when `ctas` alone cannot fill the GPU: about two CTAs per SM, at
// least two key blocks per split, the grid's z dimension (batch x splits) within its limit.
inline int choose_split_count(int64_t ctas, int64_t key_blocks, int64_t batch, int sm_count) {
  if (ctas >= sm_count || key_blocks < 4) return 1;
  int64_t splits = (2 * sm_count + ctas - 1) / ctas;
  splits = std::min<int64_t>({splits, key_blocks / 2, 64, 65535 / batch});
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

// Parts of the balanced split schedule (decode over a cache): about two CTAs per SM across the
// `ctas` row tiles, no more parts than key blocks, 1 when the row tiles fill the GPU already.
inline int choose_balanced_parts(int64_t ctas, int64_t total_key_blocks, int sm_count) {
  if (ctas >= sm_count) return 1;
  const int64_t parts = std::min<int64_t>({(2 * sm_count + ctas - 1) / ctas, total_key_blocks,
                                           65535});
  return static_cast<int>(std::max<int64_t>(parts, 1));
}

}  // namespace cuda
}  // namespace deepseek_attn
