#include "fp8/checks.h"

#include "common/checks.h"

namespace deepseek_attn {

namespace {

void check_high_precision_input(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  DEEPSEEK_ATTN_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                           name, " must have dtype float32, bfloat16 or float16 (got ", dtype, ")");
}

void check_group_size(int64_t size, const char* name) {
  DEEPSEEK_ATTN_CHECK_VALUE(size > 0 && size % 16 == 0 && size <= 1024, name,
                            " must be a positive multiple of 16 up to 1024 (got ", size, ")");
}

}  // namespace

void check_quantize_act_inputs(const at::Tensor& x, int64_t group_size) {
  check_defined(x, "x");
  DEEPSEEK_ATTN_CHECK_VALUE(x.dim() >= 1,
                            "x must have at least 1 dimension (..., K) (got a scalar)");
  check_high_precision_input(x, "x");
  check_group_size(group_size, "group_size");
}

void check_quantize_weight_inputs(const at::Tensor& w, int64_t block_size) {
  check_defined(w, "w");
  check_rank(w, "w", 2, "(N, K)");
  check_high_precision_input(w, "w");
  check_group_size(block_size, "block_size");
}

Fp8GemmShape check_fp8_gemm_inputs(const at::Tensor& a, const at::Tensor& a_scales,
                                   const at::Tensor& b, const at::Tensor& b_scales,
                                   at::ScalarType out_dtype) {
  check_defined(a, "a");
  check_defined(a_scales, "a_scales");
  check_defined(b, "b");
  check_defined(b_scales, "b_scales");
  check_rank(a, "a", 2, "(M, K)");
  check_rank(b, "b", 2, "(N, K)");
  check_rank(a_scales, "a_scales", 2, "(M, ceil(K / 128))");
  check_rank(b_scales, "b_scales", 2, "(ceil(N / 128) or N, ceil(K / 128))");
  check_same_device(a_scales, "a_scales", a, "a");
  check_same_device(b, "b", a, "a");
  check_same_device(b_scales, "b_scales", a, "a");
  check_dtype(a, "a", at::kFloat8_e4m3fn);
  check_dtype(b, "b", at::kFloat8_e4m3fn);
  check_dtype(a_scales, "a_scales", at::kFloat);
  check_dtype(b_scales, "b_scales", at::kFloat);
  DEEPSEEK_ATTN_CHECK_TYPE(
      out_dtype == at::kBFloat16 || out_dtype == at::kHalf || out_dtype == at::kFloat,
      "out_dtype must be bfloat16, float16 or float32 (got ", out_dtype, ")");

  Fp8GemmShape shape;
  shape.m = a.size(0);
  shape.k = a.size(1);
  shape.n = b.size(0);
  shape.k_blocks = (shape.k + 127) / 128;
  check_size(b, "b", 1, shape.k, "K, as in a");
  DEEPSEEK_ATTN_CHECK(a.is_contiguous(), "a must be contiguous (row-major (M, K)) (got strides ",
                      a.strides(), ")");
  DEEPSEEK_ATTN_CHECK(b.is_contiguous(), "b must be contiguous (row-major (N, K)) (got strides ",
                      b.strides(), ")");
  const std::vector<int64_t> a_scales_shape{shape.m, shape.k_blocks};
  DEEPSEEK_ATTN_CHECK_VALUE(a_scales.sizes() == at::IntArrayRef(a_scales_shape),
                            "a_scales must have shape ", at::IntArrayRef(a_scales_shape),
                            " (M, ceil(K / 128)) (got ", a_scales.sizes(), ")");
  const int64_t n_blocks = (shape.n + 127) / 128;
  DEEPSEEK_ATTN_CHECK_VALUE(b_scales.size(1) == shape.k_blocks &&
                                (b_scales.size(0) == shape.n || b_scales.size(0) == n_blocks),
                            "b_scales must have shape [", n_blocks, ", ", shape.k_blocks,
                            "] (128x128 blocks) or [", shape.n, ", ", shape.k_blocks,
                            "] (1x128 rows) (got ", b_scales.sizes(), ")");
  // With N == 1 both readings coincide.
  shape.b_scaling = b_scales.size(0) == shape.n ? Fp8BScaling::kRow : Fp8BScaling::kBlock128;
  return shape;
}

}  // namespace deepseek_attn
