#pragma once
// The torch-facing half of the MLA ops' launches on a GPU-style device, shared by the CUDA back
// end (cuda.cpp) and the emulated test extension (tests/emulation/): checks, outputs and params.
// The caller guards the device and launches.

#include <ATen/ATen.h>

#include <optional>

#include "common/dtype.h"
#include "mla/params.h"

namespace deepseek_attn {

struct NormRopeCall {
  NormRopeParams params;
  DType type = DType::kBFloat16;
  at::Tensor y, rstd;
  bool needs_launch = false;  // false: no rows, the outputs are final
};

struct NormRopeBwdCall {
  NormRopeBwdParams params;
  DType type = DType::kBFloat16;
  at::Tensor dy, dx, dweight_partials;
  bool needs_launch = false;
};

NormRopeCall prepare_mla_norm_rope(const at::Tensor& x,
                                   const std::optional<at::Tensor>& norm_weight,
                                   const std::optional<at::Tensor>& rope_cos,
                                   const std::optional<at::Tensor>& rope_sin, double eps,
                                   const std::optional<at::Tensor>& cache,
                                   const std::optional<at::Tensor>& cache_slots);
NormRopeBwdCall prepare_mla_norm_rope_bwd(const at::Tensor& dy, const at::Tensor& x,
                                          const std::optional<at::Tensor>& norm_weight,
                                          const at::Tensor& rstd,
                                          const std::optional<at::Tensor>& rope_cos,
                                          const std::optional<at::Tensor>& rope_sin);
// The weight gradient once the backward kernel ran: its partial rows summed, in x's dtype.
at::Tensor finish_mla_norm_rope_bwd(const NormRopeBwdCall& call, const at::Tensor& x);

}  // namespace deepseek_attn
