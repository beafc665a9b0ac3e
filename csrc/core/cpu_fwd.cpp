// CPU main loop of the shared attention core (forward of SPEC §1, over the sources of §3 and the
// selections of §4-§5).
//
// A task is one query tile of one kv head: up to kRowsPerTask rows, each a (query token, query
// head) pair of the kv head's GQA group, tokens outer, so the heads of a group share every key
// tile. Keys come in tiles of kKeysPerTile: consecutive keys of the window band, or consecutive
// entries of an index list. Dense band tiles are read in place (K transposed once per call);
// so are the blocks of dense block lists; every other tile is gathered through the KV source
// into scratch, so paged, latent and listed keys reuse the same tile GEMMs and row kernels.
// Inputs are promoted to fp32 once (fp64 stays fp64, for gradcheck); the FP8 latent cache is
// dequantised as its rows are gathered.

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

constexpr int64_t kRowsPerTask = 64;
constexpr int64_t kKeysPerTile = 256;

// n values of type S at `source` converted to T, every `stride`-th element of `destination`.
template <typename S, typename T>
void convert_row(const void* source, int64_t n, T* destination, int64_t stride) {
  const S* values = static_cast<const S*>(source);
  for (int64_t d = 0; d < n; ++d) {
    if constexpr (std::is_floating_point_v<S>) {
      destination[d * stride] = T(values[d]);  // fp64 stays exact
    } else {
      destination[d * stride] = T(static_cast<float>(values[d]));
    }
  }
}

// The KV source for accumulation type T. Dense band tiles read K transposed and V converted to T
// once per call; gathered keys are converted row by row from the caller's cache (`storage`,
// the query's dtype; FP8 latent rows as bytes), so a decode never converts a whole cache.
template <typename T>
struct CpuKvSource {
  KvSourceParams layout;
  int64_t dim_qk = 0, dim_v = 0;
  const T* k_transposed = nullptr;  // dense band tiles: (B, Hkv, Dqk, Sk), else null
  int64_t seqlen_k = 0;
  at::ScalarType storage = at::kFloat;

  // Dense band tiles only: layout.v (or k) then points at T values.
  const T* values() const {
    return static_cast<const T*>(layout.values_in_keys() ? layout.k : layout.v);
  }

  void read_row(const void* source, int64_t n, T* destination, int64_t stride) const {
    switch (storage) {
      case at::kDouble:
        return convert_row<double>(source, n, destination, stride);
      case at::kBFloat16:
        return convert_row<c10::BFloat16>(source, n, destination, stride);
      case at::kHalf:
        return convert_row<c10::Half>(source, n, destination, stride);
      default:
        return convert_row<float>(source, n, destination, stride);
    }
  }

  // Key `key` of (batch, head) as row `col` of k_rows (cols x Dqk) and of v_tile (cols x Dv);
  // rows are written contiguously (the caller transposes K in cache-sized blocks). The key's
  // page is valid (checked before the loop).
  void gather(int64_t batch, int64_t head, int64_t key, int64_t col, T* k_rows, T* v_tile) const {
    const int64_t page = layout.page_of(batch, key);
    T* k_row_out = k_rows + col * dim_qk;
    T* v_row = v_tile + col * dim_v;
    if (layout.storage == KvStorage::kLatentFp8) {
      using Layout = LatentFp8Layout;
      const uint8_t* row = static_cast<const uint8_t*>(layout.k) +
                           layout.row_offset(layout.k_strides, page, key, head);
      float scales[Layout::kQuantized / Layout::kGroup];
      std::memcpy(scales, row + Layout::kScaleOffset, sizeof(scales));
      for (int64_t d = 0; d < Layout::kQuantized; ++d) {
        k_row_out[d] = T(e4m3_to_float(row[d]) * scales[d / Layout::kGroup]);
      }
      for (int64_t d = 0; d < Layout::kRope; ++d) {
        uint16_t bits;
        std::memcpy(&bits, row + Layout::kRopeOffset + 2 * d, sizeof(bits));
        k_row_out[Layout::kQuantized + d] = T(bf16_bits_to_float(bits));
      }
      std::copy(k_row_out, k_row_out + dim_v, v_row);
      return;
    }
    const int64_t element = c10::elementSize(storage);
    const char* k_row = static_cast<const char*>(layout.k) +
                        layout.row_offset(layout.k_strides, page, key, head) * element;
    read_row(k_row, dim_qk, k_row_out, 1);
    if (layout.values_in_keys()) {  // latent rows: the values are the key's first columns
      std::copy(k_row_out, k_row_out + dim_v, v_row);
      return;
    }
    read_row(static_cast<const char*>(layout.v) +
                 layout.row_offset(layout.v_strides, page, key, head) * element,
             dim_v, v_row, 1);
  }
};

