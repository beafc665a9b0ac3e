#pragma once
// Online-softmax and LSE-merge helpers of SPEC §0-§1, usable from host and device code.

#include <cmath>

#include "common/key_window.h"

namespace deepseek_attn {

// Double constants so fp64 paths keep full precision; always cast to the working type T(...).
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

// Weight of a partial result when merging two disjoint key sets: exp(lse_part - lse_total),
// with the -inf convention (an empty part weighs 0, two empty parts give lse -inf).
struct LseMerge {
  float lse;
  float weight_first;
  float weight_second;
};

DEEPSEEK_ATTN_HOST_DEVICE LseMerge merge_lse(float lse_first, float lse_second) {
  const float hi = fmaxf(lse_first, lse_second);
  if (hi == -INFINITY) return {-INFINITY, 0.f, 0.f};
  const float lo = fminf(lse_first, lse_second);
  const float lse = hi + log1pf(expf(lo - hi));
  return {lse, expf(lse_first - lse), expf(lse_second - lse)};
}

DEEPSEEK_ATTN_HOST_DEVICE float exp2_of(float x) { return exp2f(x); }
DEEPSEEK_ATTN_HOST_DEVICE double exp2_of(double x) { return exp2(x); }
DEEPSEEK_ATTN_HOST_DEVICE float log2_of(float x) { return log2f(x); }
DEEPSEEK_ATTN_HOST_DEVICE double log2_of(double x) { return log2(x); }

// Running state of one query row: max of the scaled scores (log2 domain) and the sum of exp2.
// T is the accumulation type (fp32; fp64 for fp64 inputs on CPU).
template <typename T>
struct OnlineSoftmaxRow {
  T max_log2 = -INFINITY;
  T sum = 0;

  // Folds in a new block maximum; returns the factor that rescales the old accumulator.
  DEEPSEEK_ATTN_HOST_DEVICE T update_max(T block_max_log2) {
    const T new_max = max_log2 > block_max_log2 ? max_log2 : block_max_log2;
    const T rescale = (max_log2 == -INFINITY) ? T(0) : exp2_of(max_log2 - new_max);
    max_log2 = new_max;
    sum *= rescale;
    return rescale;
  }

  // Natural-log LSE of the row; -inf when it saw no key.
  DEEPSEEK_ATTN_HOST_DEVICE T lse() const {
    return sum > 0 ? (max_log2 + log2_of(sum)) * T(kLn2) : T(-INFINITY);
  }
};

}  // namespace deepseek_attn
