#pragma once
// CPU building blocks for the tiled kernels: GEMM on tiles (oneDNN brgemm in fp32, bf16 or fp16,
// or BLAS) chosen by a one-time host probe, the VNNI tile layout, a vectorisable exp2, and a
// dynamic task queue over ATen's thread pool.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

// Hot elementwise loops get AVX2 / AVX-512 clones picked at load time (x86-64 GCC and clang).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DEEPSEEK_ATTN_CPU_MULTIVERSION __attribute__((target_clones("default", "avx2", "avx512f")))
// Kernels on 8- and 16-bit lanes (FP8 conversions) need AVX-512BW for full-width vectors.
#define DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES \
  __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define DEEPSEEK_ATTN_CPU_MULTIVERSION
#define DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DEEPSEEK_ATTN_ALWAYS_INLINE inline __attribute__((always_inline))
#define DEEPSEEK_ATTN_LAMBDA_INLINE __attribute__((always_inline))
#else
#define DEEPSEEK_ATTN_ALWAYS_INLINE inline
#define DEEPSEEK_ATTN_LAMBDA_INLINE
#endif

namespace deepseek_attn::cpu {

// fp64 inputs compute in fp64 (gradcheck); everything else accumulates in fp32 (SPEC §0).
inline at::ScalarType accumulation_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A non-owning 2-D matrix view: rows x cols with leading dimension ld (row-major).
template <typename T>
at::Tensor matrix_view(const T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// C = A * B (+ C when accumulate) through BLAS via ATen; row-major with leading dimensions.
template <typename T>
void gemm_nn_blas(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                  int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  at::Tensor c_mat = matrix_view(c, m, n, ldc);
  if (accumulate) {
    c_mat.addmm_(matrix_view(a, m, k, lda), matrix_view(b, k, n, ldb));
  } else {
    at::mm_out(c_mat, matrix_view(a, m, k, lda), matrix_view(b, k, n, ldb));
  }
}

// How this host runs tile products, probed once per process (cpu_tiles.cpp) and printed by
// `python -m deepseek_attn`. DEEPSEEK_ATTN_CPU_GEMM overrides the GEMM choice:
//   auto (default)  the probe decides;
//   blas            fp32 tiles through BLAS, no bf16/fp16 tiles;
//   fp32            fp32 tiles through brgemm, no bf16/fp16 tiles;
//   brgemm          brgemm for every dtype the host supports, whatever the timing says.
// DEEPSEEK_ATTN_CPU_TILES=ROWSxKEYS overrides the attention tile sizes (e.g. 64x256).
struct CpuTilePlan {
  bool brgemm_fp32 = false;  // fp32 tiles through oneDNN brgemm (else BLAS)
  bool brgemm_bf16 = false;  // bf16 inputs multiply as bf16 tiles (VNNI), fp32 accumulation
  bool brgemm_fp16 = false;  // fp16 likewise (hosts with native fp16 dot products)
  int64_t rows_per_task = 64;    // query rows of one attention task
  int64_t keys_per_tile = 256;   // keys of one packed K/V tile
  double fp32_brgemm_gflops = 0, fp32_blas_gflops = 0, bf16_brgemm_gflops = 0;
  std::string source;  // "probe" or the environment variables that overrode it

  std::string describe() const;
};

const CpuTilePlan& cpu_tile_plan();

// Whether tiles of `dtype` inputs multiply in that dtype (VNNI-packed B) on this host.
inline bool reduced_precision_tiles(at::ScalarType dtype) {
  const CpuTilePlan& plan = cpu_tile_plan();
  return (dtype == at::kBFloat16 && plan.brgemm_bf16) || (dtype == at::kHalf && plan.brgemm_fp16);
}

// fp32 C (m x n) = A (m x k) * B (k x n), or C += A * B when accumulate; all row-major with
// leading dimensions. Uses brgemm where the plan says so, else BLAS through ATen.
inline void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (cpu_tile_plan().brgemm_fp32) {
    at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, false);
  } else {
    gemm_nn_blas(m, n, k, a, lda, b, ldb, accumulate, c, ldc);
  }
}

// fp64 (CPU gradcheck precision): BLAS only.
inline void gemm_nn(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                    const double* b, int64_t ldb, bool accumulate, double* c, int64_t ldc) {
  gemm_nn_blas(m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

// bf16 / fp16 tiles: A row-major, B in the VNNI layout of VnniTile (pairs along k, k even),
// fp32 C. Only where reduced_precision_tiles() says the host runs them.
inline void gemm_nn(int64_t m, int64_t n, int64_t k, const c10::BFloat16* a, int64_t lda,
                    const c10::BFloat16* b, int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, true);
}
inline void gemm_nn(int64_t m, int64_t n, int64_t k, const c10::Half* a, int64_t lda,
                    const c10::Half* b, int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, true);
}

