#pragma once
// The online softmax of SPEC §1 on mma.sync C fragments (rows `group` and `group + 8` of a warp's
// 16), shared by every sm80 forward main loop and the Hopper consumer warpgroups.

#include "common/cuda_mma.cuh"
#include "common/online_softmax.h"

namespace deepseek_attn {
namespace cuda {

// Log2-domain logits of one warp's 16 x (8·kAccN) score fragment (scaled, soft-capped); with
// `needs_mask`, -inf wherever visible(half, column) is false (half 0: the fragment row `group`,
// 1: `group + 8`; column: within the tile).
template <int kAccN, class Visible>
__device__ __forceinline__ void scores_to_logits(float (&scores)[kAccN][4], float softmax_scale,
                                                 float softcap, bool needs_mask, int lane,
                                                 const Visible& visible) {
  const float scale_log2 = softmax_scale * float(kLog2e);
  const float cap_inverse = softcap > 0.f ? softmax_scale / softcap : 0.f;
  const float cap_log2 = softcap * float(kLog2e);
#pragma unroll
  for (int n = 0; n < kAccN; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float s = scores[n][e];
      s = softcap > 0.f ? cap_log2 * tanhf(s * cap_inverse) : s * scale_log2;
      if (needs_mask && !visible(e >= 2 ? 1 : 0, n * 8 + (lane % 4) * 2 + (e & 1))) s = -INFINITY;
      scores[n][e] = s;
    }
  }
}

// One online-softmax step on a warp's fragment (rows `group` and `group + 8`): folds the tile's
// row maxima into `rows`, turns the logits into probabilities and rescales the output.
template <int kAccN, int kAccV>
__device__ __forceinline__ void online_softmax_step(float (&scores)[kAccN][4],
                                                    OnlineSoftmaxRow<float> (&rows)[2],
                                                    float (&partial_sum)[2],
                                                    float (&out_acc)[kAccV][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float block_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < kAccN; ++n) {
      block_max = fmaxf(block_max, fmaxf(scores[n][2 * r], scores[n][2 * r + 1]));
    }
    const float rescale = rows[r].update_max(quad_max(block_max));
    // A row that has seen only masked keys keeps max -inf: use 0 so exp2 gives exact zeros.
    const float shift = rows[r].max_log2 == -INFINITY ? 0.f : rows[r].max_log2;
    partial_sum[r] *= rescale;
#pragma unroll
    for (int n = 0; n < kAccN; ++n) {
      scores[n][2 * r] = exp2f(scores[n][2 * r] - shift);
      scores[n][2 * r + 1] = exp2f(scores[n][2 * r + 1] - shift);
      partial_sum[r] += scores[n][2 * r] + scores[n][2 * r + 1];
    }
#pragma unroll
    for (int d = 0; d < kAccV; ++d) {
      out_acc[d][2 * r] *= rescale;
      out_acc[d][2 * r + 1] *= rescale;
    }
  }
}

// End of the key loop: row sums across the quad, natural-log LSE, output divided by the sum
// (rows that saw no key keep output 0 and get lse -inf).
template <int kAccV>
__device__ __forceinline__ void finish_rows(OnlineSoftmaxRow<float> (&rows)[2],
                                            const float (&partial_sum)[2],
                                            float (&out_acc)[kAccV][4], float (&lse)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    rows[r].sum = quad_sum(partial_sum[r]);
    lse[r] = rows[r].lse();
    const float inverse = rows[r].sum > 0.f ? 1.f / rows[r].sum : 0.f;
#pragma unroll
    for (int d = 0; d < kAccV; ++d) {
      out_acc[d][2 * r] *= inverse;
      out_acc[d][2 * r + 1] *= inverse;
    }
  }
}

}  // namespace cuda
}  // namespace deepseek_attn
