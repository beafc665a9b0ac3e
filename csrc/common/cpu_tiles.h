#pragma once
// CPU building blocks for the tiled kernels: row-major fp32 GEMM on tiles (oneDNN brgemm or BLAS),
// a vectorisable exp2, and a dynamic task queue over ATen's thread pool.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

// Hot elementwise loops get AVX2 / AVX-512 clones picked at load time (x86-64 GCC and clang).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DEEPSEEK_ATTN_CPU_MULTIVERSION __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define DEEPSEEK_ATTN_CPU_MULTIVERSION
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DEEPSEEK_ATTN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DEEPSEEK_ATTN_ALWAYS_INLINE inline
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

// Whether ATen's oneDNN micro-kernel GEMM (brgemm) runs on this build and CPU; it is about
// twice as fast as a BLAS call on attention-sized tiles. Probed once.
bool brgemm_fp32_available();

// fp32 C (m x n) = A (m x k) * B (k x n), or C += A * B when accumulate; all row-major with
// leading dimensions. Uses brgemm where available, else BLAS through ATen.
inline void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (brgemm_fp32_available()) {
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

// Releases per-thread micro-kernel state once a thread's tiles are done.
inline void gemm_thread_done() {
  if (brgemm_fp32_available()) at::native::cpublas::brgemm_release(false);
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

// 2^x for x <= 0 to fp32 accuracy, exactly 0 below 2^-126; branch-free so loops vectorise.
DEEPSEEK_ATTN_ALWAYS_INLINE float exp2_nonpositive(float x) {
  const bool underflow = !(x >= -126.f);  // also catches -inf and NaN
  x = underflow ? 0.f : x;
  const float n = std::floor(x + 0.5f);
  const float f = x - n;  // in [-0.5, 0.5]
  // Taylor series of 2^f = e^(f ln2) to degree 7: relative error below 1e-8 on [-0.5, 0.5].
  float p = 1.5252734e-05f;
  p = p * f + 1.5403530e-04f;
  p = p * f + 1.3333558e-03f;
  p = p * f + 9.6181291e-03f;
  p = p * f + 5.5504109e-02f;
  p = p * f + 2.4022651e-01f;
  p = p * f + 6.9314718e-01f;
  p = p * f + 1.0f;
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
