// Unit tests of the torch-free helpers shared by the CPU and CUDA kernels: the SPEC §0 index
// math (KeyWindow) against a brute-force definition, and the online-softmax / LSE merge.
// Plain asserts so the tests need nothing beyond a C++ compiler; run through ctest.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "common/key_window.h"
#include "common/online_softmax.h"

namespace {

int failures = 0;

#define EXPECT(cond, ...)                                               \
  do {                                                                  \
    if (!(cond)) {                                                      \
      ++failures;                                                       \
      std::fprintf(stderr, "%s:%d: expected %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                \
      std::fprintf(stderr, "\n");                                       \
    }                                                                   \
  } while (0)

using deepseek_attn::KeyWindow;

// SPEC §0 written out literally.
bool visible_by_definition(const KeyWindow& w, int64_t i, int64_t j) {
  const int64_t off = w.seqlen_k - w.seqlen_q;
  const bool left_ok = w.window_left < 0 || j >= i + off - w.window_left;
  const bool right_ok = w.window_right < 0 || j <= i + off + w.window_right;
  return j >= 0 && j < w.seqlen_k && left_ok && right_ok;
}

void test_key_window_matches_definition() {
  const int64_t windows[] = {-1, 0, 1, 3, 17};
  for (int64_t sq : {1, 5, 16, 33}) {
    for (int64_t sk : {1, 4, 16, 40}) {
      for (int64_t wl : windows) {
        for (int64_t wr : windows) {
          const KeyWindow w{sq, sk, wl, wr};
          for (int64_t i = 0; i < sq; ++i) {
            int64_t first = sk, last = -1;
            for (int64_t j = 0; j < sk; ++j) {
              const bool expected = visible_by_definition(w, i, j);
              EXPECT(w.visible(i, j) == expected, "sq=%ld sk=%ld wl=%ld wr=%ld i=%ld j=%ld",
                     (long)sq, (long)sk, (long)wl, (long)wr, (long)i, (long)j);
              if (expected) first = std::min(first, j), last = std::max(last, j);
            }
            if (last >= 0) {
              EXPECT(w.first_key(i) == first && w.end_key(i) == last + 1, "row %ld", (long)i);
            } else {
              EXPECT(w.first_key(i) >= w.end_key(i), "empty row %ld has a key range", (long)i);
            }
          }
          // Row ranges per key tile, and the tile-level "no mask needed" test.
          for (int64_t kb = 0; kb < sk; kb += 3) {
            const int64_t ke = std::min(sk, kb + 5);
            const int64_t r0 = w.first_row_seeing(kb), r1 = w.end_row_seeing(ke);
            for (int64_t i = 0; i < sq; ++i) {
              bool sees = false;
              for (int64_t j = kb; j < ke; ++j) sees |= visible_by_definition(w, i, j);
              EXPECT(!sees || (i >= r0 && i < r1), "row %ld sees keys [%ld,%ld) but is outside "
                     "[%ld,%ld)", (long)i, (long)kb, (long)ke, (long)r0, (long)r1);
            }
            for (int64_t rb = 0; rb < sq; rb += 4) {
              const int64_t re = std::min(sq, rb + 4);
              bool all = true;
              for (int64_t i = rb; i < re; ++i)
                for (int64_t j = kb; j < ke; ++j) all &= visible_by_definition(w, i, j);
              EXPECT(w.tile_fully_visible(rb, re, kb, ke) == all, "tile rows [%ld,%ld) keys "
                     "[%ld,%ld) wl=%ld wr=%ld", (long)rb, (long)re, (long)kb, (long)ke,
                     (long)wl, (long)wr);
            }
          }
        }
      }
    }
  }
}

double logsumexp(const std::vector<double>& x) {
  double hi = -INFINITY;
  for (double v : x) hi = std::max(hi, v);
  if (hi == -INFINITY) return -INFINITY;
  double sum = 0;
  for (double v : x) sum += std::exp(v - hi);
  return hi + std::log(sum);
}

void test_merge_lse() {
  const float inf = std::numeric_limits<float>::infinity();
  const auto both_empty = deepseek_attn::merge_lse(-inf, -inf);
  EXPECT(both_empty.lse == -inf && both_empty.weight_first == 0 && both_empty.weight_second == 0,
         "two empty parts");
  const auto one_empty = deepseek_attn::merge_lse(-inf, 2.5f);
  EXPECT(one_empty.lse == 2.5f && one_empty.weight_first == 0 && one_empty.weight_second == 1,
         "one empty part: lse %f weights %f %f", one_empty.lse, one_empty.weight_first,
         one_empty.weight_second);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 30.f);
  for (int trial = 0; trial < 1000; ++trial) {
    const float a = normal(rng), b = normal(rng);
    const auto merged = deepseek_attn::merge_lse(a, b);
    const double expected = logsumexp({a, b});
    EXPECT(std::fabs(merged.lse - expected) <= 1e-5 * std::max(1.0, std::fabs(expected)),
           "lse(%f, %f) = %f, expected %f", a, b, merged.lse, expected);
    EXPECT(std::fabs(merged.weight_first + merged.weight_second - 1.f) < 1e-5f,
           "weights of (%f, %f) sum to %f", a, b, merged.weight_first + merged.weight_second);
  }
}

// Streaming the scores block by block gives the LSE of the whole row (SPEC §1 online softmax).
void test_online_softmax_row_matches_logsumexp() {
  std::mt19937 rng(11);
  std::normal_distribution<double> normal(0.0, 8.0);
  for (int length : {1, 7, 64, 300}) {
    for (int block : {1, 5, 64}) {
      std::vector<double> scores(length);
      for (double& s : scores) s = normal(rng);
      deepseek_attn::OnlineSoftmaxRow<double> row;
      for (int begin = 0; begin < length; begin += block) {
        const int end = std::min(length, begin + block);
        double block_max = -INFINITY;
        for (int j = begin; j < end; ++j) block_max = std::max(block_max, scores[j] * M_LOG2E);
        row.update_max(block_max);
        for (int j = begin; j < end; ++j) row.sum += std::exp2(scores[j] * M_LOG2E - row.max_log2);
      }
      const double expected = logsumexp(scores);
      EXPECT(std::fabs(row.lse() - expected) < 1e-9 * std::max(1.0, std::fabs(expected)),
             "length %d block %d: lse %f expected %f", length, block, row.lse(), expected);
    }
  }
  deepseek_attn::OnlineSoftmaxRow<float> empty;
  EXPECT(std::isinf(empty.lse()) && empty.lse() < 0, "a row without keys has lse -inf");
  EXPECT(empty.update_max(-INFINITY) == 0.f, "rescaling an empty row gives 0, not NaN");
}

}  // namespace

int main() {
  test_key_window_matches_definition();
  test_merge_lse();
  test_online_softmax_row_matches_logsumexp();
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("all helper checks passed\n");
  return EXIT_SUCCESS;
}
