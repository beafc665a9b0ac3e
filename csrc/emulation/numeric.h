#pragma once
// Bit-exact conversions of the 16- and 8-bit float formats the kernels use, as the GPU does
// them: round to nearest even, NaN kept, e4m3 ("fn": no infinity, NaN = S.1111.111) saturating
// to ±448 with __NV_SATFINITE. Shared by the emulated cuda_bf16/fp16/fp8 headers and the
// emulated tensor-core instructions.

#include <cmath>
#include <cstdint>
#include <cstring>

namespace dsa_emu {

inline uint32_t bits_of(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

inline float float_of(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

inline float bf16_to_float(uint16_t bits) { return float_of(uint32_t(bits) << 16); }

inline uint16_t float_to_bf16(float x) {
  const uint32_t bits = bits_of(x);
  if (std::isnan(x)) return uint16_t((bits >> 16) | 0x0040u);  // quiet NaN, sign kept
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

inline float half_to_float(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const int exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return float_of(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa · 2^-24, exact in fp32
    const float magnitude = std::ldexp(float(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return float_of(sign | (uint32_t(exponent - 15 + 127) << 23) | (mantissa << 13));
}

// Rounds `magnitude_bits` (a positive float's bits) right by `shift` bits, to nearest even.
inline uint32_t shift_right_nearest_even(uint32_t value, int shift) {
  if (shift <= 0) return value;
  if (shift > 31) return 0;
  const uint32_t kept = value >> shift;
  const uint32_t remainder = value & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  return kept + ((remainder > half || (remainder == half && (kept & 1u))) ? 1u : 0u);
}

inline uint16_t float_to_half(float x) {
  const uint32_t bits = bits_of(x);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  if (std::isnan(x)) return uint16_t(sign | 0x7e00u | ((bits >> 13) & 0x3ffu));
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds past 65504: inf
  const int exponent = int(magnitude >> 23) - 127;
  if (exponent >= -14) {  // normal: drop 13 mantissa bits; a carry moves into the exponent
    const uint32_t rebased = magnitude - (uint32_t(127 - 15) << 23);
    return uint16_t(sign | shift_right_nearest_even(rebased, 13));
  }
  // Subnormal: the value in units of 2^-24, with the implicit bit made explicit.
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const int shift = 13 + (-14 - exponent);
  return uint16_t(sign | (magnitude == 0 ? 0u : shift_right_nearest_even(significand, shift)));
}

inline float e4m3_to_float(uint8_t bits) {
  const bool negative = bits & 0x80u;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = NAN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(float(mantissa), -9);
  } else {
    magnitude = std::ldexp(float(8 + mantissa), exponent - 10);
  }
  return negative ? -magnitude : magnitude;
}

// float -> e4m3, round to nearest even; `saturate` clamps to ±448 (else overflow gives NaN).
inline uint8_t float_to_e4m3(float x, bool saturate) {
  const uint32_t bits = bits_of(x);
  const uint8_t sign = uint8_t((bits >> 24) & 0x80u);
  if (std::isnan(x)) return uint8_t(sign | 0x7fu);
  const uint32_t magnitude = bits & 0x7fffffffu;
  const int exponent = int(magnitude >> 23) - 127;
  uint32_t encoded;
  if (exponent >= -6) {  // normal range of e4m3: keep 3 mantissa bits
    const uint32_t rebased = magnitude - (uint32_t(127 - 7) << 23);
    encoded = exponent > 8 ? 0x7fu : shift_right_nearest_even(rebased, 20);
  } else {  // subnormal: units of 2^-9
    const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
    encoded = magnitude == 0 ? 0u : shift_right_nearest_even(significand, 20 + (-6 - exponent));
  }
  if (encoded > 0x7eu) encoded = saturate ? 0x7eu : 0x7fu;  // past 448
  return uint8_t(sign | encoded);
}

}  // namespace dsa_emu
