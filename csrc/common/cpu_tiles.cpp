#include "common/cpu_tiles.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace deepseek_attn::cpu {
namespace {

std::string env_or(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::string(value) : std::string(fallback);
}

// A small product against its exact answer: builds or CPUs where brgemm is missing raise or
// compute garbage instead.
template <typename E>
bool brgemm_works() {
  constexpr int64_t m = 2, n = 16, k = 4;
  std::vector<E> a(m * k), b(k * n);
  std::vector<float> c(m * n, -1.f);
  for (int64_t i = 0; i < m * k; ++i) a[i] = E(float(i % 5 - 2));
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t j = 0; j < n; ++j) b[VnniTile<E>::at(kk, j, n)] = E(float((kk + j) % 3 - 1));
  }
  constexpr bool vnni = VnniTile<E>::kPairs == 2;
  try {
    at::native::cpublas::brgemm(m, n, k, k, n, n, false, a.data(), b.data(), c.data(), vnni);
    at::native::cpublas::brgemm_release(vnni);
  } catch (const std::exception&) {
    return false;
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float expected = 0.f;
      for (int64_t kk = 0; kk < k; ++kk) {
        expected += float(a[i * k + kk]) * float(b[VnniTile<E>::at(kk, j, n)]);
      }
      if (c[i * n + j] != expected) return false;
    }
  }
  return true;
}

// GFLOP/s of one attention-sized tile product (64 x 256 x 128), best of a few short runs.
template <typename Product>
double tile_gflops(const Product& product) {
  constexpr int64_t m = 64, n = 256, k = 128, reps = 20;
  product(m, n, k);  // warm-up: JIT of the micro-kernel, page faults
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < reps; ++r) product(m, n, k);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 2.0 * m * n * k * reps / seconds / 1e9);
  }
  return best;
}

template <typename E>
double brgemm_gflops() {
  std::vector<E> a(64 * 128, E(0.5f)), b(128 * 256, E(0.25f));
  std::vector<float> c(64 * 256);
  constexpr bool vnni = VnniTile<E>::kPairs == 2;
  const double gflops = tile_gflops([&](int64_t m, int64_t n, int64_t k) {
    at::native::cpublas::brgemm(m, n, k, k, n, n, false, a.data(), b.data(), c.data(), vnni);
  });
  at::native::cpublas::brgemm_release(vnni);
  return gflops;
}

double blas_gflops() {
  std::vector<float> a(64 * 128, 0.5f), b(128 * 256, 0.25f), c(64 * 256);
  return tile_gflops([&](int64_t m, int64_t n, int64_t k) {
    gemm_nn_blas(m, n, k, a.data(), k, b.data(), n, false, c.data(), n);
  });
}

// Keys per tile: a K and a V tile of head dim 128 in fp32 take keys * 1 KiB; keep them within
// half of the per-core L2 so the query tile and scores stay cached beside them.
int64_t keys_per_tile_for_cache() {
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 <= 0) return 256;
  return l2 >= 512 * 1024 ? 256 : 128;
}

void apply_tile_override(CpuTilePlan& plan) {
  const std::string tiles = env_or("DEEPSEEK_ATTN_CPU_TILES", "");
  if (tiles.empty()) return;
  long rows = 0, keys = 0;
  char extra = 0;
  const bool parsed = std::sscanf(tiles.c_str(), "%ldx%ld%c", &rows, &keys, &extra) == 2;
  TORCH_CHECK(parsed && rows >= 16 && rows <= 512 && keys >= 32 && keys <= 1024 && keys % 16 == 0,
              "DEEPSEEK_ATTN_CPU_TILES must be ROWSxKEYS with 16 <= ROWS <= 512 and KEYS a "
              "multiple of 16 in [32, 1024], e.g. 64x256; got '", tiles, "'");
  plan.rows_per_task = rows;
  plan.keys_per_tile = keys;
  plan.source += " DEEPSEEK_ATTN_CPU_TILES=" + tiles;
}

CpuTilePlan probe_tile_plan() {
  CpuTilePlan plan;
  const std::string choice = env_or("DEEPSEEK_ATTN_CPU_GEMM", "auto");
  TORCH_CHECK(choice == "auto" || choice == "blas" || choice == "fp32" || choice == "brgemm",
              "DEEPSEEK_ATTN_CPU_GEMM must be auto, blas, fp32 or brgemm; got '", choice, "'");
  plan.source = choice == "auto" ? "probe" : "DEEPSEEK_ATTN_CPU_GEMM=" + choice;
  const bool fp32_works = choice != "blas" && brgemm_works<float>();
  const bool bf16_works = (choice == "auto" || choice == "brgemm") && brgemm_works<c10::BFloat16>();
  const bool fp16_works = (choice == "auto" || choice == "brgemm") && brgemm_works<c10::Half>();
  plan.fp32_blas_gflops = blas_gflops();
  if (fp32_works) plan.fp32_brgemm_gflops = brgemm_gflops<float>();
  if (bf16_works) plan.bf16_brgemm_gflops = brgemm_gflops<c10::BFloat16>();
  const double fp16_gflops = fp16_works ? brgemm_gflops<c10::Half>() : 0.0;
  const bool forced = choice != "auto";
  plan.brgemm_fp32 = fp32_works && (forced || plan.fp32_brgemm_gflops >= plan.fp32_blas_gflops);
  // Reduced-precision tiles must beat fp32 tiles clearly: P and dS are also rounded for them.
  const double fp32_best = std::max(plan.fp32_brgemm_gflops, plan.fp32_blas_gflops);
  plan.brgemm_bf16 = bf16_works && (forced || plan.bf16_brgemm_gflops > 1.25 * fp32_best);
  plan.brgemm_fp16 = fp16_works && (forced || fp16_gflops > 1.25 * fp32_best);
  plan.keys_per_tile = keys_per_tile_for_cache();
  apply_tile_override(plan);
  return plan;
}

}  // namespace

std::string CpuTilePlan::describe() const {
  char text[512];
  std::snprintf(text, sizeof(text),
                "fp32 tiles: %s (brgemm %.0f, BLAS %.0f GFLOP/s per thread); bf16 tiles: %s "
                "(brgemm %.0f GFLOP/s); fp16 tiles: %s; %ld query rows x %ld keys per tile; "
                "chosen by %s",
                brgemm_fp32 ? "brgemm" : "BLAS", fp32_brgemm_gflops, fp32_blas_gflops,
                brgemm_bf16 ? "bf16 brgemm" : "fp32", bf16_brgemm_gflops,
                brgemm_fp16 ? "fp16 brgemm" : "fp32", static_cast<long>(rows_per_task),
                static_cast<long>(keys_per_tile), source.c_str());
  return text;
}

const CpuTilePlan& cpu_tile_plan() {
  // Probed on one worker inside a parallel region, where BLAS runs single-threaded as it does
  // in our tasks, so the two GEMMs compare per thread.
  static const CpuTilePlan plan = [] {
    CpuTilePlan probed;
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t) {
      if (begin == 0) probed = probe_tile_plan();
    });
    return probed;
  }();
  return plan;
}

}  // namespace deepseek_attn::cpu
