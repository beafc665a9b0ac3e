// CPU implementation of the lightning indexer (SPEC §4). Scores come tile by tile: a block of
// query tokens (all their heads) times a chunk of keys in one GEMM, then ReLU, the head weights
// and the sum over heads. indexer_logits writes them; indexer_topk merges them into a running
// top-k per query row, so its memory is O(topk) per row whatever Sk is; the backward recomputes
// the products chunk by chunk (dq and the weights' gradient per token tile, dk per key chunk: one
// writer per gradient row, no atomics, deterministic).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_tiles.h"
#include "sparse/checks.h"
#include "sparse/params.h"

namespace deepseek_attn {
namespace {

constexpr int64_t kTileTokens = 8;   // query tokens per task (times their heads: GEMM rows)
constexpr int64_t kChunkKeys = 256;  // keys per GEMM

// The indexer's operands in the accumulation type T (fp32, or fp64 for fp64 inputs).
template <typename T>
struct IndexerOperands {
  IndexerShape s;
  at::Tensor q;           // as given (any supported dtype); tiles are converted on load
  const T* k_t;           // (B, d, Sk): k transposed, the GEMM's right operand
  const T* weights;       // (B, Sq, H)
  const float* k_scale;   // (B, Sk) or null
  const int32_t* seqlens;  // (B,) or null
  T scale;
  bool causal;

