// CPU implementation of the sparse attention backward (SPEC §4, and §5's block lists; the forward
// is the core's, over index lists): P is recomputed from the forward's LSE, entry by entry, so a
// key listed twice contributes twice, exactly as in the forward.
//   dQ: parallel over (batch, token, kv head) rows, each reading its own entries (blocks walked
//   key by key, never expanded in memory);
//   dK, dV: through an inverse index (for every key or block, the tokens whose lists name it),
//   parallel over keys, so every gradient row has one writer: no atomics, deterministic.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_tiles.h"
#include "sparse/checks.h"
#include "sparse/params.h"

namespace deepseek_attn {
namespace {

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

template <typename T>
void axpy(T alpha, const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Contiguous views in the accumulation type T (BSHD); `v_row` is the row pitch of the values
// (k's for latent rows, whose values are k's first head_dim_v columns).
template <typename T>
struct SparseBwdOperands {
  const T *q, *k, *v, *dout, *delta;
  const float* lse;
  const int32_t* indices;
  int64_t v_row;
};

// For every (batch, kv head) list and bucket j (a key, or a block), the tokens whose lists name
// it, in token order, repeats kept (a counting sort).
struct InverseIndex {
  int64_t buckets;
  std::vector<int64_t> offsets;               // (B·Hkv, buckets + 1)
  std::vector<std::vector<int32_t>> tokens;   // per (batch, kv head)

  InverseIndex(const SparseAttnShape& s, const SparseBwdParams& lists, const int32_t* indices)
      : buckets(lists.buckets()),
        offsets(s.batch * s.heads_kv * (buckets + 1), 0),
        tokens(s.batch * s.heads_kv) {
    const int64_t n = s.num_indices;
    at::parallel_for(0, s.batch * s.heads_kv, 1, [&](int64_t begin, int64_t end) {
      for (int64_t list_id = begin; list_id < end; ++list_id) {
        const int64_t b = list_id / s.heads_kv, hk = list_id % s.heads_kv;
        int64_t* offset = offsets.data() + list_id * (buckets + 1);
        const auto list_of = [&](int64_t t) {
          return indices + ((b * s.seqlen_q + t) * s.heads_kv + hk) * n;
        };
        for (int64_t t = 0; t < s.seqlen_q; ++t) {
          for (int64_t e = 0; e < n; ++e) {
            if (list_of(t)[e] >= 0) ++offset[list_of(t)[e] + 1];
          }
        }
        for (int64_t j = 0; j < buckets; ++j) offset[j + 1] += offset[j];
        std::vector<int32_t>& refs = tokens[list_id];
        refs.resize(offset[buckets]);
        std::vector<int64_t> fill(offset, offset + buckets);
        for (int64_t t = 0; t < s.seqlen_q; ++t) {
          for (int64_t e = 0; e < n; ++e) {
            if (list_of(t)[e] >= 0) refs[fill[list_of(t)[e]]++] = int32_t(t);
          }
        }
      }
    });
  }
  int64_t begin(int64_t list_id, int64_t bucket) const {
    return offsets[list_id * (buckets + 1) + bucket];
  }
  int64_t end(int64_t list_id, int64_t bucket) const { return begin(list_id, bucket + 1); }
};

// `lists` gives the lists' geometry (index_block_size, causal, buckets) and visibility rule.
template <typename T>
void sparse_attn_bwd_rows(const SparseAttnShape& s, const SparseBwdParams& lists,
                          const SparseBwdOperands<T>& in, T scale, T* dq, T* dk, T* dv) {
  const int64_t group = s.heads_per_kv(), n = s.num_indices, entries = lists.num_entries();
  const int64_t dqk = s.head_dim_qk, dvd = s.head_dim_v;
  // The probability and dS of entry key `key` for query row (b, t, h).
  const auto entry = [&](int64_t b, int64_t t, int64_t h, int64_t key, T& p, T& ds) {
    const float lse = in.lse[(b * s.heads_q + h) * s.seqlen_q + t];
    const int64_t row = (b * s.seqlen_q + t) * s.heads_q + h;
    const int64_t kv_row = (b * s.seqlen_k + key) * s.heads_kv + h / group;
    if (lse == -std::numeric_limits<float>::infinity()) {  // a row that sees no key
      p = ds = 0;
      return;
    }
    p = std::exp(scale * dot(in.q + row * dqk, in.k + kv_row * dqk, dqk) - T(lse));
    ds = p * (dot(in.dout + row * dvd, in.v + kv_row * in.v_row, dvd) - in.delta[row]);
  };

  // dQ = scale · Σ_entries dS · K.
  at::parallel_for(0, s.batch * s.seqlen_q * s.heads_kv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t hk = task % s.heads_kv, t = (task / s.heads_kv) % s.seqlen_q;
      const int64_t b = task / (s.heads_kv * s.seqlen_q);
      const int32_t* list = in.indices + task * n;
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        T* dq_row = dq + ((b * s.seqlen_q + t) * s.heads_q + h) * dqk;
        for (int64_t e = 0; e < entries; ++e) {
          const int64_t key = lists.key_of_entry(list, e, t);
          if (key < 0) continue;
          T p, ds;
          entry(b, t, h, key, p, ds);
          axpy(scale * ds, in.k + ((b * s.seqlen_k + key) * s.heads_kv + hk) * dqk, dq_row, dqk);
        }
      }
    }
  });

