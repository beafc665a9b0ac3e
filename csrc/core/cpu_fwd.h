#pragma once
// The CPU back end of the shared attention core: one forward main loop over query tiles, for
// every KV source (dense, paged, latent bf16/FP8) and key selection (window band, token or block
// index lists). flash_attn_fwd's CPU forward is this loop over a dense source and the band.

#include <ATen/core/Tensor.h>

#include <tuple>

#include "core/checks.h"

namespace deepseek_attn {

// (out (B, Sq, Hq, Dv) in q's dtype, lse (B, Hq, Sq) fp32). Checks its inputs.
std::tuple<at::Tensor, at::Tensor> attention_core_fwd_cpu(const CoreFwdInputs& in,
                                                          double softmax_scale, bool causal,
                                                          int64_t window_left, int64_t window_right,
                                                          double softcap);

}  // namespace deepseek_attn
