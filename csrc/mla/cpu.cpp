// CPU implementation of MLA's fused latent epilogue (SPEC §3): RMSNorm, interleaved RoPE and the
// latent-cache write (bf16/fp16/fp32 rows, or SPEC §3 FP8 rows quantised as
// deepseek_attn.mla.pack_latent_fp8 does) in one pass over each row, and its backward.
// Statistics are fp32 (fp64 for fp64 rows); each row is rounded once to x's dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <tuple>

#include "common/fp8.h"
#include "mla/checks.h"

namespace deepseek_attn {
namespace {

using Layout = LatentFp8RowLayout;

// SPEC §3 FP8 row from `values` (576 of them): ue8m0 scales per 128, k_pe in bf16.
void write_fp8_row(const float* values, uint8_t* row) {
  for (int group = 0; group < Layout::kValues / Layout::kGroup; ++group) {
    const float* in = values + group * Layout::kGroup;
    float amax = 0.f;
    for (int c = 0; c < Layout::kGroup; ++c) amax = nan_propagating_absmax(amax, in[c]);
    const float scale = fp8_scale_from_amax(amax, true);
    std::memcpy(row + Layout::kScalesOffset + 4 * group, &scale, sizeof(float));
    for (int c = 0; c < Layout::kGroup; ++c) {
      const c10::Float8_e4m3fn e4m3(fp8_scaled_and_clamped(in[c], scale));
      std::memcpy(row + group * Layout::kGroup + c, &e4m3, 1);
    }
  }
  for (int c = 0; c < Layout::kRopeValues; ++c) {
    const c10::BFloat16 bf16(values[Layout::kValues + c]);
    std::memcpy(row + Layout::kRopeOffset + 2 * c, &bf16, 2);
  }
}

template <typename T>
void norm_rope_rows(const NormRopeParams& p, const at::Tensor& x, const at::Tensor& y,
                    const at::Tensor& rstd, const std::optional<at::Tensor>& norm_weight,
                    const std::optional<at::Tensor>& rope_cos,
                    const std::optional<at::Tensor>& rope_sin,
                    const std::optional<at::Tensor>& cache,
                    const std::optional<at::Tensor>& cache_slots) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const T* in = x.data_ptr<T>();
  T* out = y.data_ptr<T>();
  Acc* row_rstd = rstd.data_ptr<Acc>();
  const T* weight = norm_weight.has_value() ? norm_weight->data_ptr<T>() : nullptr;
  const Acc* cos = rope_cos.has_value() ? rope_cos->data_ptr<Acc>() : nullptr;
  const Acc* sin = rope_sin.has_value() ? rope_sin->data_ptr<Acc>() : nullptr;
  const int64_t* slots = cache_slots.has_value() ? cache_slots->data_ptr<int64_t>() : nullptr;
  const int64_t rope0 = p.dim - 2 * p.rope_pairs;
  at::parallel_for(0, p.tokens * p.groups, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> rounded(p.cache_write == LatentCacheWrite::kFp8 ? p.dim : 0);
    for (int64_t row = begin; row < end; ++row) {
      const T* xr = in + row * p.dim;
      T* yr = out + row * p.dim;
      Acc inv = 1;
      if (p.norm_dim > 0) {
        Acc sum = 0;
        for (int64_t c = 0; c < p.norm_dim; ++c) sum += Acc(xr[c]) * Acc(xr[c]);
        inv = Acc(1) / std::sqrt(sum / Acc(p.norm_dim) + Acc(p.eps));
        for (int64_t c = 0; c < p.norm_dim; ++c) yr[c] = T(Acc(xr[c]) * inv * Acc(weight[c]));
      }
      row_rstd[row] = inv;
      for (int64_t c = p.norm_dim; c < rope0; ++c) yr[c] = xr[c];
      const int64_t token = row / p.groups;
      for (int64_t i = 0; i < p.rope_pairs; ++i) {
        const Acc x0 = Acc(xr[rope0 + 2 * i]), x1 = Acc(xr[rope0 + 2 * i + 1]);
        const Acc c = cos[token * p.rope_pairs + i], s = sin[token * p.rope_pairs + i];
        yr[rope0 + 2 * i] = T(x0 * c - x1 * s);
        yr[rope0 + 2 * i + 1] = T(x0 * s + x1 * c);
      }
      if (p.cache_write == LatentCacheWrite::kNone || slots[token] < 0) continue;
      if (p.cache_write == LatentCacheWrite::kRows) {
        std::memcpy(cache->data_ptr<T>() + slots[token] * p.dim, yr, p.dim * sizeof(T));
      } else {
        for (int64_t c = 0; c < p.dim; ++c) rounded[c] = float(yr[c]);
        write_fp8_row(rounded.data(),
                      static_cast<uint8_t*>(cache->data_ptr()) + slots[token] * Layout::kRowBytes);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> mla_norm_rope_cpu(const at::Tensor& x,
                                                     const std::optional<at::Tensor>& norm_weight,
                                                     const std::optional<at::Tensor>& rope_cos,
                                                     const std::optional<at::Tensor>& rope_sin,
                                                     double eps,
                                                     const std::optional<at::Tensor>& cache,
                                                     const std::optional<at::Tensor>& cache_slots) {
  const NormRopeParams p =
      check_norm_rope_inputs({x, norm_weight, rope_cos, rope_sin, eps, cache, cache_slots});
  if (cache_slots.has_value()) check_cache_slot_values(*cache_slots, p.cache_rows);
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd =
      at::empty({p.tokens, p.groups},
                x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "mla_norm_rope", [&] {
    norm_rope_rows<scalar_t>(p, x, y, rstd, norm_weight, rope_cos, rope_sin, cache, cache_slots);
  });
  return {y, rstd};
}

template <typename T>
void norm_rope_bwd_rows(const NormRopeBwdParams& p, const at::Tensor& dy, const at::Tensor& x,
                        const std::optional<at::Tensor>& norm_weight, const at::Tensor& rstd,
                        const std::optional<at::Tensor>& rope_cos,
                        const std::optional<at::Tensor>& rope_sin, const at::Tensor& dx,
                        const at::Tensor& dweight_partials) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const T* grad = dy.data_ptr<T>();
  const T* in = x.data_ptr<T>();
  T* out = dx.data_ptr<T>();
  const Acc* row_rstd = rstd.data_ptr<Acc>();
  const T* weight = norm_weight.has_value() ? norm_weight->data_ptr<T>() : nullptr;
  const Acc* cos = rope_cos.has_value() ? rope_cos->data_ptr<Acc>() : nullptr;
  const Acc* sin = rope_sin.has_value() ? rope_sin->data_ptr<Acc>() : nullptr;
  const int64_t rows = p.tokens * p.groups, rope0 = p.dim - 2 * p.rope_pairs;
  // One partial weight-gradient row per worker: a fixed split, so the sum is deterministic.
  at::parallel_for(0, p.workers, 1, [&](int64_t worker_begin, int64_t worker_end) {
    for (int64_t worker = worker_begin; worker < worker_end; ++worker) {
      Acc* dweight =
          p.norm_dim > 0 ? dweight_partials.data_ptr<Acc>() + worker * p.norm_dim : nullptr;
      for (int64_t row = rows * worker / p.workers; row < rows * (worker + 1) / p.workers; ++row) {
        const T *gr = grad + row * p.dim, *xr = in + row * p.dim;
        T* dr = out + row * p.dim;
        if (p.norm_dim > 0) {
          const Acc inv = row_rstd[row];
          Acc dot = 0;
          for (int64_t c = 0; c < p.norm_dim; ++c) {
            dot += Acc(gr[c]) * Acc(weight[c]) * Acc(xr[c]) * inv;
          }
          const Acc mean = dot / Acc(p.norm_dim);
          for (int64_t c = 0; c < p.norm_dim; ++c) {
            const Acc normed = Acc(xr[c]) * inv;
            dr[c] = T(inv * (Acc(gr[c]) * Acc(weight[c]) - normed * mean));
            dweight[c] += Acc(gr[c]) * normed;
          }
        }
        for (int64_t c = p.norm_dim; c < rope0; ++c) dr[c] = gr[c];
        const int64_t token = row / p.groups;
        for (int64_t i = 0; i < p.rope_pairs; ++i) {
          const Acc g0 = Acc(gr[rope0 + 2 * i]), g1 = Acc(gr[rope0 + 2 * i + 1]);
          const Acc c = cos[token * p.rope_pairs + i], s = sin[token * p.rope_pairs + i];
          dr[rope0 + 2 * i] = T(g0 * c + g1 * s);
          dr[rope0 + 2 * i + 1] = T(g1 * c - g0 * s);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> mla_norm_rope_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
    const at::Tensor& rstd, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin) {
  NormRopeBwdParams p = check_norm_rope_bwd_inputs(dy, x, norm_weight, rstd, rope_cos, rope_sin);
  const at::Tensor grad = dy.contiguous();
  at::Tensor dx = at::empty_like(x);
  p.workers = std::max<int64_t>(1, std::min<int64_t>(p.tokens * p.groups, 64));
  at::Tensor partials = at::zeros({p.workers, p.norm_dim}, rstd.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "mla_norm_rope_bwd",
                                  [&] {
                                    norm_rope_bwd_rows<scalar_t>(p, grad, x, norm_weight, rstd,
                                                                 rope_cos, rope_sin, dx, partials);
                                  });
  return {dx, partials.sum(0).to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) {
  m.impl("mla_norm_rope", &mla_norm_rope_cpu);
  m.impl("mla_norm_rope_bwd", &mla_norm_rope_bwd_cpu);
}

}  // namespace deepseek_attn