  int64_t keys(int64_t b) const { return seqlens != nullptr ? seqlens[b] : s.seqlen_k; }
  int64_t visible_end(int64_t b, int64_t t) const {
    return indexer_visible_end(t, s.seqlen_q, keys(b), causal);
  }
};

template <typename T, typename Source>
void convert_q_rows(const at::Tensor& q, int64_t b, int64_t t0, int64_t tokens, T* dst) {
  const Source* base = q.const_data_ptr<Source>();
  const int64_t heads = q.size(2), dim = q.size(3);
  for (int64_t i = 0; i < tokens; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const Source* row = base + b * q.stride(0) + (t0 + i) * q.stride(1) + h * q.stride(2);
      T* out = dst + (i * heads + h) * dim;
      for (int64_t c = 0; c < dim; ++c) {
        if constexpr (std::is_floating_point_v<Source>) {
          out[c] = static_cast<T>(row[c]);
        } else {  // 16- and 8-bit types convert through float
          out[c] = static_cast<T>(static_cast<float>(row[c]));
        }
      }
    }
  }
}

// dst (tokens·H x d, dense) = q[b, t0 : t0 + tokens] in T.
template <typename T>
void load_q_tile(const at::Tensor& q, int64_t b, int64_t t0, int64_t tokens, T* dst) {
  switch (q.scalar_type()) {
    case at::kDouble:
      return convert_q_rows<T, double>(q, b, t0, tokens, dst);
    case at::kFloat:
      return convert_q_rows<T, float>(q, b, t0, tokens, dst);
    case at::kBFloat16:
      return convert_q_rows<T, at::BFloat16>(q, b, t0, tokens, dst);
    case at::kHalf:
      return convert_q_rows<T, at::Half>(q, b, t0, tokens, dst);
    default:
      return convert_q_rows<T, at::Float8_e4m3fn>(q, b, t0, tokens, dst);
  }
}

// products (tokens·H x n) = q_tile · k[b, s0 : s0 + n]ᵀ.
template <typename T>
void head_products(const IndexerOperands<T>& in, int64_t b, const T* q_tile, int64_t tokens,
                   int64_t s0, int64_t n, T* products) {
  const IndexerShape& s = in.s;
  cpu::gemm_nn(tokens * s.heads, n, s.head_dim, q_tile, s.head_dim,
               in.k_t + b * s.head_dim * s.seqlen_k + s0, s.seqlen_k, false, products, n);
}

// scores (tokens x n) = I[t0 + i, s0 + j] from the tile's head products (no mask applied).
template <typename T>
void sum_heads(const IndexerOperands<T>& in, int64_t b, int64_t t0, int64_t tokens, int64_t s0,
               int64_t n, const T* products, T* scores) {
  const int64_t heads = in.s.heads;
  for (int64_t i = 0; i < tokens; ++i) {
    T* out = scores + i * n;
    std::fill(out, out + n, T(0));
    const T* w = in.weights + (b * in.s.seqlen_q + t0 + i) * heads;
    for (int64_t h = 0; h < heads; ++h) {
      const T weight = w[h] * in.scale;
      const T* row = products + (i * heads + h) * n;
      for (int64_t j = 0; j < n; ++j) out[j] += weight * std::max(row[j], T(0));
    }
    if (in.k_scale != nullptr) {
      const float* k_scale = in.k_scale + b * in.s.seqlen_k + s0;
      for (int64_t j = 0; j < n; ++j) out[j] *= k_scale[j];
    }
  }
}

// Runs visit(b, t0, tokens, s0, n, scores, scratch_slot) over every (token tile, key chunk) some
// row of the tile sees, token tiles in parallel (costliest first), chunks in order.
template <typename T, typename Visit>
void for_each_score_tile(const IndexerOperands<T>& in, const Visit& visit) {
  const IndexerShape& s = in.s;
  const int64_t tiles_per_seq = (s.seqlen_q + kTileTokens - 1) / kTileTokens;
  std::vector<int64_t> costs(s.batch * tiles_per_seq);
  for (int64_t task = 0; task < int64_t(costs.size()); ++task) {
    const int64_t b = task / tiles_per_seq;
    const int64_t t_last = std::min((task % tiles_per_seq + 1) * kTileTokens, s.seqlen_q) - 1;
    costs[task] = in.visible_end(b, t_last);
  }
  const int64_t slots = at::get_num_threads();
  const int64_t rows = kTileTokens * s.heads;
  std::vector<std::vector<T>> q_tiles(slots), products(slots), scores(slots);
  cpu::run_tasks_costliest_first(costs, [&](int64_t task, int64_t slot) {
    const int64_t b = task / tiles_per_seq, t0 = (task % tiles_per_seq) * kTileTokens;
    const int64_t tokens = std::min(kTileTokens, s.seqlen_q - t0);
    if (costs[task] == 0) return;
    q_tiles[slot].resize(rows * s.head_dim);
    products[slot].resize(rows * kChunkKeys);
    scores[slot].resize(kTileTokens * kChunkKeys);
    load_q_tile(in.q, b, t0, tokens, q_tiles[slot].data());
    for (int64_t s0 = 0; s0 < costs[task]; s0 += kChunkKeys) {
      const int64_t n = std::min(kChunkKeys, costs[task] - s0);
      head_products(in, b, q_tiles[slot].data(), tokens, s0, n, products[slot].data());
      sum_heads(in, b, t0, tokens, s0, n, products[slot].data(), scores[slot].data());
      visit(b, t0, tokens, s0, n, scores[slot].data(), slot);
    }
  });
}

template <typename T>
IndexerOperands<T> make_operands(const IndexerShape& s, const at::Tensor& q, const at::Tensor& k_t,
                                 const at::Tensor& weights, const std::optional<at::Tensor>& k_scale,
                                 const std::optional<at::Tensor>& seqlens, double scale,
                                 bool causal) {
  return {s,
          q,
          k_t.const_data_ptr<T>(),
          weights.const_data_ptr<T>(),
          k_scale.has_value() ? k_scale->const_data_ptr<float>() : nullptr,
          seqlens.has_value() ? seqlens->const_data_ptr<int32_t>() : nullptr,
          T(scale),
          causal};
}

// The checked, contiguous operands every CPU indexer op starts from.
struct IndexerInputs {
  IndexerShape s;
  at::ScalarType acc;
  at::Tensor k_t, weights;
  std::optional<at::Tensor> k_scale, seqlens;
};

IndexerInputs prepare_indexer_inputs(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& weights,
                                     const std::optional<at::Tensor>& k_scale,
                                     const std::optional<at::Tensor>& seqlens_k) {
  IndexerInputs in;
  in.s = check_indexer_inputs(q, k, weights, k_scale, seqlens_k);
  if (seqlens_k.has_value()) check_indexer_seqlens_values(*seqlens_k, in.s.seqlen_k);
  in.acc = cpu::accumulation_dtype(q);
  in.k_t = k.to(in.acc).transpose(1, 2).contiguous();
  in.weights = weights.contiguous();
  if (k_scale.has_value()) in.k_scale = k_scale->contiguous();
  if (seqlens_k.has_value()) in.seqlens = seqlens_k->contiguous();
  return in;
}

at::Tensor indexer_logits_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                              const std::optional<at::Tensor>& k_scale,
                              const std::optional<at::Tensor>& seqlens_k, double softmax_scale,
                              bool causal) {
  const IndexerInputs in = prepare_indexer_inputs(q, k, weights, k_scale, seqlens_k);
  const IndexerShape& s = in.s;
  at::Tensor logits = at::full({s.batch, s.seqlen_q, s.seqlen_k},
                               -std::numeric_limits<double>::infinity(), q.options().dtype(in.acc));
  AT_DISPATCH_FLOATING_TYPES(in.acc, "indexer_logits_cpu", [&] {
    const auto ops = make_operands<scalar_t>(s, q, in.k_t, in.weights, in.k_scale, in.seqlens,
                                             softmax_scale, causal);
    scalar_t* out = logits.data_ptr<scalar_t>();
    for_each_score_tile(ops, [&](int64_t b, int64_t t0, int64_t tokens, int64_t s0, int64_t n,
                                 const scalar_t* scores, int64_t) {
      for (int64_t i = 0; i < tokens; ++i) {
        const int64_t end = std::min(ops.visible_end(b, t0 + i) - s0, n);
        std::copy(scores + i * n, scores + i * n + std::max<int64_t>(end, 0),
                  out + (b * s.seqlen_q + t0 + i) * s.seqlen_k + s0);
      }
    });
  });
  return logits;
}

