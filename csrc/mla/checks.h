#pragma once
// Input checks of MLA's fused latent epilogue (mla_norm_rope and its backward), shared by the CPU
// and CUDA implementations; they fill the sizes and flags of the params, never the pointers.

#include <ATen/core/Tensor.h>

#include <optional>

#include "mla/params.h"

namespace deepseek_attn {

struct NormRopeInputs {
  const at::Tensor& x;
  const std::optional<at::Tensor>& norm_weight;
  const std::optional<at::Tensor>& rope_cos;
  const std::optional<at::Tensor>& rope_sin;
  double eps;
  const std::optional<at::Tensor>& cache;
  const std::optional<at::Tensor>& cache_slots;
};

NormRopeParams check_norm_rope_inputs(const NormRopeInputs& in);
NormRopeBwdParams check_norm_rope_bwd_inputs(const at::Tensor& dy, const at::Tensor& x,
                                             const std::optional<at::Tensor>& norm_weight,
                                             const at::Tensor& rstd,
                                             const std::optional<at::Tensor>& rope_cos,
                                             const std::optional<at::Tensor>& rope_sin);
// Every slot is -1 (skipped) or a row of the cache (SPEC §0): always on CPU; on CUDA with
// DEEPSEEK_ATTN_CHECK_INDICES=1 (it synchronises), else out-of-range slots are skipped.
void check_cache_slot_values(const at::Tensor& cache_slots, int64_t cache_rows);

}  // namespace deepseek_attn
