// CPU implementation of tiled causal softmax attention (SPEC §1).
//
// The forward is the shared core's main loop (core/cpu_fwd.cpp) over a dense source and the
// window band. The backward packs its operands once per call in the tile element type (the
// input's bf16/fp16 where the host multiplies those natively, else fp32; fp64 for gradcheck)
// and works on tiles: scores of one (query tile x key tile) block at a time, never an (Sq x Sk)
// matrix, accumulating in fp32 (fp64). Its tasks are (batch, kv head, group of key tiles) so
// dK/dV need no reduction across threads, and dQ partials per group add up in a fixed order.

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

constexpr int64_t kBwdBlockQ = 64;
constexpr int64_t kBwdBlockK = 128;

// The backward's operands in the tile element type E, packed once per call (cpu::VnniTile
// layouts; the padding of the reduction dims stays zero):
//   per (batch, kv head, key tile): Kᵀ (for S = Q Kᵀ), K by key pairs (dQ += dS K) and Vᵀ
//   (dP = dO Vᵀ); per (batch, query head): Qᵀ and dOᵀ with the query rows padded to pairs
//   (the A operands of dKᵀ += Qᵀ dS and dVᵀ += dOᵀ P, so P and dS need no transposing); and
//   Q, dO as plain rows with the head dims padded (the A operands of S and dP).
template <typename E>
struct BwdOperands {
  int64_t dqk, dqk_pad, dv, dv_pad, seqlen_q_pad, n_key_tiles, heads_q, heads_kv;
  at::Tensor storage_keys, storage_rows, q_plain, dout_plain;

  int64_t kt_elements() const { return dqk_pad * kBwdBlockK; }
  int64_t kr_elements() const { return kBwdBlockK * dqk; }
  int64_t vt_elements() const { return dv_pad * kBwdBlockK; }
  int64_t key_tile_elements() const { return kt_elements() + kr_elements() + vt_elements(); }
  const E* key_tile(int64_t b, int64_t hk, int64_t tile) const {
    return static_cast<const E*>(storage_keys.data_ptr()) +
           ((b * heads_kv + hk) * n_key_tiles + tile) * key_tile_elements();
  }
  // Qᵀ (dqk x seqlen_q_pad) and dOᵀ (dv x seqlen_q_pad) of (batch, query head).
  const E* q_transposed(int64_t b, int64_t h) const {
    return static_cast<const E*>(storage_rows.data_ptr()) +
           (b * heads_q + h) * seqlen_q_pad * (dqk + dv);
  }
  const E* dout_transposed(int64_t b, int64_t h) const {
    return q_transposed(b, h) + seqlen_q_pad * dqk;
  }
};