// A query row's running top-k: candidates (score, key) in a buffer of twice topk, cut back to the
// best topk whenever it fills. `better` is a strict total order (higher score, then lower key:
// SPEC §4's tie rule), so the result never depends on the order of cuts.
template <typename T>
class RunningTopk {
 public:
  explicit RunningTopk(int64_t topk) : topk_(topk) { kept_.reserve(2 * topk); }

  void reset() {
    kept_.clear();
    has_floor_ = false;
  }

  void offer(T score, int32_t key) {
    const Candidate c{score, key};
    if (score != score || (has_floor_ && !better(c, floor_))) return;  // NaN cannot be ranked
    kept_.push_back(c);
    if (int64_t(kept_.size()) == 2 * topk_) cut();
  }

  // The kept keys, best first, then -1 up to topk.
  void write(int32_t* out) {
    if (int64_t(kept_.size()) > topk_) cut();
    std::sort(kept_.begin(), kept_.end(), better);
    for (int64_t r = 0; r < topk_; ++r) out[r] = r < int64_t(kept_.size()) ? kept_[r].key : -1;
  }

 private:
  struct Candidate {
    T score;
    int32_t key;
  };
  static bool better(const Candidate& a, const Candidate& b) {
    return a.score > b.score || (a.score == b.score && a.key < b.key);
  }
  void cut() {
    std::nth_element(kept_.begin(), kept_.begin() + (topk_ - 1), kept_.end(), better);
    kept_.resize(topk_);
    floor_ = kept_[topk_ - 1];  // the worst kept: later keys must beat it
    has_floor_ = true;
  }

  int64_t topk_;
  std::vector<Candidate> kept_;
  Candidate floor_{};
  bool has_floor_ = false;
};

