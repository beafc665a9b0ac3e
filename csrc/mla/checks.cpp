// Input checks of mla_norm_rope and its backward (SPEC §3), one set of words for both back ends.

#include "mla/checks.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace deepseek_attn {
namespace {

void check_row_dtype(const at::Tensor& x, const char* name) {
  const at::ScalarType dtype = x.scalar_type();
  const bool low_or_single = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  // fp64 serves gradcheck on CPU only.
  DEEPSEEK_ATTN_CHECK_TYPE(low_or_single || (dtype == at::kDouble && x.is_cpu()), name,
                           " must have dtype float32, bfloat16 or float16 (or float64 on CPU) "
                           "(got ",
                           dtype, ")");
}

// The rope tables' and rstd's dtype: fp32, or fp64 for fp64 rows (exact CPU tests).
at::ScalarType statistics_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Fills rope_pairs from cos/sin (both or neither: (tokens, pairs) fp32) and norm_dim from the
// weight ((norm_dim,) in x's dtype); both parts must fit in a row.
void check_norm_and_rope(NormRopeParams& p, const at::Tensor& x,
                         const std::optional<at::Tensor>& norm_weight,
                         const std::optional<at::Tensor>& rope_cos,
                         const std::optional<at::Tensor>& rope_sin) {
  if (norm_weight.has_value()) {
    const at::Tensor& w = *norm_weight;
    check_rank(w, "norm_weight", 1, "(norm_dim,)");
    check_same_device(w, "norm_weight", x, "x");
    check_same_dtype(w, "norm_weight", x, "x");
    DEEPSEEK_ATTN_CHECK(w.is_contiguous(), "norm_weight must be contiguous");
    p.norm_dim = w.size(0);
  }
  DEEPSEEK_ATTN_CHECK_VALUE(rope_cos.has_value() == rope_sin.has_value(),
                            "rope_cos and rope_sin must be given together (got only ",
                            rope_cos.has_value() ? "rope_cos" : "rope_sin", ")");
  if (rope_cos.has_value()) {
    for (const auto& [t, name] : {std::pair{*rope_cos, "rope_cos"}, {*rope_sin, "rope_sin"}}) {
      check_rank(t, name, 2, "(tokens, rope_dim / 2)");
      check_same_device(t, name, x, "x");
      check_dtype(t, name, statistics_dtype(x));
      DEEPSEEK_ATTN_CHECK(t.is_contiguous(), name, " must be contiguous");
      check_size(t, name, 0, p.tokens, "tokens, as x.size(0)");
    }
    check_size(*rope_sin, "rope_sin", 1, rope_cos->size(1), "rope_dim / 2, as rope_cos");
    p.rope_pairs = rope_cos->size(1);
  }
  DEEPSEEK_ATTN_CHECK_VALUE(p.norm_dim + 2 * p.rope_pairs <= p.dim, "the normalised columns (",
                            p.norm_dim, ") and the rotated ones (", 2 * p.rope_pairs,
                            ") must fit in x's rows of ", p.dim, " values");
}

}  // namespace