template <typename E, typename S>
BwdOperands<E> pack_bwd_operands(const AttentionFwdParams& p, const at::Tensor& q,
                                 const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
                                 at::ScalarType dtype) {
  using Vnni = cpu::VnniTile<E>;
  BwdOperands<E> ops;
  ops.dqk = p.head_dim_qk;
  ops.dqk_pad = Vnni::padded(p.head_dim_qk);
  ops.dv = p.head_dim_v;
  ops.dv_pad = Vnni::padded(p.head_dim_v);
  ops.seqlen_q_pad = Vnni::padded(p.seqlen_q);
  ops.n_key_tiles = (p.seqlen_k + kBwdBlockK - 1) / kBwdBlockK;
  ops.heads_q = p.heads_q;
  ops.heads_kv = p.heads_kv;
  const auto options = at::TensorOptions().dtype(dtype);
  ops.storage_keys =
      at::zeros({p.batch * p.heads_kv * ops.n_key_tiles, ops.key_tile_elements()}, options);
  ops.storage_rows = at::zeros({p.batch * p.heads_q, ops.seqlen_q_pad * (ops.dqk + ops.dv)}, options);
  // Contiguous (B, S, H, D) rows in E with D padded to pairs: the input itself when it is.
  auto padded_rows = [&](const at::Tensor& t, int64_t dim_pad) {
    if (t.scalar_type() == dtype && t.size(3) == dim_pad && t.is_contiguous()) return t;
    at::Tensor plain = at::zeros({t.size(0), t.size(1), t.size(2), dim_pad}, options);
    plain.narrow(3, 0, t.size(3)).copy_(t);
    return plain;
  };
  ops.q_plain = padded_rows(q, ops.dqk_pad);
  ops.dout_plain = padded_rows(dout, ops.dv_pad);
  const BshdStrides ks = bshd_strides(k), vs = bshd_strides(v);
  const S* k_data = k.data_ptr<S>();
  const S* v_data = v.data_ptr<S>();
  E* keys = static_cast<E*>(ops.storage_keys.data_ptr());
  at::parallel_for(0, p.batch * p.heads_kv * ops.n_key_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t tile = index % ops.n_key_tiles, hk = (index / ops.n_key_tiles) % p.heads_kv;
      const int64_t b = index / (ops.n_key_tiles * p.heads_kv);
      E* kt = keys + index * ops.key_tile_elements();
      E* kr = kt + ops.kt_elements();
      E* vt = kr + ops.kr_elements();
      const int64_t key_end = std::min((tile + 1) * kBwdBlockK, p.seqlen_k);
      for (int64_t key = tile * kBwdBlockK; key < key_end; ++key) {
        const int64_t c = key - tile * kBwdBlockK;
        const S* k_row = k_data + b * ks.batch + key * ks.row + hk * ks.head;
        const S* v_row = v_data + b * vs.batch + key * vs.row + hk * vs.head;
        for (int64_t d = 0; d < ops.dqk; ++d) {
          const E x = cpu::convert_element<E>(k_row[d]);
          kt[Vnni::at(d, c, kBwdBlockK)] = x;
          kr[Vnni::at(c, d, ops.dqk)] = x;
        }
        for (int64_t d = 0; d < ops.dv; ++d) {
          vt[Vnni::at(d, c, kBwdBlockK)] = cpu::convert_element<E>(v_row[d]);
        }
      }
    }
  });
  const BshdStrides qs = bshd_strides(q), ds = bshd_strides(dout);
  const S* q_data = q.data_ptr<S>();
  const S* dout_data = dout.data_ptr<S>();
  E* rows = static_cast<E*>(ops.storage_rows.data_ptr());
  at::parallel_for(0, p.batch * p.heads_q, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t h = index % p.heads_q, b = index / p.heads_q;
      E* q_t = rows + index * ops.seqlen_q_pad * (ops.dqk + ops.dv);
      E* dout_t = q_t + ops.seqlen_q_pad * ops.dqk;
      for (int64_t i = 0; i < p.seqlen_q; ++i) {
        const S* q_row = q_data + b * qs.batch + i * qs.row + h * qs.head;
        const S* dout_row = dout_data + b * ds.batch + i * ds.row + h * ds.head;
        for (int64_t d = 0; d < ops.dqk; ++d) {
          q_t[d * ops.seqlen_q_pad + i] = cpu::convert_element<E>(q_row[d]);
        }
        for (int64_t d = 0; d < ops.dv; ++d) {
          dout_t[d * ops.seqlen_q_pad + i] = cpu::convert_element<E>(dout_row[d]);
        }
      }
    }
  });
  return ops;
}