// Calls run(T(), E()) with the accumulation type T and the tile element type E of tile_dtype
// (fp64 tiles accumulate in fp64, every other dtype in fp32).
template <typename Run>
void with_tile_types(at::ScalarType tile_dtype, const Run& run) {
  switch (tile_dtype) {
    case at::kDouble:
      return run(double(), double());
    case at::kBFloat16:
      return run(float(), c10::BFloat16());
    case at::kHalf:
      return run(float(), c10::Half());
    default:
      return run(float(), float());
  }
}

// Releases per-thread micro-kernel state once a thread's tiles are done.
inline void gemm_thread_done() {
  const CpuTilePlan& plan = cpu_tile_plan();
  if (plan.brgemm_fp32) at::native::cpublas::brgemm_release(false);
  if (plan.brgemm_bf16 || plan.brgemm_fp16) at::native::cpublas::brgemm_release(true);
}

// The B-operand layout of a tile product in element type E: 16-bit types pair consecutive k
// (VNNI: element (k, n) at (k / 2) * 2 * ld + 2 * n + k % 2), wider types are plain row-major.
// So a column offset n0 is the pointer + n0 * kPairs, a row offset k0 (even) + k0 * ld.
template <typename E>
struct VnniTile {
  static constexpr int64_t kPairs = sizeof(E) == 2 ? 2 : 1;
  static int64_t at(int64_t k, int64_t n, int64_t ld) {
    return (k / kPairs) * kPairs * ld + n * kPairs + k % kPairs;
  }
  // The reduction length a product over k values needs: k rounded up to whole pairs.
  static int64_t padded(int64_t k) { return (k + kPairs - 1) / kPairs * kPairs; }
};

// E from a source element (bf16/fp16/fp32/fp64), through float (or double, exactly).
template <typename E, typename S>
DEEPSEEK_ATTN_ALWAYS_INLINE E convert_element(S x) {
  if constexpr (std::is_same_v<E, S>) {
    return x;
  } else if constexpr (std::is_same_v<E, double> || std::is_same_v<S, double>) {
    return E(static_cast<double>(x));
  } else {
    return E(static_cast<float>(x));
  }
}

// dst (cols x rows, dense) = src (rows x cols, leading dimension ld_src) transposed.
template <typename T>
void transpose_tile(const T* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst) {
  constexpr int64_t kBlock = 16;  // cache-friendly blocks
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      for (int64_t r = r0; r < std::min(r0 + kBlock, rows); ++r) {
        for (int64_t c = c0; c < std::min(c0 + kBlock, cols); ++c) {
          dst[c * rows + r] = src[r * ld_src + c];
        }
      }
    }
  }
}

// 2^f for f in [-0.5, 0.5]: the Taylor series of e^(f ln2) to degree 7, relative error below
// 1e-8. V is float or a GCC vector of floats (core/cpu_rows.cpp).
template <typename V>
DEEPSEEK_ATTN_ALWAYS_INLINE V exp2_of_fraction(V f) {
  V p = f * 1.5252734e-05f + 1.5403530e-04f;
  p = p * f + 1.3333558e-03f;
  p = p * f + 9.6181291e-03f;
  p = p * f + 5.5504109e-02f;
  p = p * f + 2.4022651e-01f;
  p = p * f + 6.9314718e-01f;
  return p * f + 1.0f;
}

// 2^x for x <= 0 to fp32 accuracy, exactly 0 below 2^-126; branch-free so loops vectorise.
DEEPSEEK_ATTN_ALWAYS_INLINE float exp2_nonpositive(float x) {
  const bool underflow = !(x >= -126.f);  // also catches -inf and NaN
  x = underflow ? 0.f : x;
  const float n = std::floor(x + 0.5f);
  const float p = exp2_of_fraction(x - n);
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.f : p * scale;
}

inline double exp2_nonpositive(double x) { return std::exp2(x); }

// Runs task(index, thread_slot) for every index, costliest first, over ATen's thread pool.
// Dynamic scheduling balances causal work; thread_slot indexes per-thread scratch.
template <typename Task>
void run_tasks_costliest_first(const std::vector<int64_t>& costs, const Task& task) {
  const int64_t n_tasks = static_cast<int64_t>(costs.size());
  if (n_tasks == 0) return;
  cpu_tile_plan();  // probe before the workers start, never inside one of their tasks
  std::vector<int64_t> order(n_tasks);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return costs[x] > costs[y]; });
  const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), n_tasks);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n_workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      for (int64_t i = next.fetch_add(1); i < n_tasks; i = next.fetch_add(1)) {
        task(order[i], slot);
      }
    }
    gemm_thread_done();
  });
}

}  // namespace deepseek_attn::cpu
