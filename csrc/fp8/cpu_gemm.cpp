#include "fp8/cpu_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>

#include "common/cpu_tiles.h"
#include "common/fp8.h"

// Roles are swapped inside: brgemm computes Cᵀ tiles = B · Aᵀ, so the weight B (N x K, the big
// operand) is only widened row by row into the micro-kernel's plain A layout, and the small
// activation A is the one rearranged into bf16 pairs along K (VNNI). The accumulator tile is
// transposed once, when the output is written.

namespace deepseek_attn::cpu {
namespace {

constexpr int64_t kKBlock = 128;            // SPEC §2 promotion granularity
constexpr int64_t kWeightRowsPerTile = 64;  // one task: up to 64 output columns
constexpr int64_t kActivationChunk = 512;   // rows of A widened at a time (bounds the scratch)
constexpr int64_t kColumnsPerCall = 128;    // activation rows per brgemm call

// K block widths are padded to even: VNNI pairs two K values per 32-bit word.
int64_t padded_width(int64_t width) { return VnniTile<c10::BFloat16>::padded(width); }

// Weight rows per task: 64, or 32 where that shortens the busiest thread's share (N = 576 on 2
// threads: 9 tiles of 64 leave one thread 5, 18 tiles of 32 give each 9 half-sized ones).
int64_t weight_rows_per_task(int64_t n) {
  const int64_t threads = at::get_num_threads();
  const auto busiest_rows = [&](int64_t rows) {
    return ((n + rows - 1) / rows + threads - 1) / threads * rows;
  };
  return busiest_rows(kWeightRowsPerTile / 2) < busiest_rows(kWeightRowsPerTile)
             ? kWeightRowsPerTile / 2
             : kWeightRowsPerTile;
}

DEEPSEEK_ATTN_CPU_MULTIVERSION_NARROW_LANES
void widen_e4m3_to_bf16(const uint8_t* in, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_bits_from_e4m3(in[i]);
}

// tile (rows x padded width, leading dimension kKBlock) = bf16 of B[n0:n0+rows, k0:k0+width].
void widen_weight_tile(const uint8_t* b, int64_t k, int64_t n0, int64_t rows, int64_t k0,
                       int64_t width, uint16_t* tile) {
  const bool next_block_exists = k0 + kKBlock < k;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* source = b + (n0 + r) * k + k0;
    // The tile reads 128 bytes from each of its rows: more streams than the hardware prefetcher
    // follows, so the next block of this row is requested while this one is widened.
    if (next_block_exists) {
      for (int64_t byte = 0; byte < kKBlock; byte += 64) {
        __builtin_prefetch(source + kKBlock + byte);  // one cache line
      }
    }
    uint16_t* row = tile + r * kKBlock;
    widen_e4m3_to_bf16(source, width, row);
    if (width % 2) row[width] = 0;
  }
}

// One K block of A[m0:m0+rows] in brgemm's bf16 VNNI layout for the (K x rows) operand Aᵀ:
// element (kk, m) at vnni[(kk / 2) * rows * 2 + m * 2 + kk % 2], a transpose of 32-bit pairs.
void pack_activation_block(const uint8_t* a, int64_t k, int64_t m0, int64_t rows, int64_t k0,
                           int64_t width, uint16_t* vnni) {
  const int64_t pairs = padded_width(width) / 2;
  uint16_t widened[kKBlock];
  for (int64_t m = 0; m < rows; ++m) {
    widen_e4m3_to_bf16(a + (m0 + m) * k + k0, width, widened);
    if (width % 2) widened[width] = 0;
    for (int64_t pair = 0; pair < pairs; ++pair) {
      std::memcpy(vnni + (pair * rows + m) * 2, widened + pair * 2, 2 * sizeof(uint16_t));
    }
  }
}

// bf16 bits as the element type of the bf16 tile GEMM (cpu_tiles.h's gemm_nn).
const c10::BFloat16* as_bf16(const uint16_t* bits) {
  return reinterpret_cast<const c10::BFloat16*>(bits);
}

// acc (rows x cols) += (partial · a_scale[col]) · b_scale[row], the SPEC §2 promotion in the
// reference's multiplication order.
DEEPSEEK_ATTN_CPU_MULTIVERSION
void add_promoted_partial(const float* partial, int64_t rows, int64_t cols, const float* a_scales,
                          const float* b_scales, float* acc, int64_t ld_acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const float b_scale = b_scales[r];
    const float* in = partial + r * cols;
    float* out = acc + r * ld_acc;
    for (int64_t c = 0; c < cols; ++c) out[c] += in[c] * a_scales[c] * b_scale;
  }
}

