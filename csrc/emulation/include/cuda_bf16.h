#pragma once
// Emulated twin of <cuda_bf16.h>: bfloat16 storage with the GPU's round-to-nearest-even.

#include <cuda_runtime.h>

#include "emulation/numeric.h"

struct alignas(2) __nv_bfloat16 {
  uint16_t bits;
  __nv_bfloat16() = default;
  __nv_bfloat16(float x) : bits(dsa_emu::float_to_bf16(x)) {}
  operator float() const { return dsa_emu::bf16_to_float(bits); }
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline __nv_bfloat162 __floats2bfloat162_rn(float low, float high) {
  return {__nv_bfloat16(low), __nv_bfloat16(high)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 pair) { return {float(pair.x), float(pair.y)}; }