NormRopeParams check_norm_rope_inputs(const NormRopeInputs& in) {
  const at::Tensor& x = in.x;
  check_defined(x, "x");
  check_rank(x, "x", 3, "(tokens, groups, dim)");
  check_row_dtype(x, "x");
  DEEPSEEK_ATTN_CHECK(x.is_contiguous(), "x must be contiguous; call .contiguous() first");
  DEEPSEEK_ATTN_CHECK_VALUE(in.eps >= 0, "eps must be >= 0 (got ", in.eps, ")");
  NormRopeParams p;
  p.tokens = x.size(0), p.groups = x.size(1), p.dim = x.size(2);
  p.eps = float(in.eps);
  check_norm_and_rope(p, x, in.norm_weight, in.rope_cos, in.rope_sin);

  DEEPSEEK_ATTN_CHECK_VALUE(in.cache.has_value() == in.cache_slots.has_value(),
                            "cache and cache_slots must be given together (got only ",
                            in.cache.has_value() ? "cache" : "cache_slots", ")");
  if (!in.cache.has_value()) return p;
  const at::Tensor &cache = *in.cache, &slots = *in.cache_slots;
  DEEPSEEK_ATTN_CHECK_VALUE(p.groups == 1,
                            "a cache takes one row per token: x must be (tokens, "
                            "1, dim) (got ",
                            p.groups, " groups)");
  check_rank(slots, "cache_slots", 1, "(tokens,)");
  check_dtype(slots, "cache_slots", at::kLong);
  check_same_device(slots, "cache_slots", x, "x");
  check_size(slots, "cache_slots", 0, p.tokens, "tokens, as x.size(0)");
  check_same_device(cache, "cache", x, "x");
  DEEPSEEK_ATTN_CHECK(cache.is_contiguous(), "cache must be contiguous");
  DEEPSEEK_ATTN_CHECK_VALUE(cache.dim() >= 1, "cache must hold rows (got a 0-d tensor)");
  const at::ScalarType type = cache.scalar_type();
  if (type == at::kFloat8_e4m3fn || type == at::kByte) {
    DEEPSEEK_ATTN_CHECK_VALUE(
        cache.size(-1) == LatentFp8RowLayout::kRowBytes &&
            p.dim == LatentFp8RowLayout::kValues + LatentFp8RowLayout::kRopeValues,
        "an FP8 cache holds SPEC §3 rows of ", LatentFp8RowLayout::kRowBytes,
        " bytes for x's "
        "rows of ",
        LatentFp8RowLayout::kValues + LatentFp8RowLayout::kRopeValues, " values (got rows of ",
        cache.size(-1), " bytes and of ", p.dim, " values)");
    p.cache_write = LatentCacheWrite::kFp8;
  } else {
    check_same_dtype(cache, "cache", x, "x");
    check_size(cache, "cache", cache.dim() - 1, p.dim, "row width, as x.size(2)");
    p.cache_write = LatentCacheWrite::kRows;
  }
  p.cache_rows = cache.numel() / cache.size(-1);
  return p;
}

NormRopeBwdParams check_norm_rope_bwd_inputs(const at::Tensor& dy, const at::Tensor& x,
                                             const std::optional<at::Tensor>& norm_weight,
                                             const at::Tensor& rstd,
                                             const std::optional<at::Tensor>& rope_cos,
                                             const std::optional<at::Tensor>& rope_sin) {
  check_defined(x, "x");
  check_rank(x, "x", 3, "(tokens, groups, dim)");
  check_row_dtype(x, "x");
  DEEPSEEK_ATTN_CHECK(x.is_contiguous(), "x must be contiguous; call .contiguous() first");
  check_same_device(dy, "dy", x, "x");
  check_same_dtype(dy, "dy", x, "x");
  DEEPSEEK_ATTN_CHECK_VALUE(dy.sizes() == x.sizes(), "dy must have x's shape ", x.sizes(), " (got ",
                            dy.sizes(), ")");
  NormRopeParams shape;
  shape.tokens = x.size(0), shape.groups = x.size(1), shape.dim = x.size(2);
  check_norm_and_rope(shape, x, norm_weight, rope_cos, rope_sin);
  check_same_device(rstd, "rstd", x, "x");
  check_dtype(rstd, "rstd", statistics_dtype(x));
  DEEPSEEK_ATTN_CHECK_VALUE(
      rstd.dim() == 2 && rstd.size(0) == shape.tokens && rstd.size(1) == shape.groups,
      "rstd must be (tokens, groups) = (", shape.tokens, ", ", shape.groups, ") (got shape ",
      rstd.sizes(), ")");
  NormRopeBwdParams p;
  p.tokens = shape.tokens, p.groups = shape.groups, p.dim = shape.dim;
  p.norm_dim = shape.norm_dim, p.rope_pairs = shape.rope_pairs;
  return p;
}

void check_cache_slot_values(const at::Tensor& cache_slots, int64_t cache_rows) {
  const at::Tensor slots = cache_slots.cpu().contiguous();
  const int64_t* data = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < slots.numel(); ++t) {
    DEEPSEEK_ATTN_CHECK_VALUE(data[t] >= -1 && data[t] < cache_rows, "cache_slots[", t,
                              "] must be -1 (skip) or a row of the cache in [0, ", cache_rows,
                              ") (got ", data[t], ")");
  }
}

}  // namespace deepseek_attn