// out[m, n] = acc[n, m] for the tile's rows x cols, converted to the output type.
template <typename Out>
void write_transposed(const float* acc, int64_t rows, int64_t cols, Out* out, int64_t ld_out) {
  for (int64_t m = 0; m < cols; ++m) {
    for (int64_t n = 0; n < rows; ++n) out[m * ld_out + n] = Out(acc[n * cols + m]);
  }
}

void write_output_tile(const float* acc, int64_t rows, int64_t cols, DType out_type, void* out,
                       int64_t offset, int64_t ld_out) {
  switch (out_type) {
    case DType::kFloat32:
      return write_transposed(acc, rows, cols, static_cast<float*>(out) + offset, ld_out);
    case DType::kBFloat16:
      return write_transposed(acc, rows, cols, static_cast<c10::BFloat16*>(out) + offset, ld_out);
    case DType::kFloat16:
      return write_transposed(acc, rows, cols, static_cast<c10::Half*>(out) + offset, ld_out);
    case DType::kE4m3:
      break;
  }
  TORCH_CHECK(false, "fp8_gemm: no CPU output kernel for this dtype");
}


// A 3 x 5 x 7 product of small integers through the same widening and packing as the GEMM (odd
// K exercises the pair padding); exact in e4m3, bf16 and fp32, so any layout mistake shows.
bool bf16_tiles_probe_is_exact() {
  constexpr int64_t kRows = 3, kCols = 5, kDepth = 7;
  const auto weight_value = [](int64_t i) { return float(i % 9 - 4); };
  const auto activation_value = [](int64_t i) { return float(i % 7 - 2); };
  uint8_t weight[kRows * kDepth], activation[kCols * kDepth];
  for (int64_t i = 0; i < kRows * kDepth; ++i) weight[i] = c10::Float8_e4m3fn(weight_value(i)).x;
  for (int64_t i = 0; i < kCols * kDepth; ++i) {
    activation[i] = c10::Float8_e4m3fn(activation_value(i)).x;
  }
  uint16_t tile[kRows * kKBlock], vnni[(kDepth + 1) * kCols];
  widen_weight_tile(weight, kDepth, 0, kRows, 0, kDepth, tile);
  pack_activation_block(activation, kDepth, 0, kCols, 0, kDepth, vnni);
  float product[kRows * kCols];
  gemm_nn(kRows, kCols, padded_width(kDepth), as_bf16(tile), kKBlock, as_bf16(vnni), kCols, false,
          product, kCols);
  at::native::cpublas::brgemm_release(/*is_vnni=*/true);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) {
      float exact = 0.f;
      for (int64_t kk = 0; kk < kDepth; ++kk) {
        exact += weight_value(r * kDepth + kk) * activation_value(c * kDepth + kk);
      }
      if (product[r * kCols + c] != exact) return false;
    }
  }
  return true;
}

}  // namespace

bool fp8_gemm_bf16_tiles_available() {
  static const bool available = [] {
    // The attention tiles' host probe decides (native bf16 products clearly faster than fp32;
    // DEEPSEEK_ATTN_CPU_GEMM), and a product through this GEMM's own packing must be exact.
    if (!cpu_tile_plan().brgemm_bf16) return false;
    try {
      return bf16_tiles_probe_is_exact();
    } catch (const std::exception&) {  // ATen built without oneDNN micro-kernels raises
      return false;
    }
  }();
  return available;
}

