#pragma once
// One family of input checks. Every message names the argument, what was expected and what
// was given, so both back ends reject the same inputs with the same words.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

// ValueError: a shape, size or value is wrong.
#define DEEPSEEK_ATTN_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)
// TypeError: a dtype is wrong.
#define DEEPSEEK_ATTN_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, __VA_ARGS__)
// RuntimeError: a device or memory-layout problem.
#define DEEPSEEK_ATTN_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)

namespace deepseek_attn {

inline void check_defined(const at::Tensor& t, const char* name) {
  DEEPSEEK_ATTN_CHECK_VALUE(t.defined(), name, " must be a tensor (got an undefined tensor)");
}

inline void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  DEEPSEEK_ATTN_CHECK_VALUE(t.dim() == rank, name, " must have ", rank, " dimensions ", layout,
                            " (got ", t.dim(), " dimensions, shape ", t.sizes(), ")");
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name) {
  DEEPSEEK_ATTN_CHECK(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
                      " (got ", t.device(), " and ", ref.device(), ")");
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref,
                             const char* ref_name) {
  DEEPSEEK_ATTN_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name,
                           " must have the same dtype as ", ref_name, " (got ", t.scalar_type(),
                           " and ", ref.scalar_type(), ")");
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  DEEPSEEK_ATTN_CHECK_TYPE(t.scalar_type() == expected, name, " must have dtype ", expected,
                           " (got ", t.scalar_type(), ")");
}

inline void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  DEEPSEEK_ATTN_CHECK(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, name,
                      " must be contiguous in its last dimension (got stride ", t.stride(-1),
                      "); call .contiguous() first");
}

inline void check_size(const at::Tensor& t, const char* name, int64_t dim, int64_t expected,
                       const char* what) {
  DEEPSEEK_ATTN_CHECK_VALUE(t.size(dim) == expected, name, ".size(", dim, ") (", what, ") must be ",
                            expected, " (got ", t.size(dim), ", shape ", t.sizes(), ")");
}

// DEEPSEEK_ATTN_CHECK_INDICES=1: the CUDA back end also validates index values (SPEC §0: a
// debug switch; it synchronises). Read once.
inline bool index_value_checks_requested() {
  static const bool requested = [] {
    const char* flag = std::getenv("DEEPSEEK_ATTN_CHECK_INDICES");
    return flag != nullptr && std::string(flag) == "1";
  }();
  return requested;
}

}  // namespace deepseek_attn
