// CPU implementation of the FP8 ops (SPEC §2): the 1x128 and 128x128 quantisers, bit-exact with
// deepseek_attn/reference/fp8.py, and the block-scaled "NT" GEMM by dequantised fp32 panels.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "common/fp8.h"
#include "fp8/checks.h"

namespace deepseek_attn {
namespace {

using c10::Float8_e4m3fn;

template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t cols, int64_t group_size, bool ue8m0,
                   Float8_e4m3fn* payload, float* scales) {
  const int64_t groups = (cols + group_size - 1) / group_size;
  at::parallel_for(0, rows * groups, 256, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / groups, group = task % groups;
      const int64_t col0 = group * group_size;
      const int64_t col1 = std::min(cols, col0 + group_size);
      const T* in = x + row * cols;
      float amax = 0.f;
      for (int64_t c = col0; c < col1; ++c) amax = nan_propagating_absmax(amax, float(in[c]));
      const float scale = fp8_scale_from_amax(amax, ue8m0);
      scales[task] = scale;
      for (int64_t c = col0; c < col1; ++c) {
        payload[row * cols + c] = Float8_e4m3fn(fp8_scaled_and_clamped(float(in[c]), scale));
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "quantize_act", [&] {
    quantize_rows(x.data_ptr<scalar_t>(), rows, cols, group_size, ue8m0,
                  payload.data_ptr<Float8_e4m3fn>(), scales.data_ptr<float>());
  });
  return {payload, scales};
}

template <typename T>
void quantize_blocks(const T* w, int64_t rows, int64_t cols, int64_t block, bool ue8m0,
                     Float8_e4m3fn* payload, float* scales) {
  const int64_t block_rows = (rows + block - 1) / block, block_cols = (cols + block - 1) / block;
  at::parallel_for(0, block_rows * block_cols, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = (task / block_cols) * block, c0 = (task % block_cols) * block;
      const int64_t r1 = std::min(rows, r0 + block), c1 = std::min(cols, c0 + block);
      float amax = 0.f;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) amax = nan_propagating_absmax(amax, float(w[r * cols + c]));
      }
      const float scale = fp8_scale_from_amax(amax, ue8m0);
      scales[task] = scale;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          payload[r * cols + c] =
              Float8_e4m3fn(fp8_scaled_and_clamped(float(w[r * cols + c]), scale));
        }
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "quantize_weight", [&] {
    quantize_blocks(w.data_ptr<scalar_t>(), rows, cols, block_size, ue8m0,
                    payload.data_ptr<Float8_e4m3fn>(), scales.data_ptr<float>());
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

// With finite scales, scaling the operands before one fp32 GEMM gives the same result as the
// per-block promotion up to fp32 rounding and summation order, at the speed of a plain GEMM.
// B is dequantised one 128-row panel at a time so memory stays O(M·K + 128·K).
at::Tensor fp8_gemm_cpu(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b,
                        const at::Tensor& b_scales, at::ScalarType out_dtype) {
  const Fp8GemmShape shape = check_fp8_gemm_inputs(a, a_scales, b, b_scales, out_dtype);
  at::Tensor out = at::empty({shape.m, shape.n}, a.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  if (shape.k == 0) return out.zero_();
  // One scale row per B row, whatever the granularity.
  const at::Tensor b_row_scales = shape.b_scaling == Fp8BScaling::kRow
                                      ? b_scales
                                      : b_scales.repeat_interleave(128, 0).narrow(0, 0, shape.n);
  if (!at::isfinite(a_scales).all().item<bool>() || !at::isfinite(b_scales).all().item<bool>()) {
    return out.copy_(fp8_gemm_promoted_per_block(a, a_scales, b, b_row_scales, shape));
  }
  const at::Tensor a_dequantised = a.to(at::kFloat) * scales_per_element(a_scales, shape.k);
  constexpr int64_t kPanel = 128;
  for (int64_t n0 = 0; n0 < shape.n; n0 += kPanel) {
    const int64_t rows = std::min(kPanel, shape.n - n0);
    const at::Tensor b_panel = b.narrow(0, n0, rows).to(at::kFloat) *
                               scales_per_element(b_row_scales.narrow(0, n0, rows), shape.k);
    out.narrow(1, n0, rows).copy_(at::mm(a_dequantised, b_panel.t()));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) {
  m.impl("quantize_act", &quantize_act_cpu);
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("fp8_gemm", &fp8_gemm_cpu);
}

}  // namespace deepseek_attn