template <typename T>
struct TaskScratch {
  std::vector<T> q_tile, scores, out, k_rows, k_tile, v_tile;
  std::vector<OnlineSoftmaxRow<T>> state;
};

template <typename T>
void core_fwd_cpu(const CoreFwdParams& p, const CpuKvSource<T>& kv, T* out, T softmax_scale,
                  T softcap) {
  const T* q = static_cast<const T*>(p.q);
  const KeySelectionParams& selection = p.selection;
  const QueryTiles grid(p.heads_per_kv(), selection.listed() ? 1 : 0, p.seqlen_q, kRowsPerTask);
  const int64_t group = p.heads_per_kv(), dqk = p.head_dim_qk, dv = p.head_dim_v;
  const int64_t n_tasks = p.batch * p.heads_kv * grid.head_chunks * grid.token_tiles;

  // Task index -> (batch b, kv head hk, tokens [t0, t1), heads [h0, h0 + nh)); token tiles
  // vary fastest, then head chunks, kv heads and batches.
  struct Task {
    int64_t b, hk, t0, t1, h0, nh, seqlen;
    KeyWindow band;
  };
  auto task_of = [&](int64_t index) {
    Task t;
    const int64_t chunk = (index / grid.token_tiles) % grid.head_chunks;
    t.hk = (index / (grid.token_tiles * grid.head_chunks)) % p.heads_kv;
    t.b = index / (grid.token_tiles * grid.head_chunks * p.heads_kv);
    t.t0 = (index % grid.token_tiles) * grid.tokens_per_tile;
    t.t1 = std::min(t.t0 + grid.tokens_per_tile, p.seqlen_q);
    t.h0 = t.hk * group + chunk * grid.heads_per_tile;
    t.nh = std::min(t.h0 + grid.heads_per_tile, (t.hk + 1) * group) - t.h0;
    t.seqlen = kv.layout.seqlen_of(t.b, p.seqlen_k);
    t.band = selection.band(p.seqlen_q, t.seqlen);
    return t;
  };
  std::vector<int64_t> costs(n_tasks);
  for (int64_t index = 0; index < n_tasks; ++index) {
    const Task t = task_of(index);
    costs[index] = selection.listed()
                       ? selection.num_entries()
                       : std::max<int64_t>(t.band.end_key(t.t1 - 1) - t.band.first_key(t.t0), 0);
  }
  std::vector<TaskScratch<T>> scratch(at::get_num_threads());

  cpu::run_tasks_costliest_first(costs, [&](int64_t index, int64_t slot) {
    const auto [b, hk, t0, t1, h0, nh, seqlen, band] = task_of(index);
    const int64_t rows = (t1 - t0) * nh;  // row r: token t0 + r / nh, head h0 + r % nh

    TaskScratch<T>& s = scratch[slot];
    s.q_tile.resize(rows * dqk);
    s.scores.resize(rows * kKeysPerTile);
    s.out.assign(rows * dv, T(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* q_row = q + b * p.q_strides.batch + (t0 + r / nh) * p.q_strides.row +
                       (h0 + r % nh) * p.q_strides.head;
      std::copy(q_row, q_row + dqk, s.q_tile.data() + r * dqk);
    }
    std::vector<OnlineSoftmaxRow<T>>& state = s.state;
    state.assign(rows, OnlineSoftmaxRow<T>());

    // One key tile: S = Q K^T, mask, online softmax, O += P V. Band tiles start at key j0;
    // listed tiles hold only selected keys (full).
    auto consume_tile = [&](const T* k_tile, int64_t ld_k, const T* v_tile, int64_t ld_v,
                            int64_t cols, int64_t j0, bool full) {
      cpu::gemm_nn(rows, cols, dqk, s.q_tile.data(), dqk, k_tile, ld_k, false, s.scores.data(),
                   cols);
      for (int64_t r = 0; r < rows; ++r) {
        T* scores = s.scores.data() + r * cols;
        const int64_t token = t0 + r / nh;
        const int64_t vis_begin = full ? 0 : band.first_key(token) - j0;
        const int64_t vis_end = full ? cols : band.end_key(token) - j0;
        cpu::scores_to_logits(scores, cols, softmax_scale, softcap, vis_begin, vis_end,
                              static_cast<T*>(nullptr));
        const T rescale = state[r].update_max(cpu::row_max(scores, cols));
        state[r].sum += cpu::exp2_shifted_inplace(scores, cols, state[r].max_log2);
        if (rescale != T(1)) cpu::scale_row(s.out.data() + r * dv, dv, rescale);
      }
      cpu::gemm_nn(rows, dv, cols, s.scores.data(), cols, v_tile, ld_v, true, s.out.data(), dv);
    };

    // Dense keys j0.. of this kv head read in place (K transposed once per call).
    auto consume_in_place = [&](int64_t j0, int64_t cols, bool full) {
      const T* k_tile = kv.k_transposed + ((b * p.heads_kv + hk) * dqk) * kv.seqlen_k + j0;
      const BshdStrides& vs =
          kv.layout.values_in_keys() ? kv.layout.k_strides : kv.layout.v_strides;
      const T* v_tile = kv.values() + kv.layout.row_offset(vs, b, j0, hk);
      consume_tile(k_tile, kv.seqlen_k, v_tile, vs.row, cols, j0, full);
    };

    if (selection.listed() && kv.k_transposed != nullptr) {
      // Dense block lists: each listed block is a key range, consumed in place for the tile's
      // one token (a block listed twice counts twice), masked by the band.
      const int64_t block = selection.index_block_size;
      const int64_t first = band.first_key(t0), end = band.end_key(t0);
      for (int64_t e = 0; e < selection.num_indices; ++e) {
        const int64_t j0 = selection.key_of_entry(b, t0, hk, e * block);
        const int64_t cols = std::min(block, end - j0);
        if (j0 < 0 || cols <= 0 || j0 + cols <= first) continue;
        consume_in_place(j0, cols, false);
      }
    } else if (!selection.listed()) {
      const int64_t key_begin = band.first_key(t0), key_end = band.end_key(t1 - 1);
      for (int64_t j0 = key_begin; j0 < key_end; j0 += kKeysPerTile) {
        const int64_t cols = std::min(kKeysPerTile, key_end - j0);
        const bool full = band.tile_fully_visible(t0, t1, j0, j0 + cols);
        if (kv.k_transposed != nullptr) {  // dense: tiles in place
          consume_in_place(j0, cols, full);
          continue;
        }
        s.k_rows.resize(cols * dqk);
        s.k_tile.resize(dqk * cols);
        s.v_tile.resize(cols * dv);
        for (int64_t c = 0; c < cols; ++c) {
          kv.gather(b, hk, j0 + c, c, s.k_rows.data(), s.v_tile.data());
        }
        cpu::transpose_tile(s.k_rows.data(), cols, dqk, dqk, s.k_tile.data());
        consume_tile(s.k_tile.data(), cols, s.v_tile.data(), dv, cols, j0, full);
      }
    } else {
      // The selected entries are packed into full tiles (a listed tile holds one token's keys:
      // order does not matter to the softmax, and a key listed twice is gathered twice).
      const int64_t entries = selection.num_entries();
      s.k_rows.resize(kKeysPerTile * dqk);
      s.k_tile.resize(dqk * kKeysPerTile);
      s.v_tile.resize(kKeysPerTile * dv);
      int64_t cols = 0;
      for (int64_t e = 0; e < entries; ++e) {
        const int64_t key = selection.key_of_entry(b, t0, hk, e);
        if (key >= 0 && key < seqlen && band.visible(t0, key)) {
          kv.gather(b, hk, key, cols++, s.k_rows.data(), s.v_tile.data());
        }
        if (cols == kKeysPerTile || (e + 1 == entries && cols > 0)) {
          cpu::transpose_tile(s.k_rows.data(), cols, dqk, dqk, s.k_tile.data());
          consume_tile(s.k_tile.data(), cols, s.v_tile.data(), dv, cols, 0, true);
          cols = 0;
        }
      }
    }

    for (int64_t r = 0; r < rows; ++r) {
      const int64_t token = t0 + r / nh, head = h0 + r % nh;
      T* dst =
          out + b * p.out_strides.batch + token * p.out_strides.row + head * p.out_strides.head;
      const T inv_sum = state[r].sum > 0 ? T(1) / state[r].sum : T(0);
      for (int64_t d = 0; d < dv; ++d) dst[d] = s.out[r * dv + d] * inv_sum;
      p.lse[(b * p.heads_q + head) * p.seqlen_q + token] = static_cast<float>(state[r].lse());
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
  const auto acc_dtype = cpu::accumulation_dtype(in.q);
  const bool fp8 = p.kv.storage == KvStorage::kLatentFp8;
  const at::Tensor q_acc = in.q.to(acc_dtype);
  // Dense band tiles are read in place from K transposed once, so every tile product is A·B;
  // so are dense block lists that name at least as many keys as K holds (prefill, training);
  // every other source is gathered (and converted) key by key from the caller's tensors.
  const bool dense_blocks = in.indices.has_value() && in.index_block_size > 1 &&
                            p.seqlen_q * in.indices->size(3) * in.index_block_size >= p.seqlen_k;
  const bool in_place =
      !fp8 && !in.block_table.has_value() && (!in.indices.has_value() || dense_blocks);
  const at::Tensor k_acc = in_place ? in.k.to(acc_dtype) : in.k;
  const std::optional<at::Tensor> v_acc =
      in.v.has_value() && in_place ? std::optional<at::Tensor>(in.v->to(acc_dtype)) : in.v;
  at::Tensor out_acc =
      at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim_v}, in.q.options().dtype(acc_dtype));
  at::Tensor lse = at::empty({p.batch, p.heads_q, p.seqlen_q}, in.q.options().dtype(at::kFloat));
  point_core_params(p, q_acc, k_acc, v_acc, in, out_acc, lse);
  const at::Tensor k_transposed =
      in_place ? k_acc.permute({0, 2, 3, 1}).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "attention_core_fwd_cpu", [&] {
    CpuKvSource<scalar_t> kv{p.kv,         p.head_dim_qk,
                             p.head_dim_v, in_place ? k_transposed.data_ptr<scalar_t>() : nullptr,
                             p.seqlen_k,   k_acc.scalar_type()};
    // The caller's double scalars, not the params' floats: fp64 stays exact.
    core_fwd_cpu<scalar_t>(p, kv, out_acc.data_ptr<scalar_t>(), scalar_t(softmax_scale),
                           scalar_t(softcap));
  });
  return {out_acc.to(in.q.scalar_type()), lse};
}

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) { m.impl("attention_core_fwd", &attention_core_fwd_op); }

}  // namespace deepseek_attn
