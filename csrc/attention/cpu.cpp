// CPU implementation of tiled causal softmax attention (SPEC §1).
//
// The forward is the shared core's main loop (core/cpu_fwd.cpp) over a dense source and the
// window band. The backward promotes inputs to fp32 once (fp64 stays fp64, for gradcheck) and
// works on tiles: scores of one (query tile x key tile) block at a time through BLAS, never an
// (Sq x Sk) matrix. Its tasks are (batch, kv head, group of key tiles) so dK/dV need no
// reduction across threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "attention/checks.h"
#include "attention/params.h"
#include "common/cpu_tiles.h"
#include "common/online_softmax.h"
#include "core/cpu_fwd.h"
#include "core/cpu_rows.h"

namespace deepseek_attn {
namespace {

constexpr int64_t kBwdBlockQ = 64;
constexpr int64_t kBwdBlockK = 128;

// Pointers and strides of a promoted BSHD tensor; T is the accumulation type.
template <typename T>
struct Bshd {
  const T* data;
  BshdStrides strides;
  const T* row(int64_t b, int64_t s, int64_t h) const {
    return data + b * strides.batch + s * strides.row + h * strides.head;
  }
};

template <typename T>
Bshd<T> bshd_view(const at::Tensor& t) {
  return {t.data_ptr<T>(), bshd_strides(t)};
}

// Keys (or values) transposed once per call, (B, Hkv, D, Sk), so every tile product is A·B.
template <typename T>
struct TransposedKeys {
  at::Tensor storage;
  const T* data;
  int64_t heads_kv, dim, seqlen;
  const T* at(int64_t b, int64_t h, int64_t key) const {
    return data + ((b * heads_kv + h) * dim) * seqlen + key;
  }
};

template <typename T>
TransposedKeys<T> transposed_keys(const at::Tensor& bshd) {
  const at::Tensor t = bshd.permute({0, 2, 3, 1}).contiguous();
  return {t, t.data_ptr<T>(), t.size(1), t.size(2), t.size(3)};
}

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, double softmax_scale,
                                                      bool causal, int64_t window_left,
                                                      int64_t window_right, double softcap,
                                                      bool /*deterministic: backward only*/) {
  // The core's checks would word a dense call's errors differently; run flash_attn's first.
  check_attention_fwd_inputs(q, k, v, softmax_scale, causal, window_left, window_right, softcap);
  return attention_core_fwd_cpu({q, k, v}, softmax_scale, causal, window_left, window_right,
                                softcap);
}

// ---------------------------------------------------------------------------------------------
// Backward

template <typename T>
struct BwdScratch {
  std::vector<T> probs, dprobs, tanh_vals, transposed, dk_acc, dv_acc;
};

template <typename T>
struct BwdOutputs {
  std::vector<T*> dq_groups;  // per key-tile group: unscaled dS·K, contiguous BSHD
  BshdStrides dq_strides;
  T* dk;
  BshdStrides dk_strides;
  T* dv;
  BshdStrides dv_strides;
};

template <typename T>
void attention_bwd_cpu(const AttentionFwdParams& p, const Bshd<T>& q, const Bshd<T>& k,
                       const TransposedKeys<T>& k_t, const TransposedKeys<T>& v_t,
                       const Bshd<T>& dout, const float* lse, const float* delta,
                       const BwdOutputs<T>& grads) {
  const KeyWindow window = p.key_window();
  const int64_t n_groups = static_cast<int64_t>(grads.dq_groups.size());
  const int64_t n_key_tiles = (p.seqlen_k + kBwdBlockK - 1) / kBwdBlockK;
  const int64_t n_tasks = p.batch * p.heads_kv * n_groups;
  std::vector<int64_t> costs(n_tasks, 0);
  for (int64_t t = 0; t < n_tasks; ++t) {
    for (int64_t kt = t % n_groups; kt < n_key_tiles; kt += n_groups) {
      const int64_t j0 = kt * kBwdBlockK, j1 = std::min(j0 + kBwdBlockK, p.seqlen_k);
      costs[t] += std::max<int64_t>(window.end_row_seeing(j1) - window.first_row_seeing(j0), 0);
    }
  }
  const int64_t dqk = p.head_dim_qk, dvd = p.head_dim_v, group = p.heads_per_kv();
  const T scale = p.softmax_scale, softcap = p.softcap;
  std::vector<BwdScratch<T>> scratch(at::get_num_threads());

  cpu::run_tasks_costliest_first(costs, [&](int64_t task, int64_t slot) {
    const int64_t g = task % n_groups;
    const int64_t hk = (task / n_groups) % p.heads_kv;
    const int64_t b = task / (n_groups * p.heads_kv);
    BwdScratch<T>& s = scratch[slot];
    s.probs.resize(kBwdBlockQ * kBwdBlockK);
    s.dprobs.resize(kBwdBlockQ * kBwdBlockK);
    s.transposed.resize(kBwdBlockQ * kBwdBlockK);
    if (softcap > 0) s.tanh_vals.resize(kBwdBlockQ * kBwdBlockK);
    T* tanh_tile = softcap > 0 ? s.tanh_vals.data() : nullptr;
    T* dq_acc = grads.dq_groups[g];

    for (int64_t kt = g; kt < n_key_tiles; kt += n_groups) {
      const int64_t j0 = kt * kBwdBlockK;
      const int64_t cols = std::min(kBwdBlockK, p.seqlen_k - j0);
      s.dk_acc.assign(cols * dqk, T(0));
      s.dv_acc.assign(cols * dvd, T(0));
      const int64_t rows_begin = window.first_row_seeing(j0);
      const int64_t rows_end = window.end_row_seeing(j0 + cols);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const float* lse_h = lse + (b * p.heads_q + h) * p.seqlen_q;
        const float* delta_h = delta + (b * p.heads_q + h) * p.seqlen_q;
        for (int64_t i0 = rows_begin; i0 < rows_end; i0 += kBwdBlockQ) {
          const int64_t rows = std::min(kBwdBlockQ, rows_end - i0);
          const bool full = window.tile_fully_visible(i0, i0 + rows, j0, j0 + cols);
          // P = exp(S - lse), recomputed.
          cpu::gemm_nn(rows, cols, dqk, q.row(b, i0, h), q.strides.row, k_t.at(b, hk, j0),
                       k_t.seqlen, false, s.probs.data(), cols);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            T* pr = s.probs.data() + r * cols;
            cpu::scores_to_logits(pr, cols, scale, softcap, full ? 0 : window.first_key(i) - j0,
                                  full ? cols : window.end_key(i) - j0,
                                  tanh_tile ? tanh_tile + r * cols : nullptr);
            cpu::exp2_shifted_inplace(pr, cols, T(lse_h[i]) * T(kLog2e));
          }
          // dV += P^T dO
          cpu::transpose_tile(s.probs.data(), rows, cols, cols, s.transposed.data());
          cpu::gemm_nn(cols, dvd, rows, s.transposed.data(), rows, dout.row(b, i0, h),
                       dout.strides.row, true, s.dv_acc.data(), dvd);
          // dP = dO V^T, then dS in place.
          cpu::gemm_nn(rows, cols, dvd, dout.row(b, i0, h), dout.strides.row, v_t.at(b, hk, j0),
                       v_t.seqlen, false, s.dprobs.data(), cols);
          for (int64_t r = 0; r < rows; ++r) {
            cpu::softmax_grad_row(s.dprobs.data() + r * cols, s.probs.data() + r * cols,
                                  tanh_tile ? tanh_tile + r * cols : nullptr, cols,
                                  T(delta_h[i0 + r]));
          }
          // dK += dS^T Q ; dQ += dS K (scaled once at the end).
          cpu::transpose_tile(s.dprobs.data(), rows, cols, cols, s.transposed.data());
          cpu::gemm_nn(cols, dqk, rows, s.transposed.data(), rows, q.row(b, i0, h), q.strides.row,
                       true, s.dk_acc.data(), dqk);
          T* dq_tile = dq_acc + b * grads.dq_strides.batch + i0 * grads.dq_strides.row +
                       h * grads.dq_strides.head;
          cpu::gemm_nn(rows, dqk, cols, s.dprobs.data(), cols, k.row(b, j0, hk), k.strides.row,
                       true, dq_tile, grads.dq_strides.row);
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t key = j0 + c;
        T* dk_row = grads.dk + b * grads.dk_strides.batch + key * grads.dk_strides.row +
                    hk * grads.dk_strides.head;
        T* dv_row = grads.dv + b * grads.dv_strides.batch + key * grads.dv_strides.row +
                    hk * grads.dv_strides.head;
        for (int64_t d = 0; d < dqk; ++d) dk_row[d] = s.dk_acc[c * dqk + d] * scale;
        for (int64_t d = 0; d < dvd; ++d) dv_row[d] = s.dv_acc[c * dvd + d];
      }
    }
  });
}

