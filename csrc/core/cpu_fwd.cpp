// CPU main loop of the shared attention core (forward of SPEC §1, over the sources of §3 and the
// selections of §4-§5).
//
// A task is one query tile of one kv head: up to plan.rows_per_task rows, each a (query token,
// query head) pair of the kv head's GQA group, tokens outer, so the heads of a group share every
// key tile. Keys come in packed tiles of plan.keys_per_tile keys in the tile element type E (the
// input's bf16/fp16 where the host multiplies those natively, else fp32; fp64 for gradcheck):
// K as the B operand of S = Q·Kᵀ and V as the B operand of O += P·V (cpu::VnniTile). When
// several tasks read the same keys (prefill, training, dense block lists), K/V are packed once
// per call for every (batch, kv head, key tile) and each packed tile serves the whole GQA group
// and every query tile; otherwise (decode, paged and latent caches, index lists) a task streams
// its keys as rows — S^T = K Q^T multiplies the cache rows where they lie, gathered into
// scratch only to convert or dequantise them — so a decode reads each cache row once.
// Decode tasks too few for the threads split their keys, merged by the LSE rule of SPEC §0.
// Scores, the online softmax and O accumulate in T (fp32; fp64 for fp64 inputs); P is rounded
// to E for its product with V.

#include "core/cpu_fwd.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_tiles.h"
#include "common/online_softmax.h"
#include "core/cpu_rows.h"

namespace deepseek_attn {
namespace {

// One source row (the caller's dtype S) as n E elements.
template <typename E, typename S>
void read_row(const S* row, int64_t n, E* out) {
  for (int64_t d = 0; d < n; ++d) out[d] = cpu::convert_element<E>(row[d]);
}

template <typename E>
void read_row(const void* row, at::ScalarType dtype, int64_t n, E* out) {
  switch (dtype) {
    case at::kDouble:
      return read_row(static_cast<const double*>(row), n, out);
    case at::kBFloat16:
      return read_row(static_cast<const c10::BFloat16*>(row), n, out);
    case at::kHalf:
      return read_row(static_cast<const c10::Half*>(row), n, out);
    default:
      return read_row(static_cast<const float*>(row), n, out);
  }
}

// A packed key tile in element type E: K (dim_qk_padded x keys) then V (keys x dim_v), both in
// the cpu::VnniTile layout. The padding of the head dim stays zero.
template <typename E>
struct KeyTileShape {
  using Vnni = cpu::VnniTile<E>;
  int64_t keys, dim_qk, dim_qk_padded, dim_v;

  KeyTileShape(int64_t keys_per_tile, int64_t dqk, int64_t dv)
      : keys(keys_per_tile), dim_qk(dqk), dim_qk_padded(Vnni::padded(dqk)), dim_v(dv) {}
  int64_t k_elements() const { return dim_qk_padded * keys; }
  int64_t elements() const { return k_elements() + keys * dim_v; }

  // Column c of K and row c of V (0 <= c < keys) from one K row and one V row.
  void put_key(E* tile, int64_t c, const E* k_row, const E* v_row) const {
    for (int64_t d = 0; d < dim_qk; ++d) tile[Vnni::at(d, c, keys)] = k_row[d];
    E* v = tile + k_elements();
    for (int64_t d = 0; d < dim_v; ++d) v[Vnni::at(c, d, dim_v)] = v_row[d];
  }
};

// The KV source in tile element type E: key `key` of (batch, kv head) converted from the
// caller's cache (`storage`: the query's dtype, or SPEC §3's FP8 latent rows, dequantised), or
// runs of rows read where they lie when the cache already holds E rows. The key's page is valid
// (checked before the loop).
template <typename E>
struct CpuKvSource {
  KvSourceParams layout;
  at::ScalarType storage = at::kFloat;
  int64_t dim_qk = 0, dim_v = 0;

