#pragma once
// CPU building blocks for the tiled kernels: row-major fp32 GEMM on tiles (BLAS through ATen),
// a vectorisable exp2, and a dynamic task queue over ATen's thread pool.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

// Hot elementwise loops get AVX2 / AVX-512 clones picked at load time (x86-64 GCC and clang).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DSA_CPU_MULTIVERSION __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define DSA_CPU_MULTIVERSION
#endif

namespace deepseek_attn::cpu {

// A non-owning 2-D fp32 matrix view: rows x cols with leading dimension ld (row-major).
inline at::Tensor matrix_view(const float* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<float*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(at::kFloat));
}

// C (M x N) = op(A) * op(B) + beta * C, row-major, with op = transpose when the flag is set.
// A is (M x K), or (K x M) when trans_a; B is (K x N), or (N x K) when trans_b.
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  at::Tensor a_mat = trans_a ? matrix_view(a, k, m, lda).t() : matrix_view(a, m, k, lda);
  at::Tensor b_mat = trans_b ? matrix_view(b, n, k, ldb).t() : matrix_view(b, k, n, ldb);
  at::Tensor c_mat = matrix_view(c, m, n, ldc);
  if (beta == 0.f) {
    at::mm_out(c_mat, a_mat, b_mat);
  } else {
    at::addmm_out(c_mat, c_mat, a_mat, b_mat, beta, 1.f);
  }
}

// 2^x for x <= 0 to fp32 accuracy, exactly 0 below 2^-126; branch-free so loops vectorise.
inline float exp2_nonpositive(float x) {
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
  });
}

}  // namespace deepseek_attn::cpu
