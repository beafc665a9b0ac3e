#include "core/cpu_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "common/cpu_tiles.h"
#include "common/online_softmax.h"

namespace deepseek_attn::cpu {

// fp32 to bf16 bits, round to nearest even; branch-free so loops vectorise (finite inputs:
// probabilities).
DEEPSEEK_ATTN_ALWAYS_INLINE uint16_t bf16_bits_rounded(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

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

// fp32 rows in explicit 16-lane vectors (GCC vector extensions: zmm in the AVX-512 clone, two
// ymm in the AVX2 one), because GCC will not vectorise float reductions without -ffast-math.
// The lanes are combined in a fixed order, so results stay deterministic.
constexpr int64_t kLanes = 16;
typedef float FloatLanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IntLanes __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint16_t HalfWordLanes __attribute__((vector_size(kLanes * sizeof(uint16_t))));

DEEPSEEK_ATTN_ALWAYS_INLINE FloatLanes load_lanes(const float* p) {
  FloatLanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

DEEPSEEK_ATTN_ALWAYS_INLINE FloatLanes broadcast(float x) { return FloatLanes{} + x; }

DEEPSEEK_ATTN_ALWAYS_INLINE float lanes_max(FloatLanes v) {
  float m = v[0];
  for (int64_t l = 1; l < kLanes; ++l) m = std::max(m, v[l]);
  return m;
}

DEEPSEEK_ATTN_ALWAYS_INLINE float lanes_sum(FloatLanes v) {
  float sum = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) sum += v[l];
  return sum;
}

// exp2_nonpositive on 16 lanes: the same polynomial, rounding by the 1.5 * 2^23 trick.
DEEPSEEK_ATTN_ALWAYS_INLINE FloatLanes exp2_nonpositive_lanes(FloatLanes x) {
  const IntLanes underflow = !(x >= broadcast(-126.f));
  x = underflow ? broadcast(0.f) : x;
  const FloatLanes n = (x + 12582912.f) - 12582912.f;
  const FloatLanes p = exp2_of_fraction(x - n);
  const IntLanes bits = (__builtin_convertvector(n, IntLanes) + 127) << 23;
  FloatLanes scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? broadcast(0.f) : p * scale;
}

template <>
DEEPSEEK_ATTN_ALWAYS_INLINE float row_max_impl<float>(const float* s, int64_t cols) {
  FloatLanes m = broadcast(-INFINITY);
  int64_t c = 0;
  for (; c + kLanes <= cols; c += kLanes) {
    const FloatLanes v = load_lanes(s + c);
    m = v > m ? v : m;
  }
  float tail = lanes_max(m);
  for (; c < cols; ++c) tail = std::max(tail, s[c]);
  return tail;
}

// 2^(s - shift) of one fp32 row, in place (Out = float) or as bf16 bits rounded to nearest even
// (Out = uint16_t; s is left as it was); returns the sum of the unrounded values. A shift of
// -inf means an empty row: zeros.
template <typename Out>
DEEPSEEK_ATTN_ALWAYS_INLINE float exp2_shifted_lanes(float* s, int64_t cols, float shift,
                                                     Out* out) {
  if (shift == -INFINITY) {
    std::fill(out, out + cols, Out(0));
    return 0.f;
  }
  auto store = [&](int64_t c, FloatLanes p) DEEPSEEK_ATTN_LAMBDA_INLINE {
    if constexpr (std::is_same_v<Out, uint16_t>) {
      IntLanes bits;
      std::memcpy(&bits, &p, sizeof(bits));
      bits += 0x7FFF + ((bits >> 16) & 1);
      // p >= 0, so the arithmetic shift brings in zeros.
      const HalfWordLanes rounded = __builtin_convertvector(bits >> 16, HalfWordLanes);
      std::memcpy(out + c, &rounded, sizeof(rounded));
    } else {
      std::memcpy(out + c, &p, sizeof(p));
    }
  };
  FloatLanes sum = broadcast(0.f);
  int64_t c = 0;
  for (; c + kLanes <= cols; c += kLanes) {
    const FloatLanes p = exp2_nonpositive_lanes(load_lanes(s + c) - shift);
    sum += p;
    store(c, p);
  }
  float total = lanes_sum(sum);
  if (c < cols) {  // the tail as one padded vector: -inf lanes give 0
    float tail[kLanes];
    std::fill(tail, tail + kLanes, -INFINITY);
    std::copy(s + c, s + cols, tail);
    const FloatLanes p = exp2_nonpositive_lanes(load_lanes(tail) - shift);
    total += lanes_sum(p);
    Out rest[kLanes];
    if constexpr (std::is_same_v<Out, uint16_t>) {
      for (int64_t l = 0; l < cols - c; ++l) rest[l] = bf16_bits_rounded(p[l]);
    } else {
      std::memcpy(rest, &p, sizeof(p));
    }
    std::copy(rest, rest + (cols - c), out + c);
  }
  return total;
}

template <>
DEEPSEEK_ATTN_ALWAYS_INLINE float exp2_shifted_inplace_impl<float>(float* s, int64_t cols,
                                                                  float shift) {
  return exp2_shifted_lanes(s, cols, shift, s);
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
DEEPSEEK_ATTN_CPU_MULTIVERSION float exp2_shifted_to_bf16(float* s, int64_t cols, float shift,
                                                         c10::BFloat16* out) {
  return exp2_shifted_lanes(s, cols, shift, reinterpret_cast<uint16_t*>(out));
}
// Cache rows a few keys ahead: rows one head apart sit in different pages, which the hardware
// prefetchers do not follow, so a decode would wait on memory latency row by row. (A prefetch
// past the end of the cache is a hint and never faults.)
constexpr int64_t kPrefetchRows = 16;
template <typename E>
DEEPSEEK_ATTN_ALWAYS_INLINE void prefetch_row(const E* row, int64_t dim) {
  for (int64_t byte = 0; byte < dim * int64_t(sizeof(E)); byte += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(row) + byte);
  }
}

// 16 key values as fp32 lanes (bf16 widens by a shift).
DEEPSEEK_ATTN_ALWAYS_INLINE FloatLanes key_lanes(const float* k) { return load_lanes(k); }
DEEPSEEK_ATTN_ALWAYS_INLINE FloatLanes key_lanes(const c10::BFloat16* k) {
  HalfWordLanes half;
  std::memcpy(&half, k, sizeof(half));
  const IntLanes bits = __builtin_convertvector(half, IntLanes) << 16;
  FloatLanes values;
  std::memcpy(&values, &bits, sizeof(values));
  return values;
}

template <typename E>
DEEPSEEK_ATTN_ALWAYS_INLINE void key_dots_impl(const E* keys, int64_t ld_k, int64_t cols,
                                               const float* queries, int64_t rows, int64_t dim,
                                               float* out) {
  const int64_t vector_dim = dim / kLanes * kLanes;
  for (int64_t c = 0; c < cols; ++c) {
    const E* key = keys + c * ld_k;
    prefetch_row(keys + (c + kPrefetchRows) * ld_k, dim);
    FloatLanes acc[kMaxDotRows] = {};
    for (int64_t d = 0; d < vector_dim; d += kLanes) {
      const FloatLanes k = key_lanes(key + d);
      for (int64_t r = 0; r < rows; ++r) acc[r] += k * load_lanes(queries + r * dim + d);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float dot = lanes_sum(acc[r]);
      for (int64_t d = vector_dim; d < dim; ++d) dot += float(key[d]) * queries[r * dim + d];
      out[c * rows + r] = dot;
    }
  }
}

DEEPSEEK_ATTN_CPU_MULTIVERSION void key_dots(const float* keys, int64_t ld_k, int64_t cols,
                                             const float* queries, int64_t rows, int64_t dim,
                                             float* out) {
  key_dots_impl(keys, ld_k, cols, queries, rows, dim, out);
}
DEEPSEEK_ATTN_CPU_MULTIVERSION void key_dots(const c10::BFloat16* keys, int64_t ld_k,
                                             int64_t cols, const float* queries, int64_t rows,
                                             int64_t dim, float* out) {
  key_dots_impl(keys, ld_k, cols, queries, rows, dim, out);
}

template <typename E>
DEEPSEEK_ATTN_ALWAYS_INLINE void accumulate_values_impl(const E* values, int64_t ld_v,
                                                        int64_t cols, const E* probs,
                                                        int64_t ld_p, int64_t rows, int64_t dim,
                                                        float* out) {
  const int64_t vector_dim = dim / kLanes * kLanes;
  for (int64_t c = 0; c < cols; ++c) {
    const E* value = values + c * ld_v;
    prefetch_row(values + (c + kPrefetchRows) * ld_v, dim);
    float weight[kMaxDotRows];
    for (int64_t r = 0; r < rows; ++r) weight[r] = float(probs[r * ld_p + c]);
    for (int64_t d = 0; d < vector_dim; d += kLanes) {
      const FloatLanes v = key_lanes(value + d);
      for (int64_t r = 0; r < rows; ++r) {
        const FloatLanes sum = load_lanes(out + r * dim + d) + weight[r] * v;
        std::memcpy(out + r * dim + d, &sum, sizeof(sum));
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t d = vector_dim; d < dim; ++d) out[r * dim + d] += weight[r] * float(value[d]);
    }
  }
}

DEEPSEEK_ATTN_CPU_MULTIVERSION void accumulate_values(const float* values, int64_t ld_v,
                                                      int64_t cols, const float* probs,
                                                      int64_t ld_p, int64_t rows, int64_t dim,
                                                      float* out) {
  accumulate_values_impl(values, ld_v, cols, probs, ld_p, rows, dim, out);
}
DEEPSEEK_ATTN_CPU_MULTIVERSION void accumulate_values(const c10::BFloat16* values, int64_t ld_v,
                                                      int64_t cols, const c10::BFloat16* probs,
                                                      int64_t ld_p, int64_t rows, int64_t dim,
                                                      float* out) {
  accumulate_values_impl(values, ld_v, cols, probs, ld_p, rows, dim, out);
}

DEEPSEEK_ATTN_CPU_MULTIVERSION void round_to_bf16(const float* src, int64_t n,
                                                  c10::BFloat16* dst) {
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    IntLanes bits;
    std::memcpy(&bits, src + i, sizeof(bits));
    bits += 0x7FFF + ((bits >> 16) & 1);
    const HalfWordLanes rounded = __builtin_convertvector(bits >> 16, HalfWordLanes);
    std::memcpy(out + i, &rounded, sizeof(rounded));
  }
  for (; i < n; ++i) dst[i] = c10::BFloat16(src[i]);
}

DEEPSEEK_ATTN_CPU_MULTIVERSION void interleave_rows(const uint16_t* first, const uint16_t* second,
                                                    int64_t n, uint32_t* out) {
  typedef uint32_t WordLanes __attribute__((vector_size(kLanes * sizeof(uint32_t))));
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    HalfWordLanes a, b;
    std::memcpy(&a, first + d, sizeof(a));
    std::memcpy(&b, second + d, sizeof(b));
    const WordLanes words = __builtin_convertvector(a, WordLanes) |
                            (__builtin_convertvector(b, WordLanes) << 16);
    std::memcpy(out + d, &words, sizeof(words));
  }
  for (; d < n; ++d) out[d] = uint32_t(first[d]) | (uint32_t(second[d]) << 16);
}

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