  const InverseIndex inverse(s, lists, in.indices);

  // dK = scale · Σ dSᵀ · Q and dV = Σ Pᵀ · dO over each key's references.
  at::parallel_for(0, s.batch * s.heads_kv * s.seqlen_k, 64, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t list_id = task / s.seqlen_k, key = task % s.seqlen_k;
      const int64_t b = list_id / s.heads_kv, hk = list_id % s.heads_kv;
      const int64_t bucket = key / lists.index_block_size;
      const int64_t kv_row = (b * s.seqlen_k + key) * s.heads_kv + hk;
      for (int64_t r = inverse.begin(list_id, bucket); r < inverse.end(list_id, bucket); ++r) {
        const int64_t t = inverse.tokens[list_id][r];
        if (!lists.sees(t, key)) continue;  // in this token's future, though its block is listed
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          T p, ds;
          entry(b, t, h, key, p, ds);
          const int64_t row = (b * s.seqlen_q + t) * s.heads_q + h;
          axpy(scale * ds, in.q + row * dqk, dk + kv_row * dqk, dqk);
          axpy(p, in.dout + row * dvd, dv + kv_row * dvd, dvd);
        }
      }
    }
  });
}

// Block lists (SPEC §5) on tile GEMMs, from K and V transposed once per call (kt (B, Hkv, Dqk, Sk),
// vt (B, Hkv, Dv, Sk)), so a block's Kᵀ is a column range:
//   dQ: per (batch, token, kv head), the group's G query rows against each listed block:
//       S = Q·Kᵀ, P = exp(scale·S - lse), dS = P∘(dO·Vᵀ - Δ), dQ += dS·K;
//   dK, dV: per (batch, kv head, block), the rows of the tokens listing it, up to kBlockRows at a
//       time: dV += Pᵀ·dO, dK += dSᵀ·Q, written once (deterministic).
constexpr int64_t kBlockRows = 64;

template <typename T>
struct BlockTileScratch {
  std::vector<T> q, dout, scores, dscores, transposed, dk, dv;
  std::vector<float> lse;
  std::vector<T> delta;
  std::vector<int64_t> last_key;  // per gathered row: its last visible key
};

