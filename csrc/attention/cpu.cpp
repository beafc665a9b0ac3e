// CPU implementation of tiled causal softmax attention (SPEC §1).
//
// Inputs are promoted to fp32 once (O(B·S·H·D) memory); the kernels then work on tiles:
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

// fp32 pointers and strides of the promoted tensors.
struct Fp32Bshd {
  const float* data;
  BshdStrides strides;
  const float* row(int64_t b, int64_t s, int64_t h) const {
    return data + b * strides.batch + s * strides.row + h * strides.head;
  }
};

Fp32Bshd fp32_view(const at::Tensor& t) { return {t.data_ptr<float>(), bshd_strides(t)}; }

// Turns raw q·k dot products of one row into log2-domain logits: scale, soft-cap, mask.
// Writes tanh of the capped logits to `tanh_out` when soft-capping (the backward needs it).
DSA_CPU_MULTIVERSION
void scores_to_logits(float* s, int64_t cols, float scale, float softcap, int64_t visible_begin,
                      int64_t visible_end, float* tanh_out) {
  if (softcap > 0.f) {
    const float inv_cap = scale / softcap;
    for (int64_t c = 0; c < cols; ++c) {
      const float t = std::tanh(s[c] * inv_cap);
      if (tanh_out != nullptr) tanh_out[c] = t;
      s[c] = softcap * t * kLog2e;
    }
  } else {
    const float scale_log2 = scale * kLog2e;
    for (int64_t c = 0; c < cols; ++c) s[c] *= scale_log2;
  }
  for (int64_t c = 0; c < std::min(visible_begin, cols); ++c) s[c] = -INFINITY;
  for (int64_t c = std::max<int64_t>(visible_end, 0); c < cols; ++c) s[c] = -INFINITY;
}

DSA_CPU_MULTIVERSION
float row_max(const float* s, int64_t cols) {
  float m = -INFINITY;
  for (int64_t c = 0; c < cols; ++c) m = std::max(m, s[c]);
  return m;
}

// s <- 2^(s - shift) in place; returns the row sum. A shift of -inf means an empty row: zeros.
DSA_CPU_MULTIVERSION
float exp2_shifted_inplace(float* s, int64_t cols, float shift) {
  if (shift == -INFINITY) {
    std::fill(s, s + cols, 0.f);
    return 0.f;
  }
  float sum = 0.f;
  for (int64_t c = 0; c < cols; ++c) {
    const float p = cpu::exp2_nonpositive(s[c] - shift);
    s[c] = p;
    sum += p;
  }
  return sum;
}

