// Checks, outputs and params of the MLA ops on a GPU-style device (CUDA and the emulator).

#include "mla/device_call.h"

#include "common/checks.h"
#include "common/dtype_aten.h"
#include "mla/checks.h"

namespace deepseek_attn {
namespace {

// At most this many backward warps, each with its own partial weight-gradient row.
constexpr int64_t kMaxBwdWorkers = 1024;

}  // namespace

NormRopeCall prepare_mla_norm_rope(const at::Tensor& x,
                                   const std::optional<at::Tensor>& norm_weight,
                                   const std::optional<at::Tensor>& rope_cos,
                                   const std::optional<at::Tensor>& rope_sin, double eps,
                                   const std::optional<at::Tensor>& cache,
                                   const std::optional<at::Tensor>& cache_slots) {
  NormRopeCall call;
  NormRopeParams& p = call.params;
  p = check_norm_rope_inputs({x, norm_weight, rope_cos, rope_sin, eps, cache, cache_slots});
  // A debug switch: out-of-range slots are otherwise skipped by the kernel.
  if (cache_slots.has_value() && index_value_checks_requested()) {
    check_cache_slot_values(*cache_slots, p.cache_rows);
  }
  call.type = dtype_of(x.scalar_type());
  call.y = at::empty_like(x);
  call.rstd = at::empty({p.tokens, p.groups}, x.options().dtype(at::kFloat));
  if (x.numel() == 0) return call;
  p.x = x.data_ptr();
  p.y = call.y.data_ptr();
  p.rstd = call.rstd.data_ptr<float>();
  if (norm_weight.has_value()) p.norm_weight = norm_weight->data_ptr();
  if (rope_cos.has_value()) {
    p.cos = rope_cos->data_ptr<float>();
    p.sin = rope_sin->data_ptr<float>();
  }
  if (cache.has_value()) {
    // The kernel stores an FP8 row's bytes four at a time.
    DEEPSEEK_ATTN_CHECK(p.cache_write != LatentCacheWrite::kFp8 ||
                            reinterpret_cast<uintptr_t>(cache->data_ptr()) % 16 == 0,
                        "an FP8 cache must start on a 16-byte boundary (got a view at offset ",
                        cache->storage_offset(), ")");
    p.cache = cache->data_ptr();
    p.slots = cache_slots->data_ptr<int64_t>();
  }
  call.needs_launch = true;
  return call;
}

NormRopeBwdCall prepare_mla_norm_rope_bwd(const at::Tensor& dy, const at::Tensor& x,
                                          const std::optional<at::Tensor>& norm_weight,
                                          const at::Tensor& rstd,
                                          const std::optional<at::Tensor>& rope_cos,
                                          const std::optional<at::Tensor>& rope_sin) {
  NormRopeBwdCall call;
  NormRopeBwdParams& p = call.params;
  p = check_norm_rope_bwd_inputs(dy, x, norm_weight, rstd, rope_cos, rope_sin);
  call.type = dtype_of(x.scalar_type());
  call.dy = dy.contiguous();
  call.dx = at::empty_like(x);
  p.workers = std::min(p.tokens * p.groups, kMaxBwdWorkers);
  call.dweight_partials = at::zeros({p.workers, p.norm_dim}, x.options().dtype(at::kFloat));
  if (x.numel() == 0) return call;
  p.dy = call.dy.data_ptr();
  p.x = x.data_ptr();
  p.rstd = rstd.data_ptr<float>();
  p.dx = call.dx.data_ptr();
  if (norm_weight.has_value()) {
    p.norm_weight = norm_weight->data_ptr();
    p.dweight_partials = call.dweight_partials.data_ptr<float>();
  }
  if (rope_cos.has_value()) {
    p.cos = rope_cos->data_ptr<float>();
    p.sin = rope_sin->data_ptr<float>();
  }
  call.needs_launch = true;
  return call;
}

at::Tensor finish_mla_norm_rope_bwd(const NormRopeBwdCall& call, const at::Tensor& x) {
  return call.dweight_partials.sum(0).to(x.scalar_type());
}

}  // namespace deepseek_attn