void fp8_gemm_bf16_tiles(const Fp8GemmParams& p, DType out_type) {
  const int64_t k_blocks = p.k_blocks;
  // Row r of the weight tile takes its scale from its 128-row block or its own row (wgrad).
  const int64_t b_scale_row_divisor = p.b_scaling == Fp8BScaling::kRow ? 1 : kKBlock;
  const int64_t tile_rows_max = weight_rows_per_task(p.n);
  const int64_t weight_tiles = (p.n + tile_rows_max - 1) / tile_rows_max;
  at::Tensor a_scales_by_block = at::empty({k_blocks, std::min(p.m, kActivationChunk)}, at::kFloat);
  at::Tensor activation_vnni =
      at::empty({k_blocks * kKBlock * std::min(p.m, kActivationChunk)}, at::kShort);

  for (int64_t m0 = 0; m0 < p.m; m0 += kActivationChunk) {
    const int64_t rows = std::min(kActivationChunk, p.m - m0);
    uint16_t* vnni = reinterpret_cast<uint16_t*>(activation_vnni.data_ptr<int16_t>());
    float* a_scales = a_scales_by_block.data_ptr<float>();  // (k_blocks, rows): one per column
    at::parallel_for(0, k_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t kb = begin; kb < end; ++kb) {
        const int64_t k0 = kb * kKBlock;
        pack_activation_block(p.a, p.k, m0, rows, k0, std::min(kKBlock, p.k - k0),
                              vnni + kb * kKBlock * rows);
        for (int64_t m = 0; m < rows; ++m) {
          a_scales[kb * rows + m] = p.a_scales[(m0 + m) * k_blocks + kb];
        }
      }
    });

    at::parallel_for(0, weight_tiles, 1, [&](int64_t begin, int64_t end) {
      at::Tensor scratch = at::empty(
          {kWeightRowsPerTile * (kKBlock / 2 + kColumnsPerCall + rows + 1)}, at::kFloat);
      uint16_t* weight_tile = reinterpret_cast<uint16_t*>(scratch.data_ptr<float>());
      float* partial = scratch.data_ptr<float>() + kWeightRowsPerTile * kKBlock / 2;
      float* acc = partial + kWeightRowsPerTile * kColumnsPerCall;
      float* b_scales = acc + kWeightRowsPerTile * rows;
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t n0 = tile * tile_rows_max;
        const int64_t tile_rows = std::min(tile_rows_max, p.n - n0);
        std::fill(acc, acc + tile_rows * rows, 0.f);
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
          const int64_t k0 = kb * kKBlock, width = std::min(kKBlock, p.k - k0);
          widen_weight_tile(p.b, p.k, n0, tile_rows, k0, width, weight_tile);
          for (int64_t r = 0; r < tile_rows; ++r) {
            b_scales[r] = p.b_scales[(n0 + r) / b_scale_row_divisor * k_blocks + kb];
          }
          for (int64_t c0 = 0; c0 < rows; c0 += kColumnsPerCall) {
            const int64_t cols = std::min(kColumnsPerCall, rows - c0);
            gemm_nn(tile_rows, cols, padded_width(width), as_bf16(weight_tile), kKBlock,
                    as_bf16(vnni + kb * kKBlock * rows + c0 * 2), rows, false, partial, cols);
            add_promoted_partial(partial, tile_rows, cols, a_scales + kb * rows + c0, b_scales,
                                 acc + c0, rows);
          }
        }
        write_output_tile(acc, tile_rows, rows, out_type, p.out, m0 * p.n + n0, p.n);
      }
      at::native::cpublas::brgemm_release(/*is_vnni=*/true);
    });
  }
}

}  // namespace deepseek_attn::cpu
