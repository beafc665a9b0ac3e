#pragma once
// The CUDA kernels copy 16-byte chunks, so every row they read must start 16-byte aligned.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace deepseek_attn {

// `t` itself when its base and its strides but the last keep rows 16-byte aligned, else a
// compact copy in fresh (aligned) memory.
inline at::Tensor aligned_for_vector_loads(const at::Tensor& t) {
  const int64_t chunk = 16 / t.element_size();
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t dim = 0; dim + 1 < t.dim(); ++dim) aligned = aligned && t.stride(dim) % chunk == 0;
  return aligned ? t : t.clone(at::MemoryFormat::Contiguous);
}

}  // namespace deepseek_attn