DSA_CPU_MULTIVERSION
void scale_row(float* x, int64_t n, float factor) {
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

// dS = P * (dP - delta) [* (1 - tanh^2) when soft-capped], in place over dP.
DSA_CPU_MULTIVERSION
void softmax_grad_row(float* dp, const float* p, const float* tanh_row, int64_t cols,
                      float delta) {
  if (tanh_row != nullptr) {
    for (int64_t c = 0; c < cols; ++c) {
      dp[c] = p[c] * (dp[c] - delta) * (1.f - tanh_row[c] * tanh_row[c]);
    }
  } else {
    for (int64_t c = 0; c < cols; ++c) dp[c] = p[c] * (dp[c] - delta);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

// Keys transposed once per call, (B, Hkv, D, Sk), so every tile product is a plain A·B.
struct TransposedKeys {
  const float* data;
  int64_t heads_kv, dim, seqlen;
  const float* at(int64_t b, int64_t h, int64_t key) const {
    return data + ((b * heads_kv + h) * dim) * seqlen + key;
  }
};

TransposedKeys transposed_keys(const at::Tensor& t) {
  return {t.data_ptr<float>(), t.size(1), t.size(2), t.size(3)};
}

void attention_fwd_cpu_fp32(const AttentionFwdParams& p, const Fp32Bshd& q,
                            const TransposedKeys& k_t, const Fp32Bshd& v, float* out,
                            const BshdStrides& out_strides) {
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
  std::vector<std::vector<float>> scores(n_slots), acc(n_slots);

  cpu::run_tasks_costliest_first(costs, [&](int64_t task, int64_t slot) {
    const int64_t tile = task % n_row_tiles;
    const int64_t h = (task / n_row_tiles) % p.heads_q;
    const int64_t b = task / (n_row_tiles * p.heads_q);
    const int64_t hk = h / p.heads_per_kv();
    const int64_t row_begin = tile * kFwdBlockQ;
    const int64_t rows = std::min(kFwdBlockQ, p.seqlen_q - row_begin);
    const int64_t dqk = p.head_dim_qk, dv = p.head_dim_v;
    std::vector<float>& s_buf = scores[slot];
    std::vector<float>& o_buf = acc[slot];
    s_buf.resize(kFwdBlockQ * kFwdBlockK);
    o_buf.assign(rows * dv, 0.f);
    OnlineSoftmaxRow state[kFwdBlockQ];

    const int64_t key_begin = window.first_key(row_begin);
    const int64_t key_end = window.end_key(row_begin + rows - 1);
    for (int64_t j0 = key_begin; j0 < key_end; j0 += kFwdBlockK) {
      const int64_t cols = std::min(kFwdBlockK, key_end - j0);
      cpu::gemm_nn(rows, cols, dqk, q.row(b, row_begin, h), q.strides.row, k_t.at(b, hk, j0),
                   k_t.seqlen, false, s_buf.data(), cols);
      const bool full = window.tile_fully_visible(row_begin, row_begin + rows, j0, j0 + cols);
      for (int64_t r = 0; r < rows; ++r) {
        float* s = s_buf.data() + r * cols;
        const int64_t i = row_begin + r;
        const int64_t vis_begin = full ? 0 : window.first_key(i) - j0;
        const int64_t vis_end = full ? cols : window.end_key(i) - j0;
        scores_to_logits(s, cols, p.softmax_scale, p.softcap, vis_begin, vis_end, nullptr);
        const float rescale = state[r].update_max(row_max(s, cols));
        state[r].sum += exp2_shifted_inplace(s, cols, state[r].max_log2);
        if (rescale != 1.f) scale_row(o_buf.data() + r * dv, dv, rescale);
      }
      cpu::gemm_nn(rows, dv, cols, s_buf.data(), cols, v.row(b, j0, hk), v.strides.row, true,
                   o_buf.data(), dv);
    }

    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row_begin + r;
      float* dst = out + b * out_strides.batch + i * out_strides.row + h * out_strides.head;
      const float inv_sum = state[r].sum > 0.f ? 1.f / state[r].sum : 0.f;
      for (int64_t d = 0; d < dv; ++d) dst[d] = o_buf[r * dv + d] * inv_sum;
      p.lse[(b * p.heads_q + h) * p.seqlen_q + i] = state[r].lse();
    }
  });
}

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, double softmax_scale,
                                                      bool causal, int64_t window_left,
                                                      int64_t window_right, double softcap) {
  AttentionFwdParams p =
      check_attention_fwd_inputs(q, k, v, softmax_scale, causal, window_left, window_right, softcap);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor q32 = q.to(at::kFloat), k32 = k.to(at::kFloat), v32 = v.to(at::kFloat);
  at::Tensor out32 = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim_v},
                               q.options().dtype(at::kFloat));
  at::Tensor lse = at::empty({p.batch, p.heads_q, p.seqlen_q}, q.options().dtype(at::kFloat));
  p.lse = lse.data_ptr<float>();
  const at::Tensor k_t = k32.permute({0, 2, 3, 1}).contiguous();
  attention_fwd_cpu_fp32(p, fp32_view(q32), transposed_keys(k_t), fp32_view(v32),
                         out32.data_ptr<float>(), bshd_strides(out32));
  return {out32.to(q.scalar_type()), lse};
}

// ---------------------------------------------------------------------------------------------
// Backward

struct BwdScratch {
  std::vector<float> probs, dprobs, tanh_vals, transposed, dk_acc, dv_acc;
};

