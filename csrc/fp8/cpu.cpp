// CPU implementation of the FP8 ops (SPEC §2): the 1x128 and 128x128 quantisers (vectorised,
// bit-exact with deepseek_attn/reference/fp8.py) and the block-scaled "NT" GEMM, on bf16
// micro-kernel tiles (cpu_gemm.cpp) where the CPU has native bf16, else by dequantised fp32 panels.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "common/cpu_tiles.h"
#include "common/dtype_aten.h"
#include "common/fp8.h"
#include "fp8/checks.h"
#include "fp8/cpu_gemm.h"

namespace deepseek_attn {
namespace {

using c10::Float8_e4m3fn;

// The quantisers' input dtypes (the checks admit only these).
#define DEEPSEEK_ATTN_DISPATCH_QUANTIZER_INPUT(type, name, ...)           \
  AT_DISPATCH_SWITCH(type, name, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

// |x| maximum of n values, NaN if any is NaN: on the magnitude bits, where every NaN orders above
// inf and finite values keep their order, an integer max is the NaN-propagating float max (and
// vectorises, which a float max with NaN checks does not).
template <typename T, typename Bits>
DEEPSEEK_ATTN_ALWAYS_INLINE float absmax_impl(const T* x, int64_t n, Bits magnitude_mask) {
  Bits largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bits &= magnitude_mask;
    largest = bits > largest ? bits : largest;
  }
  T magnitude;
  std::memcpy(&magnitude, &largest, sizeof(magnitude));
  return float(magnitude);
}

DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
float absmax(const float* x, int64_t n) {
  return absmax_impl(x, n, uint32_t(0x7fffffffu));
}
DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
float absmax(const c10::BFloat16* x, int64_t n) {
  return absmax_impl(x, n, uint16_t(0x7fffu));
}
DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
float absmax(const c10::Half* x, int64_t n) {
  return absmax_impl(x, n, uint16_t(0x7fffu));
}

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE void quantize_impl(const T* x, int64_t n, float scale, uint8_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = e4m3_bits_saturating(float(x[i]) / scale);  // IEEE division, as the reference
  }
}

DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
void quantize(const float* x, int64_t n, float scale, uint8_t* out) {
  quantize_impl(x, n, scale, out);
}
DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
void quantize(const c10::BFloat16* x, int64_t n, float scale, uint8_t* out) {
  quantize_impl(x, n, scale, out);
}
DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
void quantize(const c10::Half* x, int64_t n, float scale, uint8_t* out) {
  quantize_impl(x, n, scale, out);
}

template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t cols, int64_t group_size, bool ue8m0,
                   uint8_t* payload, float* scales) {
  const int64_t groups = (cols + group_size - 1) / group_size;
  constexpr int64_t kElementsPerTask = 1 << 15;  // amortises the scheduling of a task
  at::parallel_for(0, rows, std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(cols, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t group = 0; group < groups; ++group) {
        const int64_t col0 = group * group_size;
        const int64_t width = std::min(cols - col0, group_size);
        const int64_t offset = row * cols + col0;
        const float scale = fp8_scale_from_amax(absmax(x + offset, width), ue8m0);
        scales[row * groups + group] = scale;
        quantize(x + offset, width, scale, payload + offset);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_act_cpu(const at::Tensor& x_in, int64_t group_size,
                                                    bool ue8m0) {
  check_quantize_act_inputs(x_in, group_size);
  const at::Tensor x = x_in.contiguous();
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  const int64_t groups = (cols + group_size - 1) / group_size;
  at::Tensor payload = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end());
  scale_shape.back() = groups;
  at::Tensor scales = at::empty(scale_shape, x.options().dtype(at::kFloat));
  DEEPSEEK_ATTN_DISPATCH_QUANTIZER_INPUT(x.scalar_type(), "quantize_act", [&] {
    quantize_rows(x.data_ptr<scalar_t>(), rows, cols, group_size, ue8m0,
                  reinterpret_cast<uint8_t*>(payload.data_ptr<Float8_e4m3fn>()),
                  scales.data_ptr<float>());
  });
  return {payload, scales};
}

template <typename T>
void quantize_blocks(const T* w, int64_t rows, int64_t cols, int64_t block, bool ue8m0,
                     uint8_t* payload, float* scales) {
  const int64_t block_rows = (rows + block - 1) / block, block_cols = (cols + block - 1) / block;
  at::parallel_for(0, block_rows * block_cols, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = (task / block_cols) * block, c0 = (task % block_cols) * block;
      const int64_t r1 = std::min(rows, r0 + block), width = std::min(cols - c0, block);
      float amax = 0.f;
      for (int64_t r = r0; r < r1; ++r) {
        amax = nan_propagating_absmax(amax, absmax(w + r * cols + c0, width));
      }
      const float scale = fp8_scale_from_amax(amax, ue8m0);
      scales[task] = scale;
      for (int64_t r = r0; r < r1; ++r) {
        quantize(w + r * cols + c0, width, scale, payload + r * cols + c0);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_cpu(const at::Tensor& w_in, int64_t block_size,
                                                       bool ue8m0) {
  check_quantize_weight_inputs(w_in, block_size);
  const at::Tensor w = w_in.contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  at::Tensor payload = at::empty(w.sizes(), w.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor scales = at::empty({(rows + block_size - 1) / block_size,
                                 (cols + block_size - 1) / block_size},
                                w.options().dtype(at::kFloat));
  DEEPSEEK_ATTN_DISPATCH_QUANTIZER_INPUT(w.scalar_type(), "quantize_weight", [&] {
    quantize_blocks(w.data_ptr<scalar_t>(), rows, cols, block_size, ue8m0,
                    reinterpret_cast<uint8_t*>(payload.data_ptr<Float8_e4m3fn>()),
                    scales.data_ptr<float>());
  });
  return {payload, scales};
}

// One fp32 scale per element from one scale per 128-wide K block.
at::Tensor scales_per_element(const at::Tensor& scales, int64_t k) {
  return scales.repeat_interleave(128, /*dim=*/1).narrow(1, 0, k);
}

// SPEC §2 C = Σ_kb sa·sb·(A_kb B_kbᵀ), literally: one fp32 GEMM per 128-wide K block, promoted
// with its scales. Used when a scale is inf or NaN, where pre-scaling would turn 0·inf into NaN.
at::Tensor fp8_gemm_promoted_per_block(const at::Tensor& a, const at::Tensor& a_scales,
                                       const at::Tensor& b, const at::Tensor& b_row_scales,
                                       const Fp8GemmShape& shape) {
  at::Tensor acc = at::zeros({shape.m, shape.n}, a.options().dtype(at::kFloat));
  for (int64_t kb = 0; kb < shape.k_blocks; ++kb) {
    const int64_t k0 = kb * 128, width = std::min<int64_t>(128, shape.k - k0);
    const at::Tensor partial =
        at::mm(a.narrow(1, k0, width).to(at::kFloat), b.narrow(1, k0, width).to(at::kFloat).t());
    acc += partial * a_scales.narrow(1, kb, 1) * b_row_scales.narrow(1, kb, 1).t();
  }
  return acc;
}

// The fallback where bf16 tiles cannot run: with finite scales, scaling the operands before one
// fp32 GEMM gives the same result as the per-block promotion up to fp32 rounding and summation
// order, at the speed of a plain GEMM. B is dequantised one 128-row panel at a time so memory
// stays O(M·K + 128·K).
void fp8_gemm_by_fp32_panels(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b,
                             const at::Tensor& b_scales, const Fp8GemmShape& shape,
                             at::Tensor& out) {
  // One scale row per B row, whatever the granularity.
  const at::Tensor b_row_scales = shape.b_scaling == Fp8BScaling::kRow
                                      ? b_scales
                                      : b_scales.repeat_interleave(128, 0).narrow(0, 0, shape.n);
  if (!at::isfinite(a_scales).all().item<bool>() || !at::isfinite(b_scales).all().item<bool>()) {
    out.copy_(fp8_gemm_promoted_per_block(a, a_scales, b, b_row_scales, shape));
    return;
  }
  const at::Tensor a_dequantised = a.to(at::kFloat) * scales_per_element(a_scales, shape.k);
  constexpr int64_t kPanel = 128;
  for (int64_t n0 = 0; n0 < shape.n; n0 += kPanel) {
    const int64_t rows = std::min(kPanel, shape.n - n0);
    const at::Tensor b_panel = b.narrow(0, n0, rows).to(at::kFloat) *
                               scales_per_element(b_row_scales.narrow(0, n0, rows), shape.k);
    out.narrow(1, n0, rows).copy_(at::mm(a_dequantised, b_panel.t()));
  }
}

at::Tensor fp8_gemm_cpu(const at::Tensor& a, const at::Tensor& a_scales_in, const at::Tensor& b,
                        const at::Tensor& b_scales_in, at::ScalarType out_dtype) {
  const Fp8GemmShape shape = check_fp8_gemm_inputs(a, a_scales_in, b, b_scales_in, out_dtype);
  at::Tensor out = at::empty({shape.m, shape.n}, a.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  if (shape.k == 0) return out.zero_();
  const at::Tensor a_scales = a_scales_in.contiguous(), b_scales = b_scales_in.contiguous();
  if (!cpu::fp8_gemm_bf16_tiles_available()) {
    fp8_gemm_by_fp32_panels(a, a_scales, b, b_scales, shape, out);
    return out;
  }
  Fp8GemmParams params;
  params.a = reinterpret_cast<const uint8_t*>(a.data_ptr<Float8_e4m3fn>());
  params.b = reinterpret_cast<const uint8_t*>(b.data_ptr<Float8_e4m3fn>());
  params.a_scales = a_scales.data_ptr<float>();
  params.b_scales = b_scales.data_ptr<float>();
  params.out = out.data_ptr();
  params.m = shape.m;
  params.n = shape.n;
  params.k = shape.k;
  params.k_blocks = shape.k_blocks;
  params.b_scaling = shape.b_scaling;
  cpu::fp8_gemm_bf16_tiles(params, dtype_of(out_dtype));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) {
  m.impl("quantize_act", &quantize_act_cpu);
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("fp8_gemm", &fp8_gemm_cpu);
}

}  // namespace deepseek_attn