  // K row to k_out (dim_qk values; the padding after them is left alone), V row to v_out.
  void read_key(int64_t batch, int64_t head, int64_t key, E* k_out, E* v_out) const {
    const int64_t page = layout.page_of(batch, key);
    if (layout.storage == KvStorage::kLatentFp8) {
      using Layout = LatentFp8Layout;
      const uint8_t* row = static_cast<const uint8_t*>(layout.k) +
                           layout.row_offset(layout.k_strides, page, key, head);
      float scales[Layout::kQuantized / Layout::kGroup];
      std::memcpy(scales, row + Layout::kScaleOffset, sizeof(scales));
      for (int64_t d = 0; d < Layout::kQuantized; ++d) {
        k_out[d] = E(e4m3_to_float(row[d]) * scales[d / Layout::kGroup]);
      }
      for (int64_t d = 0; d < Layout::kRope; ++d) {
        uint16_t bits;
        std::memcpy(&bits, row + Layout::kRopeOffset + 2 * d, sizeof(bits));
        k_out[Layout::kQuantized + d] = E(bf16_bits_to_float(bits));
      }
      std::copy(k_out, k_out + dim_v, v_out);
      return;
    }
    const int64_t element = c10::elementSize(storage);
    const char* k_row = static_cast<const char*>(layout.k) +
                        layout.row_offset(layout.k_strides, page, key, head) * element;
    read_row(k_row, storage, dim_qk, k_out);
    if (layout.values_in_keys()) {  // latent rows: the values are the key's first columns
      std::copy(k_out, k_out + dim_v, v_out);
      return;
    }
    read_row(static_cast<const char*>(layout.v) +
                 layout.row_offset(layout.v_strides, page, key, head) * element,
             storage, dim_v, v_out);
  }

  // Keys key0.. of (batch, head) where they lie: how many of at most `wanted` are consecutive
  // rows of one page (0 when the cache does not hold E rows of an even head dim), with their
  // K and V row pointers and strides.
  int64_t rows_in_place(int64_t batch, int64_t head, int64_t key0, int64_t wanted, const E*& k,
                        int64_t& ld_k, const E*& v, int64_t& ld_v) const {
    if (layout.storage != KvStorage::kElements || storage != c10::CppTypeToScalarType<E>::value ||
        cpu::VnniTile<E>::padded(dim_qk) != dim_qk) {
      return 0;
    }
    const int64_t page = layout.page_of(batch, key0);
    const int64_t run = layout.block_table == nullptr
                            ? wanted
                            : std::min(wanted, layout.page_size - key0 % layout.page_size);
    k = static_cast<const E*>(layout.k) + layout.row_offset(layout.k_strides, page, key0, head);
    ld_k = layout.k_strides.row;
    v = layout.values_in_keys()
            ? k
            : static_cast<const E*>(layout.v) + layout.row_offset(layout.v_strides, page, key0, head);
    ld_v = layout.values_in_keys() ? ld_k : layout.v_strides.row;
    return run;
  }
};

// K/V of a dense source packed once per call: tile (b, hk, t) holds keys [t·keys, (t+1)·keys),
// zero past the sequence end.
template <typename E>
at::Tensor pack_all_key_tiles(const CoreFwdParams& p, const CpuKvSource<E>& kv,
                              const KeyTileShape<E>& shape, int64_t n_tiles, at::ScalarType dtype) {
  at::Tensor packed = at::zeros({p.batch * p.heads_kv * n_tiles, shape.elements()},
                                at::TensorOptions().dtype(dtype));
  E* base = static_cast<E*>(packed.data_ptr());
  at::parallel_for(0, p.batch * p.heads_kv * n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<E> k_row(shape.dim_qk), v_row(shape.dim_v);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t tile = index % n_tiles, hk = (index / n_tiles) % p.heads_kv;
      const int64_t b = index / (n_tiles * p.heads_kv);
      const int64_t key_end = std::min((tile + 1) * shape.keys, p.seqlen_k);
      for (int64_t key = tile * shape.keys; key < key_end; ++key) {
        kv.read_key(b, hk, key, k_row.data(), v_row.data());
        shape.put_key(base + index * shape.elements(), key - tile * shape.keys, k_row.data(),
                      v_row.data());
      }
    }
  });
  return packed;
}

