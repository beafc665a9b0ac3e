// CPU implementation of tiled causal softmax attention (SPEC §1).
//
// Inputs are promoted to fp32 once (fp64 inputs stay fp64, for gradcheck), O(B·S·H·D) memory;
// the kernels then work on tiles:
// scores of one (query tile x key tile) block at a time through BLAS, online softmax in between,
// never an (Sq x Sk) matrix. Forward tasks are (batch, head, query tile); backward tasks are
// (batch, kv head, group of key tiles) so dK/dV need no reduction across threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "attention/checks.h"
#include "attention/params.h"
#include "common/cpu_tiles.h"
#include "common/online_softmax.h"

namespace deepseek_attn {
namespace {

constexpr int64_t kFwdBlockQ = 64;
constexpr int64_t kFwdBlockK = 256;
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

// Row kernels. Each is written once as a template and instantiated for fp32 with AVX2/AVX-512
// clones (the hot path) and for fp64. Forced inlining lets each clone vectorise its own copy.
#define DEEPSEEK_ATTN_ROW_KERNEL_FP32(name, ret, params, args) \
  DEEPSEEK_ATTN_CPU_MULTIVERSION ret name params { return name##_impl<float> args; }

// Turns raw q·k dot products of one row into log2-domain logits: scale, soft-cap, mask.
// Writes tanh of the capped logits to `tanh_out` when soft-capping (the backward needs it).
template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE void scores_to_logits_impl(T* s, int64_t cols, T scale, T softcap,
                                                       int64_t visible_begin, int64_t visible_end,
                                                       T* tanh_out) {
  if (softcap > 0) {
    const T inv_cap = scale / softcap;
    for (int64_t c = 0; c < cols; ++c) {
      const T t = std::tanh(s[c] * inv_cap);
      if (tanh_out != nullptr) tanh_out[c] = t;
      s[c] = softcap * t * T(kLog2e);
    }
  } else {
    const T scale_log2 = scale * T(kLog2e);
    for (int64_t c = 0; c < cols; ++c) s[c] *= scale_log2;
  }
  for (int64_t c = 0; c < std::min(visible_begin, cols); ++c) s[c] = -INFINITY;
  for (int64_t c = std::max<int64_t>(visible_end, 0); c < cols; ++c) s[c] = -INFINITY;
}

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE T row_max_impl(const T* s, int64_t cols) {
  T m = -INFINITY;
  for (int64_t c = 0; c < cols; ++c) m = std::max(m, s[c]);
  return m;
}

// s <- 2^(s - shift) in place; returns the row sum. A shift of -inf means an empty row: zeros.
template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE T exp2_shifted_inplace_impl(T* s, int64_t cols, T shift) {
  if (shift == -INFINITY) {
    std::fill(s, s + cols, T(0));
    return 0;
  }
  T sum = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const T p = cpu::exp2_nonpositive(s[c] - shift);
    s[c] = p;
    sum += p;
  }
  return sum;
}

template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE void scale_row_impl(T* x, int64_t n, T factor) {
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

// dS = P * (dP - delta) [* (1 - tanh^2) when soft-capped], in place over dP.
template <typename T>
DEEPSEEK_ATTN_ALWAYS_INLINE void softmax_grad_row_impl(T* dp, const T* p, const T* tanh_row,
                                                       int64_t cols, T delta) {
  if (tanh_row != nullptr) {
    for (int64_t c = 0; c < cols; ++c) {
      dp[c] = p[c] * (dp[c] - delta) * (T(1) - tanh_row[c] * tanh_row[c]);
    }
  } else {
    for (int64_t c = 0; c < cols; ++c) dp[c] = p[c] * (dp[c] - delta);
  }
}

DEEPSEEK_ATTN_ROW_KERNEL_FP32(scores_to_logits, void,
                              (float* s, int64_t cols, float scale, float softcap,
                               int64_t visible_begin, int64_t visible_end, float* tanh_out),
                              (s, cols, scale, softcap, visible_begin, visible_end, tanh_out))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(row_max, float, (const float* s, int64_t cols), (s, cols))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(exp2_shifted_inplace, float, (float* s, int64_t cols, float shift),
                              (s, cols, shift))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(scale_row, void, (float* x, int64_t n, float factor), (x, n, factor))
DEEPSEEK_ATTN_ROW_KERNEL_FP32(softmax_grad_row, void,
                              (float* dp, const float* p, const float* tanh_row, int64_t cols,
                               float delta),
                              (dp, p, tanh_row, cols, delta))

void scores_to_logits(double* s, int64_t cols, double scale, double softcap,
                      int64_t visible_begin, int64_t visible_end, double* tanh_out) {
  scores_to_logits_impl<double>(s, cols, scale, softcap, visible_begin, visible_end, tanh_out);
}
double row_max(const double* s, int64_t cols) { return row_max_impl<double>(s, cols); }
double exp2_shifted_inplace(double* s, int64_t cols, double shift) {
  return exp2_shifted_inplace_impl<double>(s, cols, shift);
}
void scale_row(double* x, int64_t n, double factor) { scale_row_impl<double>(x, n, factor); }
void softmax_grad_row(double* dp, const double* p, const double* tanh_row, int64_t cols,
                      double delta) {
  softmax_grad_row_impl<double>(dp, p, tanh_row, cols, delta);
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename T>
void attention_fwd_cpu(const AttentionFwdParams& p, const Bshd<T>& q, const TransposedKeys<T>& k_t,
                       const Bshd<T>& v, T* out, const BshdStrides& out_strides) {
  const KeyWindow window = p.key_window();
  const int64_t n_row_tiles = (p.seqlen_q + kFwdBlockQ - 1) / kFwdBlockQ;
  const int64_t n_tasks = p.batch * p.heads_q * n_row_tiles;
  std::vector<int64_t> costs(n_tasks);
  for (int64_t t = 0; t < n_tasks; ++t) {
    const int64_t row_begin = (t % n_row_tiles) * kFwdBlockQ;
    const int64_t row_end = std::min(row_begin + kFwdBlockQ, p.seqlen_q);
    costs[t] = std::max<int64_t>(window.end_key(row_end - 1) - window.first_key(row_begin), 0);
  }
  const int64_t n_slots = at::get_num_threads();
  std::vector<std::vector<T>> scores(n_slots), acc(n_slots);

  cpu::run_tasks_costliest_first(costs, [&](int64_t task, int64_t slot) {
    const int64_t tile = task % n_row_tiles;
    const int64_t h = (task / n_row_tiles) % p.heads_q;
    const int64_t b = task / (n_row_tiles * p.heads_q);
    const int64_t hk = h / p.heads_per_kv();
    const int64_t row_begin = tile * kFwdBlockQ;
    const int64_t rows = std::min(kFwdBlockQ, p.seqlen_q - row_begin);
    const int64_t dqk = p.head_dim_qk, dv = p.head_dim_v;
    std::vector<T>& s_buf = scores[slot];
    std::vector<T>& o_buf = acc[slot];
    s_buf.resize(kFwdBlockQ * kFwdBlockK);
    o_buf.assign(rows * dv, T(0));
    OnlineSoftmaxRow<T> state[kFwdBlockQ];

    const int64_t key_begin = window.first_key(row_begin);
    const int64_t key_end = window.end_key(row_begin + rows - 1);
    for (int64_t j0 = key_begin; j0 < key_end; j0 += kFwdBlockK) {
      const int64_t cols = std::min(kFwdBlockK, key_end - j0);
      cpu::gemm_nn(rows, cols, dqk, q.row(b, row_begin, h), q.strides.row, k_t.at(b, hk, j0),
                   k_t.seqlen, false, s_buf.data(), cols);
      const bool full = window.tile_fully_visible(row_begin, row_begin + rows, j0, j0 + cols);
      for (int64_t r = 0; r < rows; ++r) {
        T* s = s_buf.data() + r * cols;
        const int64_t i = row_begin + r;
        const int64_t vis_begin = full ? 0 : window.first_key(i) - j0;
        const int64_t vis_end = full ? cols : window.end_key(i) - j0;
        scores_to_logits(s, cols, T(p.softmax_scale), T(p.softcap), vis_begin, vis_end,
                         static_cast<T*>(nullptr));
        const T rescale = state[r].update_max(row_max(s, cols));
        state[r].sum += exp2_shifted_inplace(s, cols, state[r].max_log2);
        if (rescale != T(1)) scale_row(o_buf.data() + r * dv, dv, rescale);
      }
      cpu::gemm_nn(rows, dv, cols, s_buf.data(), cols, v.row(b, j0, hk), v.strides.row, true,
                   o_buf.data(), dv);
    }

    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row_begin + r;
      T* dst = out + b * out_strides.batch + i * out_strides.row + h * out_strides.head;
      const T inv_sum = state[r].sum > 0 ? T(1) / state[r].sum : T(0);
      for (int64_t d = 0; d < dv; ++d) dst[d] = o_buf[r * dv + d] * inv_sum;
      p.lse[(b * p.heads_q + h) * p.seqlen_q + i] = static_cast<float>(state[r].lse());
    }
  });
}

// fp64 inputs compute in fp64 (gradcheck); everything else accumulates in fp32 (SPEC §0).
at::ScalarType accumulation_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, double softmax_scale,
                                                      bool causal, int64_t window_left,
                                                      int64_t window_right, double softcap,
                                                      bool /*deterministic: backward only*/) {
  AttentionFwdParams p(check_attention_fwd_inputs(q, k, v, softmax_scale, causal, window_left,
                                                  window_right, softcap));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc_dtype = accumulation_dtype(q);
  const at::Tensor q_acc = q.to(acc_dtype), k_acc = k.to(acc_dtype), v_acc = v.to(acc_dtype);
  at::Tensor out_acc = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim_v},
                                 q.options().dtype(acc_dtype));
  at::Tensor lse = at::empty({p.batch, p.heads_q, p.seqlen_q}, q.options().dtype(at::kFloat));
  p.lse = lse.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "flash_attn_fwd_cpu", [&] {
    attention_fwd_cpu<scalar_t>(p, bshd_view<scalar_t>(q_acc), transposed_keys<scalar_t>(k_acc),
                                bshd_view<scalar_t>(v_acc), out_acc.data_ptr<scalar_t>(),
                                bshd_strides(out_acc));
  });
  return {out_acc.to(q.scalar_type()), lse};
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
            scores_to_logits(pr, cols, scale, softcap, full ? 0 : window.first_key(i) - j0,
                             full ? cols : window.end_key(i) - j0,
                             tanh_tile ? tanh_tile + r * cols : nullptr);
            exp2_shifted_inplace(pr, cols, T(lse_h[i]) * T(kLog2e));
          }
          // dV += P^T dO
          cpu::transpose_tile(s.probs.data(), rows, cols, cols, s.transposed.data());
          cpu::gemm_nn(cols, dvd, rows, s.transposed.data(), rows, dout.row(b, i0, h),
                       dout.strides.row, true, s.dv_acc.data(), dvd);
          // dP = dO V^T, then dS in place.
          cpu::gemm_nn(rows, cols, dvd, dout.row(b, i0, h), dout.strides.row, v_t.at(b, hk, j0),
                       v_t.seqlen, false, s.dprobs.data(), cols);
          for (int64_t r = 0; r < rows; ++r) {
            softmax_grad_row(s.dprobs.data() + r * cols, s.probs.data() + r * cols,
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
  const auto acc_dtype = accumulation_dtype(q);
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
