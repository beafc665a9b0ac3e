#pragma once
// Index math of SPEC §0 masking, shared by host and device code (no torch headers).
// Query row i may see key j iff  i + off - window_left <= j <= i + off + window_right,
// with off = Sk - Sq (bottom-right alignment) and a negative window meaning unbounded.

#include <cstdint>

#if defined(__CUDACC__)
#define DEEPSEEK_ATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DEEPSEEK_ATTN_HOST_DEVICE inline
#endif

namespace deepseek_attn {

struct KeyWindow {
  int64_t seqlen_q;
  int64_t seqlen_k;
  int64_t window_left;   // -1: unbounded
  int64_t window_right;  // -1: unbounded; causal is window_right == 0

  DEEPSEEK_ATTN_HOST_DEVICE int64_t offset() const { return seqlen_k - seqlen_q; }

  // First visible key of row i (may exceed last_key when the row sees nothing).
  DEEPSEEK_ATTN_HOST_DEVICE int64_t first_key(int64_t row) const {
    if (window_left < 0) return 0;
    const int64_t lo = row + offset() - window_left;
    return lo < 0 ? 0 : lo;
  }

  // One past the last visible key of row i.
  DEEPSEEK_ATTN_HOST_DEVICE int64_t end_key(int64_t row) const {
    if (window_right < 0) return seqlen_k;
    const int64_t hi = row + offset() + window_right + 1;
    return hi < 0 ? 0 : (hi > seqlen_k ? seqlen_k : hi);
  }

  DEEPSEEK_ATTN_HOST_DEVICE bool visible(int64_t row, int64_t key) const {
    return key >= first_key(row) && key < end_key(row);
  }

  // Rows [row_begin, row_end) that see at least one key in [key_begin, key_end).
  // Both bounds are monotone in the row, so the visible rows form one interval.
  DEEPSEEK_ATTN_HOST_DEVICE int64_t first_row_seeing(int64_t key_begin) const {
    if (window_right < 0) return 0;
    const int64_t r = key_begin - offset() - window_right;  // end_key(r) > key_begin
    return r < 0 ? 0 : r;
  }
  DEEPSEEK_ATTN_HOST_DEVICE int64_t end_row_seeing(int64_t key_end) const {
    if (window_left < 0) return seqlen_q;
    const int64_t r = key_end - 1 - offset() + window_left + 1;  // first_key(r) <= key_end - 1
    return r < 0 ? 0 : (r > seqlen_q ? seqlen_q : r);
  }

  // True when every (row, key) of the tile is visible, so no per-element mask is needed.
  DEEPSEEK_ATTN_HOST_DEVICE bool tile_fully_visible(int64_t row_begin, int64_t row_end,
                                                    int64_t key_begin, int64_t key_end) const {
    return first_key(row_end - 1) <= key_begin && end_key(row_begin) >= key_end;
  }
};

}  // namespace deepseek_attn