at::Tensor indexer_topk_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                            const std::optional<at::Tensor>& k_scale,
                            const std::optional<at::Tensor>& seqlens_k, int64_t topk,
                            double softmax_scale, bool causal) {
  check_indexer_topk(topk);
  const IndexerInputs in = prepare_indexer_inputs(q, k, weights, k_scale, seqlens_k);
  const IndexerShape& s = in.s;
  at::Tensor indices = at::full({s.batch, s.seqlen_q, topk}, -1, q.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(in.acc, "indexer_topk_cpu", [&] {
    const auto ops = make_operands<scalar_t>(s, q, in.k_t, in.weights, in.k_scale, in.seqlens,
                                             softmax_scale, causal);
    int32_t* out = indices.data_ptr<int32_t>();
    // One tile's rows per thread slot, reset when a new tile starts (chunks come in order).
    std::vector<std::vector<RunningTopk<scalar_t>>> rows(at::get_num_threads());
    for (auto& slot_rows : rows) slot_rows.assign(kTileTokens, RunningTopk<scalar_t>(topk));
    for_each_score_tile(ops, [&](int64_t b, int64_t t0, int64_t tokens, int64_t s0, int64_t n,
                                 const scalar_t* scores, int64_t slot) {
      for (int64_t i = 0; i < tokens; ++i) {
        RunningTopk<scalar_t>& row = rows[slot][i];
        const int64_t end = ops.visible_end(b, t0 + i);
        if (s0 == 0) row.reset();
        for (int64_t j = 0; j < std::min(n, end - s0); ++j) row.offer(scores[i * n + j], s0 + j);
        // The chunk holding the row's last visible key makes the row final.
        if (s0 < end && end <= s0 + n) row.write(out + (b * s.seqlen_q + t0 + i) * topk);
      }
    });
  });
  return indices;
}

// The tile's products become dz = ∂L/∂(q·k) in place, and `dweights` (tokens x H, or null)
// gains Σ_s g·ReLU(q·k), with g = scale·dI[t, s] on visible entries and 0 elsewhere (no k_scale:
// FP8 logits are not differentiable).
template <typename T>
void products_to_dz(const IndexerOperands<T>& in, int64_t b, int64_t t0, int64_t tokens,
                    int64_t s0, int64_t n, const T* dlogits, T* products, T* dweights) {
  const IndexerShape& s = in.s;
  std::vector<T> g(n);
  for (int64_t i = 0; i < tokens; ++i) {
    const int64_t end = std::min(in.visible_end(b, t0 + i) - s0, n);
    const T* d_row = dlogits + (b * s.seqlen_q + t0 + i) * s.seqlen_k + s0;
    for (int64_t j = 0; j < n; ++j) g[j] = j < end ? in.scale * d_row[j] : T(0);
    const T* w = in.weights + (b * s.seqlen_q + t0 + i) * s.heads;
    for (int64_t h = 0; h < s.heads; ++h) {
      T* z = products + (i * s.heads + h) * n;
      T dw = 0;
      for (int64_t j = 0; j < n; ++j) {
        const bool active = z[j] > T(0);
        dw += active ? g[j] * z[j] : T(0);
        z[j] = active ? g[j] * w[h] : T(0);
      }
      if (dweights != nullptr) dweights[i * s.heads + h] += dw;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> indexer_logits_bwd_cpu(
    const at::Tensor& dlogits, const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
    const std::optional<at::Tensor>& seqlens_k, double softmax_scale, bool causal) {
  check_indexer_logits_bwd_inputs(dlogits, q, k, weights, seqlens_k);
  const IndexerInputs in = prepare_indexer_inputs(q, k, weights, std::nullopt, seqlens_k);
  const IndexerShape& s = in.s;
  const at::Tensor k_rows = k.to(in.acc).contiguous(), dl = dlogits.contiguous();
  at::Tensor dq = at::zeros({s.batch, s.seqlen_q, s.heads, s.head_dim}, q.options().dtype(in.acc));
  at::Tensor dk = at::zeros({s.batch, s.seqlen_k, s.head_dim}, dq.options());
  at::Tensor dweights = at::zeros({s.batch, s.seqlen_q, s.heads}, dq.options());
  AT_DISPATCH_FLOATING_TYPES(in.acc, "indexer_logits_bwd_cpu", [&] {
    using T = scalar_t;
    const auto ops = make_operands<T>(s, q, in.k_t, in.weights, std::nullopt, in.seqlens,
                                      softmax_scale, causal);
    const int64_t rows = kTileTokens * s.heads, d = s.head_dim;
    const int64_t tiles_per_seq = (s.seqlen_q + kTileTokens - 1) / kTileTokens;
    const int64_t chunks_per_seq = (s.seqlen_k + kChunkKeys - 1) / kChunkKeys;
    const T* dl_data = dl.const_data_ptr<T>();
    const T* k_data = k_rows.const_data_ptr<T>();
    // dq and the weights' gradient: one token tile per task, key chunks in order.
    at::parallel_for(0, s.batch * tiles_per_seq, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> q_tile(rows * d), products(rows * kChunkKeys);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles_per_seq, t0 = (task % tiles_per_seq) * kTileTokens;
        const int64_t tokens = std::min(kTileTokens, s.seqlen_q - t0);
        const int64_t keys = ops.visible_end(b, t0 + tokens - 1);
        T* dq_tile = dq.data_ptr<T>() + (b * s.seqlen_q + t0) * s.heads * d;
        load_q_tile(q, b, t0, tokens, q_tile.data());
        for (int64_t s0 = 0; s0 < keys; s0 += kChunkKeys) {
          const int64_t n = std::min(kChunkKeys, keys - s0);
          head_products(ops, b, q_tile.data(), tokens, s0, n, products.data());
          products_to_dz(ops, b, t0, tokens, s0, n, dl_data, products.data(),
                         dweights.data_ptr<T>() + (b * s.seqlen_q + t0) * s.heads);
          cpu::gemm_nn(tokens * s.heads, d, n, products.data(), n,
                       k_data + (b * s.seqlen_k + s0) * d, d, true, dq_tile, d);
        }
      }
      cpu::gemm_thread_done();
    });
    // dk: one key chunk per task, over the token tiles that see it.
    at::parallel_for(0, s.batch * chunks_per_seq, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> q_tile(rows * d), products(rows * kChunkKeys), dz_t(rows * kChunkKeys);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks_per_seq, s0 = (task % chunks_per_seq) * kChunkKeys;
        const int64_t n = std::min(kChunkKeys, ops.keys(b) - s0);
        T* dk_chunk = dk.data_ptr<T>() + (b * s.seqlen_k + s0) * d;
        for (int64_t t0 = 0; t0 < s.seqlen_q && n > 0; t0 += kTileTokens) {
          const int64_t tokens = std::min(kTileTokens, s.seqlen_q - t0);
          if (ops.visible_end(b, t0 + tokens - 1) <= s0) continue;  // the tile sees no key here
          load_q_tile(q, b, t0, tokens, q_tile.data());
          head_products(ops, b, q_tile.data(), tokens, s0, n, products.data());
          products_to_dz<T>(ops, b, t0, tokens, s0, n, dl_data, products.data(), nullptr);
          cpu::transpose_tile(products.data(), tokens * s.heads, n, n, dz_t.data());
          cpu::gemm_nn(n, d, tokens * s.heads, dz_t.data(), tokens * s.heads, q_tile.data(), d,
                       true, dk_chunk, d);
        }
      }
      cpu::gemm_thread_done();
    });
  });
  const auto dtype = q.scalar_type();
  return {dq.to(dtype), dk.to(dtype), dweights};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CPU, m) {
  m.impl("indexer_logits", &indexer_logits_cpu);
  m.impl("indexer_logits_bwd", &indexer_logits_bwd_cpu);
  m.impl("indexer_topk", &indexer_topk_cpu);
}

}  // namespace deepseek_attn