template <typename T, typename E>
struct BwdScratch {
  std::vector<T> probs, dprobs, tanh_vals, dk_acc_t, dv_acc_t;
  std::vector<E> rounded, pairs;
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

void round_row(const float* src, int64_t n, c10::BFloat16* dst) { cpu::round_to_bf16(src, n, dst); }
void round_row(const float* src, int64_t n, c10::Half* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = c10::Half(src[i]);
}

// The B operand of a product over query rows: src (rows x cols, T) rounded to E into `rounded`
// (rows x padded(cols), the padding zero) and paired along the rows (cpu::VnniTile) into
// `pairs`, an odd last row with zeros; both have leading dimension padded(cols). For E == T,
// src itself (padded(cols) == cols).
template <typename T, typename E>
const E* rows_as_b_operand(const T* src, int64_t rows, int64_t cols, std::vector<E>& rounded,
                           std::vector<E>& pairs) {
  if constexpr (std::is_same_v<E, T>) {
    return src;
  } else {
    static_assert(sizeof(E) == sizeof(uint16_t));
    const int64_t rows_pad = cpu::VnniTile<E>::padded(rows);
    const int64_t ld = cpu::VnniTile<E>::padded(cols);
    rounded.resize(rows_pad * ld);
    pairs.resize(rows_pad * ld);
    for (int64_t r = 0; r < rows; ++r) {
      E* row = rounded.data() + r * ld;
      round_row(src + r * cols, cols, row);
      std::fill(row + cols, row + ld, E(0.f));
    }
    std::fill(rounded.begin() + rows * ld, rounded.end(), E(0.f));
    for (int64_t r = 0; r < rows_pad; r += 2) {
      cpu::interleave_rows(reinterpret_cast<const uint16_t*>(rounded.data() + r * ld),
                           reinterpret_cast<const uint16_t*>(rounded.data() + (r + 1) * ld), ld,
                           reinterpret_cast<uint32_t*>(pairs.data() + r * ld));
    }
    return pairs.data();
  }
}

template <typename T, typename E>
void attention_bwd_cpu(const AttentionFwdParams& p, const BwdOperands<E>& ops, const float* lse,
                       const float* delta, const BwdOutputs<T>& grads) {
  using Vnni = cpu::VnniTile<E>;
  const KeyWindow window = p.key_window();
  const int64_t n_groups = static_cast<int64_t>(grads.dq_groups.size());
  const int64_t n_key_tiles = ops.n_key_tiles;
  const int64_t n_tasks = p.batch * p.heads_kv * n_groups;
  std::vector<int64_t> costs(n_tasks, 0);
  for (int64_t t = 0; t < n_tasks; ++t) {
    for (int64_t kt = t % n_groups; kt < n_key_tiles; kt += n_groups) {
      const int64_t j0 = kt * kBwdBlockK, j1 = std::min(j0 + kBwdBlockK, p.seqlen_k);
      costs[t] += std::max<int64_t>(window.end_row_seeing(j1) - window.first_row_seeing(j0), 0);
    }
  }
  const int64_t dqk = ops.dqk, dqk_pad = ops.dqk_pad, dvd = ops.dv, dv_pad = ops.dv_pad;
  const int64_t group = p.heads_per_kv();
  const int64_t ld_q = p.heads_q * dqk_pad, ld_dout = p.heads_q * dv_pad;
  const E* q_plain = static_cast<const E*>(ops.q_plain.data_ptr());
  const E* dout_plain = static_cast<const E*>(ops.dout_plain.data_ptr());
  const T scale = p.softmax_scale, softcap = p.softcap;
  std::vector<BwdScratch<T, E>> scratch(at::get_num_threads());

  cpu::run_tasks_costliest_first(costs, [&](int64_t task, int64_t slot) {
    const int64_t g = task % n_groups;
    const int64_t hk = (task / n_groups) % p.heads_kv;
    const int64_t b = task / (n_groups * p.heads_kv);
    BwdScratch<T, E>& s = scratch[slot];
    constexpr int64_t kTile = kBwdBlockQ * kBwdBlockK;
    s.probs.resize(kTile);
    s.dprobs.resize(kTile);
    if (softcap > 0) s.tanh_vals.resize(kTile);
    T* tanh_tile = softcap > 0 ? s.tanh_vals.data() : nullptr;
    T* dq_acc = grads.dq_groups[g];

    for (int64_t kt = g; kt < n_key_tiles; kt += n_groups) {
      const int64_t j0 = kt * kBwdBlockK;
      const int64_t cols = std::min(kBwdBlockK, p.seqlen_k - j0);
      const int64_t cols_pad = Vnni::padded(cols);
      const E* k_t = ops.key_tile(b, hk, kt);
      const E* k_rows = k_t + ops.kt_elements();
      const E* v_t = k_rows + ops.kr_elements();
      s.dk_acc_t.assign(dqk * cols, T(0));  // dKᵀ and dVᵀ of the key tile
      s.dv_acc_t.assign(dvd * cols, T(0));
      const int64_t rows_begin = window.first_row_seeing(j0) / Vnni::kPairs * Vnni::kPairs;
      const int64_t rows_end = window.end_row_seeing(j0 + cols);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const float* lse_h = lse + (b * p.heads_q + h) * p.seqlen_q;
        const float* delta_h = delta + (b * p.heads_q + h) * p.seqlen_q;
        const E* q_t = ops.q_transposed(b, h);
        const E* dout_t = ops.dout_transposed(b, h);
        for (int64_t i0 = rows_begin; i0 < rows_end; i0 += kBwdBlockQ) {
          const int64_t rows = std::min(kBwdBlockQ, rows_end - i0);
          const int64_t rows_pad = Vnni::padded(rows);
          const bool full = window.tile_fully_visible(i0, i0 + rows, j0, j0 + cols);
          // P = exp(S - lse), recomputed.
          cpu::gemm_nn(rows, cols, dqk_pad, q_plain + (b * p.seqlen_q + i0) * ld_q + h * dqk_pad,
                       ld_q, k_t, kBwdBlockK, false, s.probs.data(), cols);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            T* pr = s.probs.data() + r * cols;
            cpu::scores_to_logits(pr, cols, scale, softcap, full ? 0 : window.first_key(i) - j0,
                                  full ? cols : window.end_key(i) - j0,
                                  tanh_tile ? tanh_tile + r * cols : nullptr);
            cpu::exp2_shifted_inplace(pr, cols, T(lse_h[i]) * T(kLog2e));
          }
          // dV^T += dO^T P
          cpu::gemm_nn(dvd, cols, rows_pad, dout_t + i0, ops.seqlen_q_pad,
                       rows_as_b_operand(s.probs.data(), rows, cols, s.rounded, s.pairs),
                       cols_pad, true, s.dv_acc_t.data(), cols);
          // dP = dO V^T, then dS in place.
          cpu::gemm_nn(rows, cols, dv_pad,
                       dout_plain + (b * p.seqlen_q + i0) * ld_dout + h * dv_pad, ld_dout, v_t,
                       kBwdBlockK, false, s.dprobs.data(), cols);
          for (int64_t r = 0; r < rows; ++r) {
            cpu::softmax_grad_row(s.dprobs.data() + r * cols, s.probs.data() + r * cols,
                                  tanh_tile ? tanh_tile + r * cols : nullptr, cols,
                                  T(delta_h[i0 + r]));
          }
          // dK^T += Q^T dS ; dQ += dS K (both scaled once at the end).
          cpu::gemm_nn(dqk, cols, rows_pad, q_t + i0, ops.seqlen_q_pad,
                       rows_as_b_operand(s.dprobs.data(), rows, cols, s.rounded, s.pairs),
                       cols_pad, true, s.dk_acc_t.data(), cols);
          T* dq_tile = dq_acc + b * grads.dq_strides.batch + i0 * grads.dq_strides.row +
                       h * grads.dq_strides.head;
          // dS in E, rows x cols_pad: rounded just above for dK (or dS itself for E == T).
          const E* ds = nullptr;
          if constexpr (std::is_same_v<E, T>) {
            ds = s.dprobs.data();
          } else {
            ds = s.rounded.data();
          }
          cpu::gemm_nn(rows, dqk, cols_pad, ds, cols_pad, k_rows, dqk, true, dq_tile,
                       grads.dq_strides.row);
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t key = j0 + c;
        T* dk_row = grads.dk + b * grads.dk_strides.batch + key * grads.dk_strides.row +
                    hk * grads.dk_strides.head;
        T* dv_row = grads.dv + b * grads.dv_strides.batch + key * grads.dv_strides.row +
                    hk * grads.dv_strides.head;
        for (int64_t d = 0; d < dqk; ++d) dk_row[d] = s.dk_acc_t[d * cols + c] * scale;
        for (int64_t d = 0; d < dvd; ++d) dv_row[d] = s.dv_acc_t[d * cols + c];
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
  // Tiles multiply in the input's bf16/fp16 where the host does so natively (P and dS rounded
  // to it, as on GPUs), else in the accumulation type.
  const auto tile_dtype = cpu::reduced_precision_tiles(q.scalar_type()) ? q.scalar_type() : acc_dtype;
  // delta_i = sum_d dO_id * O_id (fp32), laid out (B, Hq, Sq) like the LSE.
  const at::Tensor delta =
      (dout.to(acc_dtype) * out.to(acc_dtype)).sum(-1).transpose(1, 2).to(at::kFloat).contiguous();
  const at::Tensor lse_contig = lse.contiguous();

  const int64_t n_groups = choose_key_tile_groups(p);
  std::vector<at::Tensor> dq_partials;
  for (int64_t g = 0; g < n_groups; ++g) {
    dq_partials.push_back(
        at::zeros({p.batch, p.seqlen_q, p.heads_q, p.head_dim_qk}, acc_options));
  }
  at::Tensor dk_acc = at::empty({p.batch, p.seqlen_k, p.heads_kv, p.head_dim_qk}, acc_options);
  at::Tensor dv_acc = at::empty({p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v}, acc_options);
  auto run = [&](auto accumulate_as, auto tile_element) {
    using T = decltype(accumulate_as);
    using E = decltype(tile_element);
    BwdOutputs<T> grads{{}, bshd_strides(dq_partials[0]), dk_acc.data_ptr<T>(),
                        bshd_strides(dk_acc), dv_acc.data_ptr<T>(), bshd_strides(dv_acc)};
    for (const at::Tensor& partial : dq_partials) grads.dq_groups.push_back(partial.data_ptr<T>());
    BwdOperands<E> operands;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "flash_attn_bwd_cpu",
                                    [&] {
      operands = pack_bwd_operands<E, scalar_t>(p, q, k, v, dout, tile_dtype);
    });
    attention_bwd_cpu<T, E>(p, operands, lse_contig.data_ptr<float>(), delta.data_ptr<float>(),
                            grads);
  };
  cpu::with_tile_types(tile_dtype, run);
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
