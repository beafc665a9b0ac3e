#pragma once
// Emulated twin of <cuda_fp16.h>: IEEE half storage with round-to-nearest-even.

#include <cuda_runtime.h>

#include "emulation/numeric.h"

struct alignas(2) __half {
  uint16_t bits;
  __half() = default;
  __half(float x) : bits(dsa_emu::float_to_half(x)) {}
  operator float() const { return dsa_emu::half_to_float(bits); }
};
struct alignas(4) __half2 {
  __half x, y;
};
struct __half_raw {
  unsigned short x;
};
struct __half2_raw {
  unsigned short x, y;
};

inline __half2 __floats2half2_rn(float low, float high) { return {__half(low), __half(high)}; }
inline float2 __half22float2(__half2 pair) { return {float(pair.x), float(pair.y)}; }
