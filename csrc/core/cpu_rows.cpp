#include "core/cpu_rows.h"

#include <algorithm>
#include <cmath>

#include "common/cpu_tiles.h"
#include "common/online_softmax.h"

namespace deepseek_attn::cpu {

// Row kernels. Each is written once as a template and instantiated for fp32 with AVX2/AVX-512
// clones (the hot path) and for fp64. Forced inlining lets each clone vectorise its own copy.
#define DEEPSEEK_ATTN_ROW_KERNEL_FP32(name, ret, params, args) \
  DEEPSEEK_ATTN_CPU_MULTIVERSION ret name params { return name##_impl<float> args; }

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE void scores_to_logits_impl(T* s, int64_t cols, T scale, T softcap,
                                                       int64_t visible_begin, int64_t visible_end,
                                                       T* tanh_out) {
  if (softcap > 0) {
    const T inv_cap = scale / softcap;
    for (int64_t c = 0; c < cols; ++c) {
      const T t = std::tanh(s[c] * inv_cap);
      if (tanh_out != nullptr) tanh_out[c] = t;
      s[c] = softcap * t * T(kLog2e);
    }
  } else {
    const T scale_log2 = scale * T(kLog2e);
    for (int64_t c = 0; c < cols; ++c) s[c] *= scale_log2;
  }
  for (int64_t c = 0; c < std::min(visible_begin, cols); ++c) s[c] = -INFINITY;
  for (int64_t c = std::max<int64_t>(visible_end, 0); c < cols; ++c) s[c] = -INFINITY;
}

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE T row_max_impl(const T* s, int64_t cols) {
  T m = -INFINITY;
  for (int64_t c = 0; c < cols; ++c) m = std::max(m, s[c]);
  return m;
}

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE T exp2_shifted_inplace_impl(T* s, int64_t cols, T shift) {
  if (shift == -INFINITY) {
    std::fill(s, s + cols, T(0));
    return 0;
  }
  T sum = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const T p = exp2_nonpositive(s[c] - shift);
    s[c] = p;
    sum += p;
  }
  return sum;
}

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE void scale_row_impl(T* x, int64_t n, T factor) {
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE void softmax_grad_row_impl(T* dp, const T* p, const T* tanh_row,
                                                       int64_t cols, T delta) {
  if (tanh_row != nullptr) {
    for (int64_t c = 0; c < cols; ++c) {
      dp[c] = p[c] * (dp[c] - delta) * (T(1) - tanh_row[c] * tanh_row[c]);
    }
  } else {
    for (int64_t c = 0; c < cols; ++c) dp[c] = p[c] * (dp[c] - delta);
  }
}

DEEPSEEK_ATTN_ROW_KERNEL_FP32(scores_to_logits, void,
                              (float* s, int64_t cols, float scale, float softcap,
                               int64_t visible_begin, int64_t visible_end, float* tanh_out),
                              (s, cols, scale, softcap, visible_begin, visible_end, tanh_out))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(row_max, float, (const float* s, int64_t cols), (s, cols))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(exp2_shifted_inplace, float, (float* s, int64_t cols, float shift),
                              (s, cols, shift))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(scale_row, void, (float* x, int64_t n, float factor), (x, n, factor))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(softmax_grad_row, void,
                              (float* dp, const float* p, const float* tanh_row, int64_t cols,
                               float delta),
                              (dp, p, tanh_row, cols, delta))

void scores_to_logits(double* s, int64_t cols, double scale, double softcap, int64_t visible_begin,
                      int64_t visible_end, double* tanh_out) {
  scores_to_logits_impl<double>(s, cols, scale, softcap, visible_begin, visible_end, tanh_out);
}
double row_max(const double* s, int64_t cols) { return row_max_impl<double>(s, cols); }
double exp2_shifted_inplace(double* s, int64_t cols, double shift) {
  return exp2_shifted_inplace_impl<double>(s, cols, shift);
}
void scale_row(double* x, int64_t n, double factor) { scale_row_impl<double>(x, n, factor); }
void softmax_grad_row(double* dp, const double* p, const double* tanh_row, int64_t cols,
                      double delta) {
  softmax_grad_row_impl<double>(dp, p, tanh_row, cols, delta);
}

}  // namespace deepseek_attn::cpu