template <typename T>
void block_sparse_attn_bwd_tiles(const SparseAttnShape& s, const SparseBwdParams& lists,
                                 const SparseBwdOperands<T>& in, const T* kt, const T* vt,
                                 T scale, T* dq, T* dk, T* dv) {
  const int64_t group = s.heads_per_kv(), n = s.num_indices, block = lists.index_block_size;
  const int64_t dqk = s.head_dim_qk, dvd = s.head_dim_v, sk = s.seqlen_k;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const auto kt_of = [&](int64_t b, int64_t hk) { return kt + (b * s.heads_kv + hk) * dqk * sk; };
  const auto vt_of = [&](int64_t b, int64_t hk) { return vt + (b * s.heads_kv + hk) * dvd * sk; };
  // P and dS of `rows` rows from their scores and dO·Vᵀ, in place; columns past a row's last
  // key (first key of the tile `first`) are 0.
  const auto softmax_grad = [&](int64_t rows, int64_t cols, int64_t first, const float* lse,
                                const T* delta, const int64_t* last, T* p, T* ds) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t visible = std::min(cols, last[r] - first + 1);
      for (int64_t c = 0; c < cols; ++c) {
        const T value = c < visible && lse[r] != neg_inf
                            ? std::exp(scale * p[r * cols + c] - T(lse[r])) : T(0);
        p[r * cols + c] = value;
        ds[r * cols + c] = value * (ds[r * cols + c] - delta[r]);
      }
    }
  };
  const int64_t threads = at::get_num_threads();
  std::vector<BlockTileScratch<T>> scratch(threads);
  for (BlockTileScratch<T>& area : scratch) {
    const int64_t rows = std::max(kBlockRows, group);
    area.q.resize(rows * dqk), area.dout.resize(rows * dvd), area.scores.resize(rows * block);
    area.dscores.resize(rows * block), area.transposed.resize(rows * block);
    area.dk.resize(block * dqk), area.dv.resize(block * dvd);
    area.lse.resize(rows), area.delta.resize(rows), area.last_key.resize(rows);
  }

  // dQ (scaled at the end).
  std::vector<int64_t> row_costs(s.batch * s.seqlen_q * s.heads_kv, 1);
  cpu::run_tasks_costliest_first(row_costs, [&](int64_t task, int64_t slot) {
    BlockTileScratch<T>& area = scratch[slot];
    const int64_t hk = task % s.heads_kv, t = (task / s.heads_kv) % s.seqlen_q;
    const int64_t b = task / (s.heads_kv * s.seqlen_q);
    const int64_t row0 = (b * s.seqlen_q + t) * s.heads_q + hk * group;
    const int32_t* list = in.indices + task * n;
    const int64_t last = lists.last_key_seen(t);
    for (int64_t h = 0; h < group; ++h) {
      area.lse[h] = in.lse[(b * s.heads_q + hk * group + h) * s.seqlen_q + t];
      area.delta[h] = in.delta[row0 + h];
      area.last_key[h] = last;
    }
    for (int64_t e = 0; e < n; ++e) {
      const int64_t first = int64_t(list[e]) * block;
      if (list[e] < 0 || first > last) continue;
      const int64_t cols = std::min(block, last - first + 1);
      cpu::gemm_nn(group, cols, dqk, in.q + row0 * dqk, dqk, kt_of(b, hk) + first, sk, false,
                   area.scores.data(), cols);
      cpu::gemm_nn(group, cols, dvd, in.dout + row0 * dvd, dvd, vt_of(b, hk) + first, sk, false,
                   area.dscores.data(), cols);
      softmax_grad(group, cols, first, area.lse.data(), area.delta.data(), area.last_key.data(),
                   area.scores.data(), area.dscores.data());
      cpu::gemm_nn(group, dqk, cols, area.dscores.data(), cols,
                   in.k + ((b * sk + first) * s.heads_kv + hk) * dqk, s.heads_kv * dqk, true,
                   dq + row0 * dqk, dqk);
    }
    for (int64_t i = 0; i < group * dqk; ++i) dq[row0 * dqk + i] *= scale;
  });

  // dK, dV per (batch, kv head, block), costliest (most referenced) first.
  const InverseIndex inverse(s, lists, in.indices);
  const int64_t buckets = inverse.buckets;
  std::vector<int64_t> block_costs(s.batch * s.heads_kv * buckets);
  for (int64_t task = 0; task < int64_t(block_costs.size()); ++task) {
    block_costs[task] = inverse.end(task / buckets, task % buckets) -
                        inverse.begin(task / buckets, task % buckets);
  }
  const int64_t tokens_per_step = std::max<int64_t>(1, kBlockRows / group);
  cpu::run_tasks_costliest_first(block_costs, [&](int64_t task, int64_t slot) {
    BlockTileScratch<T>& area = scratch[slot];
    const int64_t list_id = task / buckets, j = task % buckets;
    const int64_t b = list_id / s.heads_kv, hk = list_id % s.heads_kv;
    const int64_t first = j * block, cols = std::min(block, sk - first);
    const std::vector<int32_t>& tokens = inverse.tokens[list_id];
    std::fill(area.dk.begin(), area.dk.begin() + cols * dqk, T(0));
    std::fill(area.dv.begin(), area.dv.begin() + cols * dvd, T(0));
    bool touched = false;
    for (int64_t r = inverse.begin(list_id, j); r < inverse.end(list_id, j);) {
      int64_t rows = 0;  // gather the group's rows of up to tokens_per_step seeing the block
      for (int64_t taken = 0; taken < tokens_per_step && r < inverse.end(list_id, j); ++r) {
        const int64_t t = tokens[r];
        if (lists.last_key_seen(t) < first) continue;  // the block is in this token's future
        const int64_t row0 = (b * s.seqlen_q + t) * s.heads_q + hk * group;
        std::copy_n(in.q + row0 * dqk, group * dqk, area.q.data() + rows * dqk);
        std::copy_n(in.dout + row0 * dvd, group * dvd, area.dout.data() + rows * dvd);
        for (int64_t h = 0; h < group; ++h, ++rows) {
          area.lse[rows] = in.lse[(b * s.heads_q + hk * group + h) * s.seqlen_q + t];
          area.delta[rows] = in.delta[row0 + h];
          area.last_key[rows] = lists.last_key_seen(t);
        }
        ++taken;
      }
      if (rows == 0) continue;
      touched = true;
      cpu::gemm_nn(rows, cols, dqk, area.q.data(), dqk, kt_of(b, hk) + first, sk, false,
                   area.scores.data(), cols);
      cpu::gemm_nn(rows, cols, dvd, area.dout.data(), dvd, vt_of(b, hk) + first, sk, false,
                   area.dscores.data(), cols);
      softmax_grad(rows, cols, first, area.lse.data(), area.delta.data(), area.last_key.data(),
                   area.scores.data(), area.dscores.data());
      cpu::transpose_tile(area.scores.data(), rows, cols, cols, area.transposed.data());
      cpu::gemm_nn(cols, dvd, rows, area.transposed.data(), rows, area.dout.data(), dvd, true,
                   area.dv.data(), dvd);
      cpu::transpose_tile(area.dscores.data(), rows, cols, cols, area.transposed.data());
      cpu::gemm_nn(cols, dqk, rows, area.transposed.data(), rows, area.q.data(), dqk, true,
                   area.dk.data(), dqk);
    }
    if (!touched) return;  // dk, dv stay zero
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t kv_row = (b * sk + first + c) * s.heads_kv + hk;
      for (int64_t d = 0; d < dqk; ++d) dk[kv_row * dqk + d] = scale * area.dk[c * dqk + d];
      std::copy_n(area.dv.data() + c * dvd, dvd, dv + kv_row * dvd);
    }
  });
}

