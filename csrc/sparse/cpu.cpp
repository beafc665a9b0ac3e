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

  // The inverse index of each (batch, kv head): for bucket j (a key, or a block), the tokens
  // listing it (repeats kept).
  const int64_t kv_lists = s.batch * s.heads_kv, buckets = lists.buckets();
  std::vector<int64_t> offsets(kv_lists * (buckets + 1), 0);
  std::vector<std::vector<int32_t>> tokens(kv_lists);
  at::parallel_for(0, kv_lists, 1, [&](int64_t begin, int64_t end) {
    for (int64_t list_id = begin; list_id < end; ++list_id) {
      const int64_t b = list_id / s.heads_kv, hk = list_id % s.heads_kv;
      int64_t* offset = offsets.data() + list_id * (buckets + 1);
      for (int64_t t = 0; t < s.seqlen_q; ++t) {
        const int32_t* list = in.indices + ((b * s.seqlen_q + t) * s.heads_kv + hk) * n;
        for (int64_t e = 0; e < n; ++e) {
          if (list[e] >= 0) ++offset[list[e] + 1];
        }
      }
      for (int64_t j = 0; j < buckets; ++j) offset[j + 1] += offset[j];
      std::vector<int32_t>& refs = tokens[list_id];
      refs.resize(offset[buckets]);
      std::vector<int64_t> fill(offset, offset + buckets);
      for (int64_t t = 0; t < s.seqlen_q; ++t) {
        const int32_t* list = in.indices + ((b * s.seqlen_q + t) * s.heads_kv + hk) * n;
        for (int64_t e = 0; e < n; ++e) {
          if (list[e] >= 0) refs[fill[list[e]]++] = int32_t(t);
        }
      }
    }
  });

  // dK = scale · Σ dSᵀ · Q and dV = Σ Pᵀ · dO over each key's references.
  at::parallel_for(0, kv_lists * s.seqlen_k, 64, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t list_id = task / s.seqlen_k, key = task % s.seqlen_k;
      const int64_t b = list_id / s.heads_kv, hk = list_id % s.heads_kv;
      const int64_t* offset = offsets.data() + list_id * (buckets + 1);
      const int64_t bucket = key / lists.index_block_size;
      const int64_t kv_row = (b * s.seqlen_k + key) * s.heads_kv + hk;
      for (int64_t r = offset[bucket]; r < offset[bucket + 1]; ++r) {
        const int64_t t = tokens[list_id][r];
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
    sparse_attn_bwd_rows<scalar_t>(s, lists, operands, scalar_t(softmax_scale),
                                   dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                                   dv.data_ptr<scalar_t>());
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