// dq_groups[g] (fp32, contiguous BSHD) receives unscaled dS·K of the key tiles of group g.
void attention_bwd_cpu_fp32(const AttentionFwdParams& p, const Fp32Bshd& q, const Fp32Bshd& k,
                            const TransposedKeys& k_t, const TransposedKeys& v_t,
                            const Fp32Bshd& dout, const float* lse,
                            const float* delta, const std::vector<float*>& dq_groups,
                            const BshdStrides& dq_strides, float* dk, const BshdStrides& dk_strides,
                            float* dv, const BshdStrides& dv_strides) {
  const KeyWindow window = p.key_window();
  const int64_t n_groups = static_cast<int64_t>(dq_groups.size());
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
  std::vector<BwdScratch> scratch(at::get_num_threads());

  cpu::run_tasks_costliest_first(costs, [&](int64_t task, int64_t slot) {
    const int64_t g = task % n_groups;
    const int64_t hk = (task / n_groups) % p.heads_kv;
    const int64_t b = task / (n_groups * p.heads_kv);
    BwdScratch& s = scratch[slot];
    s.probs.resize(kBwdBlockQ * kBwdBlockK);
    s.dprobs.resize(kBwdBlockQ * kBwdBlockK);
    s.transposed.resize(kBwdBlockQ * kBwdBlockK);
    if (p.softcap > 0.f) s.tanh_vals.resize(kBwdBlockQ * kBwdBlockK);
    float* dq_acc = dq_groups[g];

    for (int64_t kt = g; kt < n_key_tiles; kt += n_groups) {
      const int64_t j0 = kt * kBwdBlockK;
      const int64_t cols = std::min(kBwdBlockK, p.seqlen_k - j0);
      s.dk_acc.assign(cols * dqk, 0.f);
      s.dv_acc.assign(cols * dvd, 0.f);
      const int64_t rows_begin = window.first_row_seeing(j0);
      const int64_t rows_end = window.end_row_seeing(j0 + cols);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const float* lse_h = lse + (b * p.heads_q + h) * p.seqlen_q;
        const float* delta_h = delta + (b * p.heads_q + h) * p.seqlen_q;
        for (int64_t i0 = rows_begin; i0 < rows_end; i0 += kBwdBlockQ) {
          const int64_t rows = std::min(kBwdBlockQ, rows_end - i0);
          const bool full = window.tile_fully_visible(i0, i0 + rows, j0, j0 + cols);
          float* tanh_tile = p.softcap > 0.f ? s.tanh_vals.data() : nullptr;
          // P = exp(S - lse), recomputed.
          cpu::gemm_nn(rows, cols, dqk, q.row(b, i0, h), q.strides.row, k_t.at(b, hk, j0),
                       k_t.seqlen, false, s.probs.data(), cols);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            float* pr = s.probs.data() + r * cols;
            scores_to_logits(pr, cols, p.softmax_scale, p.softcap,
                             full ? 0 : window.first_key(i) - j0,
                             full ? cols : window.end_key(i) - j0,
                             tanh_tile ? tanh_tile + r * cols : nullptr);
            exp2_shifted_inplace(pr, cols, lse_h[i] * kLog2e);
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
                             tanh_tile ? tanh_tile + r * cols : nullptr, cols, delta_h[i0 + r]);
          }
          // dK += dS^T Q ; dQ += dS K (scaled once at the end).
          cpu::transpose_tile(s.dprobs.data(), rows, cols, cols, s.transposed.data());
          cpu::gemm_nn(cols, dqk, rows, s.transposed.data(), rows, q.row(b, i0, h), q.strides.row,
                       true, s.dk_acc.data(), dqk);
          float* dq_tile = dq_acc + b * dq_strides.batch + i0 * dq_strides.row + h * dq_strides.head;
          cpu::gemm_nn(rows, dqk, cols, s.dprobs.data(), cols, k.row(b, j0, hk), k.strides.row,
                       true, dq_tile, dq_strides.row);
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        float* dk_row = dk + b * dk_strides.batch + (j0 + c) * dk_strides.row + hk * dk_strides.head;
        float* dv_row = dv + b * dv_strides.batch + (j0 + c) * dv_strides.row + hk * dv_strides.head;
        for (int64_t d = 0; d < dqk; ++d) dk_row[d] = s.dk_acc[c * dqk + d] * p.softmax_scale;
        for (int64_t d = 0; d < dvd; ++d) dv_row[d] = s.dv_acc[c * dvd + d];
      }
    }
  });
}

// Enough independent tasks for every thread; each extra group costs one fp32 copy of dQ.
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
  AttentionFwdParams p =
      check_attention_fwd_inputs(q, k, v, softmax_scale, causal, window_left, window_right, softcap);
  check_attention_bwd_inputs(p, q, dout, out, lse);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor q32 = q.to(at::kFloat), k32 = k.to(at::kFloat), v32 = v.to(at::kFloat);
  const at::Tensor dout32 = dout.to(at::kFloat);
  // delta_i = sum_d dO_id * O_id, laid out (B, Hq, Sq) like the LSE.
  const at::Tensor delta = (dout32 * out.to(at::kFloat)).sum(-1).transpose(1, 2).contiguous();
  const at::Tensor lse32 = lse.contiguous();

  const int64_t n_groups = choose_key_tile_groups(p);
  std::vector<at::Tensor> dq_partials;
  std::vector<float*> dq_ptrs;
  for (int64_t g = 0; g < n_groups; ++g) {
    dq_partials.push_back(at::zeros({p.batch, p.seqlen_q, p.heads_q, p.head_dim_qk},
                                    q.options().dtype(at::kFloat)));
    dq_ptrs.push_back(dq_partials.back().data_ptr<float>());
  }
  at::Tensor dk32 = at::empty({p.batch, p.seqlen_k, p.heads_kv, p.head_dim_qk},
                              q.options().dtype(at::kFloat));
  at::Tensor dv32 = at::empty({p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v},
                              q.options().dtype(at::kFloat));
  const at::Tensor k_t = k32.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor v_t = v32.permute({0, 2, 3, 1}).contiguous();
  attention_bwd_cpu_fp32(p, fp32_view(q32), fp32_view(k32), transposed_keys(k_t),
                         transposed_keys(v_t), fp32_view(dout32),
                         lse32.data_ptr<float>(), delta.data_ptr<float>(), dq_ptrs,
                         bshd_strides(dq_partials[0]), dk32.data_ptr<float>(), bshd_strides(dk32),
                         dv32.data_ptr<float>(), bshd_strides(dv32));
  at::Tensor dq32 = dq_partials[0];
  for (int64_t g = 1; g < n_groups; ++g) dq32.add_(dq_partials[g]);  // fixed order
  dq32.mul_(p.softmax_scale);
  const auto dtype = q.scalar_type();
  return {dq32.to(dtype), dk32.to(dtype), dv32.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) {
  m.impl("flash_attn_fwd", &flash_attn_fwd_cpu);
  m.impl("flash_attn_bwd", &flash_attn_bwd_cpu);
}

}  // namespace deepseek_attn
