#pragma once
// The one dtype vocabulary of params, launch code and kernels: which element type a tensor
// holds. Plain C++ (host code and kernels share it); common/element.cuh maps it to the device
// types and common/dtype_aten.h to and from torch's.

#include <cstdint>

namespace deepseek_attn {

enum class DType : uint8_t {
  kFloat32,
  kBFloat16,
  kFloat16,
  kE4m3,  // float8_e4m3fn, stored as raw bytes
};

}  // namespace deepseek_attn