// The backward over token lists (index_block_size 1) or block lists (causal inside the blocks).
std::tuple<at::Tensor, at::Tensor, at::Tensor> index_lists_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
    const std::optional<at::Tensor>& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& indices, int64_t head_dim_v, double softmax_scale, int64_t index_block_size,
    bool causal) {
  const SparseAttnShape s =
      check_sparse_attn_bwd_inputs(dout, q, k, v, out, lse, indices, head_dim_v);
  const at::Tensor idx = indices.contiguous();
  // SPEC §0: on CPU, out-of-range indices are errors
  check_sparse_index_values(idx, s.seqlen_k, index_block_size);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc = cpu::accumulation_dtype(q);
  const at::Tensor q_acc = q.to(acc).contiguous(), k_acc = k.to(acc).contiguous();
  const at::Tensor v_acc = v.has_value() ? v->to(acc).contiguous() : k_acc;
  const at::Tensor dout_acc = dout.to(acc).contiguous();
  const at::Tensor delta = (dout_acc * out.to(acc)).sum(-1).contiguous();  // (B, Sq, Hq)
  const at::Tensor lse_contig = lse.contiguous();
  at::Tensor dq = at::zeros_like(q_acc), dk = at::zeros_like(k_acc);
  at::Tensor dv = at::zeros({s.batch, s.seqlen_k, s.heads_kv, s.head_dim_v}, q_acc.options());
  SparseBwdParams lists;
  lists.seqlen_q = s.seqlen_q, lists.seqlen_k = s.seqlen_k, lists.num_indices = s.num_indices;
  lists.index_block_size = index_block_size, lists.causal = causal;
  AT_DISPATCH_FLOATING_TYPES(acc, "sparse_attn_bwd_cpu", [&] {
    const SparseBwdOperands<scalar_t> operands{
        q_acc.data_ptr<scalar_t>(),   k_acc.data_ptr<scalar_t>(),
        v_acc.data_ptr<scalar_t>(),   dout_acc.data_ptr<scalar_t>(),
        delta.data_ptr<scalar_t>(),   lse_contig.data_ptr<float>(),
        idx.data_ptr<int32_t>(),      v.has_value() ? s.head_dim_v : s.head_dim_qk};
    if (index_block_size == 1) {
      sparse_attn_bwd_rows<scalar_t>(s, lists, operands, scalar_t(softmax_scale),
                                     dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                                     dv.data_ptr<scalar_t>());
    } else {
      const at::Tensor kt = k_acc.permute({0, 2, 3, 1}).contiguous();
      const at::Tensor vt = v_acc.narrow(3, 0, s.head_dim_v).permute({0, 2, 3, 1}).contiguous();
      block_sparse_attn_bwd_tiles<scalar_t>(s, lists, operands, kt.data_ptr<scalar_t>(),
                                            vt.data_ptr<scalar_t>(), scalar_t(softmax_scale),
                                            dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                                            dv.data_ptr<scalar_t>());
    }
  });
  const auto dtype = q.scalar_type();
  if (!v.has_value()) {  // latent rows: the values are k's first head_dim_v columns
    dk.narrow(3, 0, s.head_dim_v).add_(dv);
    return {dq.to(dtype), dk.to(dtype), at::empty({0}, q.options())};
  }
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attn_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
    const std::optional<at::Tensor>& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& indices, int64_t head_dim_v, double softmax_scale) {
  return index_lists_bwd_cpu(dout, q, k, v, out, lse, indices, head_dim_v, softmax_scale, 1,
                             false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attn_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& block_indices,
    int64_t block_size, bool causal, double softmax_scale) {
  check_block_size(block_size);
  return index_lists_bwd_cpu(dout, q, k, v, out, lse, block_indices, v.size(-1), softmax_scale,
                             block_size, causal);
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) {
  m.impl("sparse_attn_bwd", &sparse_attn_bwd_cpu);
  m.impl("block_sparse_attn_bwd", &block_sparse_attn_bwd_cpu);
}

}  // namespace deepseek_attn
