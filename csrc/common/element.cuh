#pragma once
// The element type behind each DType on the device: Element<DType::kBFloat16> is __nv_bfloat16,
// and so on. Kernels are templated on a DType and name their element type through this.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"

namespace deepseek_attn {
namespace cuda {

template <DType kDType>
struct ElementTrait;
template <>
struct ElementTrait<DType::kFloat32> {
  using type = float;
};
template <>
struct ElementTrait<DType::kBFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct ElementTrait<DType::kFloat16> {
  using type = __half;
};
template <>
struct ElementTrait<DType::kE4m3> {
  using type = uint8_t;  // e4m3 bits; common/fp8.h converts
};
template <DType kDType>
using Element = typename ElementTrait<kDType>::type;

}  // namespace cuda
}  // namespace deepseek_attn