// Enough independent tasks for every thread; each extra group costs one copy of dQ.
int64_t choose_key_tile_groups(const AttentionFwdParams& p) {
  constexpr int64_t kMaxGroups = 8;
  const int64_t heads = std::max<int64_t>(p.batch * p.heads_kv, 1);
  const int64_t wanted = (2 * at::get_num_threads() + heads - 1) / heads;
  const int64_t n_key_tiles = (p.seqlen_k + kBwdBlockK - 1) / kBwdBlockK;
  return std::max<int64_t>(1, std::min({wanted, n_key_tiles, kMaxGroups}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attn_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, double softmax_scale, bool causal,
    int64_t window_left, int64_t window_right, double softcap, bool deterministic) {
  (void)deterministic;  // the CPU reduction order is fixed: always deterministic
  const AttentionShape shape = check_attention_fwd_inputs(q, k, v, softmax_scale, causal,
                                                          window_left, window_right, softcap);
  check_attention_bwd_inputs(shape, q, dout, out, lse);
  AttentionFwdParams p(shape);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc_dtype = cpu::accumulation_dtype(q);
  const auto acc_options = q.options().dtype(acc_dtype);
  const at::Tensor q_acc = q.to(acc_dtype), k_acc = k.to(acc_dtype), v_acc = v.to(acc_dtype);
  const at::Tensor dout_acc = dout.to(acc_dtype);
  // delta_i = sum_d dO_id * O_id (fp32), laid out (B, Hq, Sq) like the LSE.
  const at::Tensor delta =
      (dout_acc * out.to(acc_dtype)).sum(-1).transpose(1, 2).to(at::kFloat).contiguous();
  const at::Tensor lse_contig = lse.contiguous();

  const int64_t n_groups = choose_key_tile_groups(p);
  std::vector<at::Tensor> dq_partials;
  for (int64_t g = 0; g < n_groups; ++g) {
    dq_partials.push_back(
        at::zeros({p.batch, p.seqlen_q, p.heads_q, p.head_dim_qk}, acc_options));
  }
  at::Tensor dk_acc = at::empty({p.batch, p.seqlen_k, p.heads_kv, p.head_dim_qk}, acc_options);
  at::Tensor dv_acc = at::empty({p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v}, acc_options);
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "flash_attn_bwd_cpu", [&] {
    BwdOutputs<scalar_t> grads{{}, bshd_strides(dq_partials[0]), dk_acc.data_ptr<scalar_t>(),
                               bshd_strides(dk_acc), dv_acc.data_ptr<scalar_t>(),
                               bshd_strides(dv_acc)};
    for (const at::Tensor& partial : dq_partials) {
      grads.dq_groups.push_back(partial.data_ptr<scalar_t>());
    }
    attention_bwd_cpu<scalar_t>(p, bshd_view<scalar_t>(q_acc), bshd_view<scalar_t>(k_acc),
                                transposed_keys<scalar_t>(k_acc), transposed_keys<scalar_t>(v_acc),
                                bshd_view<scalar_t>(dout_acc), lse_contig.data_ptr<float>(),
                                delta.data_ptr<float>(), grads);
  });
  at::Tensor dq_acc = dq_partials[0];
  for (int64_t g = 1; g < n_groups; ++g) dq_acc.add_(dq_partials[g]);  // fixed order
  dq_acc.mul_(softmax_scale);
  const auto dtype = q.scalar_type();
  return {dq_acc.to(dtype), dk_acc.to(dtype), dv_acc.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) {
  m.impl("flash_attn_fwd", &flash_attn_fwd_cpu);
  m.impl("flash_attn_bwd", &flash_attn_bwd_cpu);
}

}  // namespace deepseek_attn