template <typename T, typename E>
struct TaskScratch {
  std::vector<E> q_tile, q_pairs, p_tile, k_rows, v_rows, v_pairs, v_pair, v_zeros;
  std::vector<T> scores, scores_t, out;
  std::vector<float> q_float;
  std::vector<OnlineSoftmaxRow<T>> state;
};

// Where the tasks of a split decode leave their unnormalised rows before the LSE merge.
template <typename T>
struct SplitPartials {
  std::vector<T> out, max_log2, sum;  // (task, row, dv), (task, row), (task, row)
};

template <typename T, typename E>
void core_fwd_cpu(const CoreFwdParams& p, const CpuKvSource<E>& kv, const E* packed_tiles,
                  at::ScalarType q_dtype, T* out, T softmax_scale, T softcap) {
  using Vnni = cpu::VnniTile<E>;
  constexpr bool kKeyDots =
      std::is_same_v<T, float> && (std::is_same_v<E, float> || std::is_same_v<E, c10::BFloat16>);
  const cpu::CpuTilePlan& plan = cpu::cpu_tile_plan();
  const KeyTileShape<E> shape(plan.keys_per_tile, p.head_dim_qk, p.head_dim_v);
  const KeySelectionParams& selection = p.selection;
  const QueryTiles grid(p.heads_per_kv(), selection.listed() ? 1 : 0, p.seqlen_q,
                        plan.rows_per_task);
  const int64_t group = p.heads_per_kv(), dqk = p.head_dim_qk, dqk_pad = shape.dim_qk_padded;
  const int64_t dv = p.head_dim_v, tile_keys = shape.keys;
  const int64_t n_key_tiles = (p.seqlen_k + tile_keys - 1) / tile_keys;
  const int64_t n_base = p.batch * p.heads_kv * grid.head_chunks * grid.token_tiles;
  // Decode: too few tasks for the threads split the band's key tiles among more.
  const int64_t threads = at::get_num_threads();
  const int64_t splits =
      selection.listed() || threads == 1 || n_base == 0 || n_base >= threads
          ? 1
          : std::max<int64_t>(1, std::min((2 * threads + n_base - 1) / n_base, n_key_tiles));
  const int64_t n_tasks = n_base * splits;
  const int64_t max_rows = grid.tokens_per_tile * grid.heads_per_tile;

  // Task index -> (batch b, kv head hk, tokens [t0, t1), heads [h0, h0 + nh), key split);
  // splits vary fastest, then token tiles, head chunks, kv heads and batches.
  struct Task {
    int64_t b, hk, t0, t1, h0, nh, seqlen, split;
    KeyWindow band;
  };
  auto task_of = [&](int64_t index) {
    Task t;
    t.split = index % splits;
    const int64_t base = index / splits;
    const int64_t chunk = (base / grid.token_tiles) % grid.head_chunks;
    t.hk = (base / (grid.token_tiles * grid.head_chunks)) % p.heads_kv;
    t.b = base / (grid.token_tiles * grid.head_chunks * p.heads_kv);
    t.t0 = (base % grid.token_tiles) * grid.tokens_per_tile;
    t.t1 = std::min(t.t0 + grid.tokens_per_tile, p.seqlen_q);
    t.h0 = t.hk * group + chunk * grid.heads_per_tile;
    t.nh = std::min(t.h0 + grid.heads_per_tile, (t.hk + 1) * group) - t.h0;
    t.seqlen = kv.layout.seqlen_of(t.b, p.seqlen_k);
    t.band = selection.band(p.seqlen_q, t.seqlen);
    return t;
  };
  // The band keys of a task: whole tiles when packed once per call, cut among its splits.
  auto key_range = [&](const Task& t) {
    int64_t begin = t.band.first_key(t.t0), end = t.band.end_key(t.t1 - 1);
    if (splits > 1 && end > begin) {
      const int64_t first_tile = begin / tile_keys, tiles = (end - 1) / tile_keys + 1 - first_tile;
      const int64_t lo = first_tile + tiles * t.split / splits;
      const int64_t hi = first_tile + tiles * (t.split + 1) / splits;
      begin = std::max(begin, lo * tile_keys);
      end = std::min(end, hi * tile_keys);
    }
    return std::make_pair(begin, std::max(begin, end));
  };
  std::vector<int64_t> costs(n_tasks);
  for (int64_t index = 0; index < n_tasks; ++index) {
    const auto [begin, end] = key_range(task_of(index));
    costs[index] = selection.listed() ? selection.num_entries() : end - begin;
  }
  std::vector<TaskScratch<T, E>> scratch(threads);
  SplitPartials<T> partials;
  if (splits > 1) {
    partials.out.resize(n_tasks * max_rows * dv);
    partials.max_log2.resize(n_tasks * max_rows);
    partials.sum.resize(n_tasks * max_rows);
  }

  // Normalised rows of a finished task (or its share of a split decode) to out and lse.
  auto write_rows = [&](const Task& t, int64_t rows, const T* acc, const T* max_log2,
                        const T* sum) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t token = t.t0 + r / t.nh, head = t.h0 + r % t.nh;
      T* dst = out + t.b * p.out_strides.batch + token * p.out_strides.row +
               head * p.out_strides.head;
      const T inv_sum = sum[r] > 0 ? T(1) / sum[r] : T(0);
      for (int64_t d = 0; d < dv; ++d) dst[d] = acc[r * dv + d] * inv_sum;
      OnlineSoftmaxRow<T> row;
      row.max_log2 = max_log2[r];
      row.sum = sum[r];
      p.lse[(t.b * p.heads_q + head) * p.seqlen_q + token] = static_cast<float>(row.lse());
    }
  };

  cpu::run_tasks_costliest_first(costs, [&](int64_t index, int64_t slot) {
    const Task task = task_of(index);
    const auto& [b, hk, t0, t1, h0, nh, seqlen, split, band] = task;
    const int64_t rows = (t1 - t0) * nh;  // row r: token t0 + r / nh, head h0 + r % nh

    TaskScratch<T, E>& s = scratch[slot];
    s.q_tile.assign(rows * dqk_pad, E(0.f));
    s.q_pairs.resize(dqk_pad * rows);
    s.scores.resize(rows * tile_keys);
    s.scores_t.resize(tile_keys * rows);
    s.p_tile.resize(rows * Vnni::padded(tile_keys));
    s.v_pair.assign(2 * dv, E(0.f));
    s.v_pairs.resize(Vnni::padded(tile_keys) * dv);
    s.v_zeros.assign(dv, E(0.f));
    s.k_rows.resize(tile_keys * dqk_pad);
    s.v_rows.resize(tile_keys * dv);
    s.out.assign(rows * dv, T(0));
    const int64_t q_element = c10::elementSize(q_dtype);
    for (int64_t r = 0; r < rows; ++r) {
      const char* q_row = static_cast<const char*>(p.q) +
                          (b * p.q_strides.batch + (t0 + r / nh) * p.q_strides.row +
                           (h0 + r % nh) * p.q_strides.head) * q_element;
      read_row(q_row, q_dtype, dqk, s.q_tile.data() + r * dqk_pad);
    }
    // A few rows (MHA decode) take dot products and row updates instead of GEMMs with N or M =
    // rows, which micro-kernels run at a fraction of their width.
    const bool dot_rows = kKeyDots && rows <= cpu::kMaxDotRows;
    if (dot_rows) {
      s.q_float.resize(rows * dqk);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t d = 0; d < dqk; ++d) s.q_float[r * dqk + d] = float(s.q_tile[r * dqk_pad + d]);
      }
    }
    if (packed_tiles == nullptr) {  // streamed keys: Q^T is the B operand of S^T = K Q^T
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t d = 0; d < dqk_pad; ++d) {
          s.q_pairs[Vnni::at(d, r, rows)] = s.q_tile[r * dqk_pad + d];
        }
      }
    }
    std::vector<OnlineSoftmaxRow<T>>& state = s.state;
    state.assign(rows, OnlineSoftmaxRow<T>());

    // The scores of keys [key0, key0 + cols) in s.scores (rows x cols) through the online
    // softmax, each row masked to the band and to [lo, hi) (unmasked: listed keys already
    // checked against the band). P is left in s.scores (E == T) or rounded to E in s.p_tile
    // (rows x padded(cols), the padding column zero); returns P's leading dimension.
    auto softmax_tile = [&](int64_t cols, int64_t key0, int64_t lo, int64_t hi, bool masked) {
      const bool full = !masked || (lo <= key0 && key0 + cols <= hi &&
                                    band.tile_fully_visible(t0, t1, key0, key0 + cols));
      const int64_t ld_p = std::is_same_v<E, T> ? cols : Vnni::padded(cols);
      for (int64_t r = 0; r < rows; ++r) {
        T* scores = s.scores.data() + r * cols;
        const int64_t token = t0 + r / nh;
        const int64_t vis_begin = full ? 0 : std::max(band.first_key(token), lo) - key0;
        const int64_t vis_end = full ? cols : std::min(band.end_key(token), hi) - key0;
        cpu::scores_to_logits(scores, cols, softmax_scale, softcap, vis_begin, vis_end,
                              static_cast<T*>(nullptr));
        const T rescale = state[r].update_max(cpu::row_max(scores, cols));
        if (rescale != T(1)) cpu::scale_row(s.out.data() + r * dv, dv, rescale);
        if constexpr (std::is_same_v<E, T>) {
          state[r].sum += cpu::exp2_shifted_inplace(scores, cols, state[r].max_log2);
        } else {
          E* p_row = s.p_tile.data() + r * ld_p;
          if constexpr (std::is_same_v<E, c10::BFloat16>) {
            state[r].sum += cpu::exp2_shifted_to_bf16(scores, cols, state[r].max_log2, p_row);
          } else {
            state[r].sum += cpu::exp2_shifted_inplace(scores, cols, state[r].max_log2);
            for (int64_t c = 0; c < cols; ++c) p_row[c] = E(scores[c]);
          }
          if (ld_p > cols) p_row[cols] = E(0.f);
        }
      }
      return ld_p;
    };
    const E* p_tile = nullptr;
    if constexpr (std::is_same_v<E, T>) {
      p_tile = s.scores.data();
    } else {
      p_tile = s.p_tile.data();
    }

    // One tile packed once per call, from column c0 on: keys [key0, key0 + cols).
    // S = Q K^T, online softmax, O += P V.
    auto consume_tile = [&](const E* tile, int64_t c0, int64_t cols, int64_t key0, int64_t lo,
                            int64_t hi) {
      const E* k_tile = tile + c0 * Vnni::kPairs;
      const E* v_tile = tile + shape.k_elements() + c0 * dv;
      cpu::gemm_nn(rows, cols, dqk_pad, s.q_tile.data(), dqk_pad, k_tile, tile_keys, false,
                   s.scores.data(), cols);
      const int64_t ld_p = softmax_tile(cols, key0, lo, hi, true);
      if constexpr (std::is_same_v<E, T>) {
        cpu::gemm_nn(rows, dv, cols, p_tile, ld_p, v_tile, dv, true, s.out.data(), dv);
      } else {
        // Whole key pairs from the tile; an odd last key pairs with a zero row in scratch, so
        // the key after it (another row's, or past the sequence) is never multiplied.
        const int64_t even = cols / 2 * 2;
        if (even > 0) {
          cpu::gemm_nn(rows, dv, even, s.p_tile.data(), ld_p, v_tile, dv, true, s.out.data(), dv);
        }
        if (even < cols) {
          const E* last = v_tile + even * dv;  // pair row even/2, first of each pair
          for (int64_t d = 0; d < dv; ++d) s.v_pair[2 * d] = last[2 * d];
          cpu::gemm_nn(rows, dv, 2, s.p_tile.data() + even, ld_p, s.v_pair.data(), dv, true,
                       s.out.data(), dv);
        }
      }
    };

    // Keys [key0, key0 + cols) as rows: K (cols x dqk_pad, ld_k), V (cols x dv, ld_v), where
    // they lie in the cache or gathered. S^T = K Q^T needs no packing of K, so a decode reads
    // each cache row once; V is paired into scratch for bf16/fp16 tiles.
    auto consume_rows = [&](const E* k_rows, int64_t ld_k, const E* v_rows, int64_t ld_v,
                            int64_t cols, int64_t key0, int64_t lo, int64_t hi, bool masked) {
      bool dotted = false;
      if constexpr (kKeyDots) {
        if (dot_rows) {
          cpu::key_dots(k_rows, ld_k, cols, s.q_float.data(), rows, dqk, s.scores_t.data());
          dotted = true;
        }
      }
      if (!dotted) {
        cpu::gemm_nn(cols, rows, dqk_pad, k_rows, ld_k, s.q_pairs.data(), rows, false,
                     s.scores_t.data(), rows);
      }
      cpu::transpose_tile(s.scores_t.data(), cols, rows, rows, s.scores.data());
      const int64_t ld_p = softmax_tile(cols, key0, lo, hi, masked);
      if constexpr (kKeyDots) {
        if (dot_rows) {
          return cpu::accumulate_values(v_rows, ld_v, cols, p_tile, ld_p, rows, dv, s.out.data());
        }
      }
      if constexpr (std::is_same_v<E, T>) {
        cpu::gemm_nn(rows, dv, cols, p_tile, ld_p, v_rows, ld_v, true, s.out.data(), dv);
      } else {
        static_assert(sizeof(E) == sizeof(uint16_t));
        for (int64_t c = 0; c < cols; c += 2) {  // an odd last key pairs with zeros
          const E* first = v_rows + c * ld_v;
          const E* second = c + 1 < cols ? first + ld_v : s.v_zeros.data();
          cpu::interleave_rows(reinterpret_cast<const uint16_t*>(first),
                               reinterpret_cast<const uint16_t*>(second), dv,
                               reinterpret_cast<uint32_t*>(s.v_pairs.data() + c * dv));
        }
        cpu::gemm_nn(rows, dv, ld_p, s.p_tile.data(), ld_p, s.v_pairs.data(), dv, true,
                     s.out.data(), dv);
      }
    };

    // Gathered keys: read into the scratch rows (converted, dequantised), then consumed.
    auto gather_key = [&](int64_t c, int64_t key) {
      E* k_row = s.k_rows.data() + c * dqk_pad;
      kv.read_key(b, hk, key, k_row, s.v_rows.data() + c * dv);
      std::fill(k_row + dqk, k_row + dqk_pad, E(0.f));  // the head-dim pair padding
    };
    auto consume_gathered = [&](int64_t cols, int64_t key0, int64_t lo, int64_t hi, bool masked) {
      consume_rows(s.k_rows.data(), dqk_pad, s.v_rows.data(), dv, cols, key0, lo, hi, masked);
    };

    // Keys [lo, hi) of this (batch, kv head): from the tiles packed once per call, or streamed
    // from the cache (in place where it holds E rows).
    auto consume_range = [&](int64_t lo, int64_t hi) {
      if (packed_tiles != nullptr) {
        for (int64_t tile = lo / tile_keys; tile * tile_keys < hi; ++tile) {
          const int64_t tile_start = tile * tile_keys;
          const int64_t c0 = (std::max(lo, tile_start) - tile_start) / Vnni::kPairs * Vnni::kPairs;
          const int64_t key0 = tile_start + c0;
          const int64_t cols = std::min(hi, tile_start + tile_keys) - key0;
          consume_tile(packed_tiles + ((b * p.heads_kv + hk) * n_key_tiles + tile) * shape.elements(),
                       c0, cols, key0, lo, hi);
        }
        return;
      }
      // Tiles are cut the same way whatever the paging, so paged and contiguous caches give
      // bitwise-equal results: a tile crossing a page boundary is gathered.
      for (int64_t key0 = lo; key0 < hi; key0 += tile_keys) {
        const int64_t cols = std::min(tile_keys, hi - key0);
        const E *k_rows, *v_rows;
        int64_t ld_k, ld_v;
        if (kv.rows_in_place(b, hk, key0, cols, k_rows, ld_k, v_rows, ld_v) == cols) {
          consume_rows(k_rows, ld_k, v_rows, ld_v, cols, key0, lo, hi, true);
        } else {
          for (int64_t c = 0; c < cols; ++c) gather_key(c, key0 + c);
          consume_gathered(cols, key0, lo, hi, true);
        }
      }
    };

    if (selection.listed() && packed_tiles != nullptr) {
      // Dense block lists: each listed block is a key range of the tiles packed once, for the
      // task's one token (a block listed twice counts twice), masked by the band.
      const int64_t block = selection.index_block_size;
      const int64_t first = band.first_key(t0), end = band.end_key(t0);
      for (int64_t e = 0; e < selection.num_indices; ++e) {
        const int64_t j0 = selection.key_of_entry(b, t0, hk, e * block);
        if (j0 < 0 || j0 >= end || j0 + block <= first) continue;
        consume_range(std::max(j0, first), std::min(j0 + block, end));
      }
    } else if (!selection.listed()) {
      const auto [key_begin, key_end] = key_range(task);
      if (key_begin < key_end) consume_range(key_begin, key_end);
    } else {
      // The selected entries are gathered into full tiles (a listed tile holds one token's
      // keys: order does not matter to the softmax, and a key listed twice is read twice).
      const int64_t entries = selection.num_entries();
      int64_t cols = 0;
      for (int64_t e = 0; e < entries; ++e) {
        const int64_t key = selection.key_of_entry(b, t0, hk, e);
        if (key >= 0 && key < seqlen && band.visible(t0, key)) gather_key(cols++, key);
        if (cols == tile_keys || (e + 1 == entries && cols > 0)) {
          consume_gathered(cols, 0, 0, cols, false);
          cols = 0;
        }
      }
    }

    std::vector<T> max_log2(rows), sum(rows);
    for (int64_t r = 0; r < rows; ++r) {
      max_log2[r] = state[r].max_log2;
      sum[r] = state[r].sum;
    }
    if (splits == 1) {
      write_rows(task, rows, s.out.data(), max_log2.data(), sum.data());
      return;
    }
    std::copy(s.out.begin(), s.out.end(), partials.out.begin() + index * max_rows * dv);
    std::copy(max_log2.begin(), max_log2.end(), partials.max_log2.begin() + index * max_rows);
    std::copy(sum.begin(), sum.end(), partials.sum.begin() + index * max_rows);
  });

  if (splits == 1) return;
  // The LSE merge of each split task's parts (SPEC §0), in split order.
  at::parallel_for(0, n_base, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc, max_log2, sum;
    for (int64_t base = begin; base < end; ++base) {
      const Task task = task_of(base * splits);
      const int64_t rows = (task.t1 - task.t0) * task.nh;
      acc.assign(rows * dv, T(0));
      max_log2.assign(rows, -INFINITY);
      sum.assign(rows, T(0));
      for (int64_t part = base * splits; part < (base + 1) * splits; ++part) {
        for (int64_t r = 0; r < rows; ++r) {
          max_log2[r] = std::max(max_log2[r], partials.max_log2[part * max_rows + r]);
        }
      }
      for (int64_t part = base * splits; part < (base + 1) * splits; ++part) {
        for (int64_t r = 0; r < rows; ++r) {
          const T part_max = partials.max_log2[part * max_rows + r];
          if (part_max == -INFINITY) continue;
          const T weight = exp2_of(part_max - max_log2[r]);
          sum[r] += weight * partials.sum[part * max_rows + r];
          const T* part_out = partials.out.data() + (part * max_rows + r) * dv;
          for (int64_t d = 0; d < dv; ++d) acc[r * dv + d] += weight * part_out[d];
        }
      }
      write_rows(task, rows, acc.data(), max_log2.data(), sum.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_core_fwd_op(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& block_table, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& indices, int64_t index_block_size, int64_t head_dim_v,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap) {
  return attention_core_fwd_cpu(
      {q, k, v, block_table, cache_seqlens, indices, index_block_size, head_dim_v}, softmax_scale,
      causal, window_left, window_right, softcap);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_core_fwd_cpu(const CoreFwdInputs& in,
                                                          double softmax_scale, bool causal,
                                                          int64_t window_left, int64_t window_right,
                                                          double softcap) {
  CoreFwdParams p =
      check_core_fwd_inputs(in, softmax_scale, causal, window_left, window_right, softcap);
  check_core_index_values(p, in);  // SPEC §0: on CPU, out-of-range values are errors
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const cpu::CpuTilePlan& plan = cpu::cpu_tile_plan();
  const auto acc_dtype = cpu::accumulation_dtype(in.q);
  const bool fp8 = p.kv.storage == KvStorage::kLatentFp8;
  // Tiles multiply in the input's bf16/fp16 where the host does so natively; FP8 latent rows
  // dequantise to fp32 (their scaled values are not bf16 numbers).
  const at::ScalarType tile_dtype =
      !fp8 && cpu::reduced_precision_tiles(in.q.scalar_type()) ? in.q.scalar_type() : acc_dtype;
  // K/V are packed once per call when several tasks read the same keys: a dense band with more
  // than one query tile per kv head, or dense block lists naming at least as many keys as K
  // holds (prefill, training); otherwise each task streams the keys it reads.
  const QueryTiles grid(p.heads_per_kv(), in.indices.has_value() ? 1 : 0, p.seqlen_q,
                        plan.rows_per_task);
  const bool dense_blocks = in.indices.has_value() && in.index_block_size > 1 &&
                            p.seqlen_q * in.indices->size(3) * in.index_block_size >= p.seqlen_k;
  const bool pack_once = !fp8 && !in.block_table.has_value() &&
                         (in.indices.has_value() ? dense_blocks
                                                 : grid.token_tiles * grid.head_chunks > 1);
  at::Tensor out_acc =
      at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim_v}, in.q.options().dtype(acc_dtype));
  at::Tensor lse = at::empty({p.batch, p.heads_q, p.seqlen_q}, in.q.options().dtype(at::kFloat));
  point_core_params(p, in.q, in.k, in.v, in, out_acc, lse);

  auto run = [&](auto accumulate_as, auto tile_element) {
    using T = decltype(accumulate_as);
    using E = decltype(tile_element);
    const CpuKvSource<E> kv{p.kv, in.k.scalar_type(), p.head_dim_qk, p.head_dim_v};
    const KeyTileShape<E> shape(plan.keys_per_tile, p.head_dim_qk, p.head_dim_v);
    const int64_t n_tiles = (p.seqlen_k + shape.keys - 1) / shape.keys;
    const at::Tensor packed =
        pack_once ? pack_all_key_tiles(p, kv, shape, n_tiles, tile_dtype) : at::Tensor();
    // The caller's double scalars, not the params' floats: fp64 stays exact.
    core_fwd_cpu<T, E>(p, kv, pack_once ? static_cast<const E*>(packed.data_ptr()) : nullptr,
                       in.q.scalar_type(), out_acc.data_ptr<T>(), T(softmax_scale), T(softcap));
  };
  cpu::with_tile_types(tile_dtype, run);
  return {out_acc.to(in.q.scalar_type()), lse};
}

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) { m.impl("attention_core_fwd", &attention_core_fwd_op); }

}  // namespace deepseek_attn
