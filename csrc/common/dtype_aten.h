#pragma once
// torch's ScalarType in the DType vocabulary (host code that fills params).

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "common/dtype.h"

namespace deepseek_attn {

inline DType dtype_of(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Float:
      return DType::kFloat32;
    case c10::ScalarType::BFloat16:
      return DType::kBFloat16;
    case c10::ScalarType::Half:
      return DType::kFloat16;
    case c10::ScalarType::Float8_e4m3fn:
      return DType::kE4m3;
    default:
      TORCH_CHECK(false, "no kernel element type for ", type);
  }
}

}  // namespace deepseek_attn
