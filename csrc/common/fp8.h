#pragma once
// The SPEC §2 quantisation rule, shared by host and device code (no torch headers):
//   s = max(amax, 1e-4) / 448, optionally rounded up to a power of two ("ue8m0"),
//   q = e4m3(clamp(x / s, -448, 448)).
// amax propagates NaN, matching torch.amax in deepseek_attn/reference/fp8.py.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/key_window.h"  // DEEPSEEK_ATTN_HOST_DEVICE

namespace deepseek_attn {

constexpr float kFp8Max = 448.f;
constexpr float kFp8AmaxFloor = 1e-4f;

// Running |x| maximum that keeps a NaN once it has seen one.
DEEPSEEK_ATTN_HOST_DEVICE float nan_propagating_absmax(float running, float x) {
  const float magnitude = fabsf(x);
  return (magnitude > running || magnitude != magnitude) && running == running ? magnitude
                                                                               : running;
}

DEEPSEEK_ATTN_HOST_DEVICE uint32_t float_bits(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  return bits;
}

DEEPSEEK_ATTN_HOST_DEVICE float float_from_bits(uint32_t bits) {
  float x;
  memcpy(&x, &bits, sizeof(x));
  return x;
}

// The smallest power of two >= s, exactly (s is a normal positive float here); NaN/inf pass.
DEEPSEEK_ATTN_HOST_DEVICE float round_up_to_power_of_two(float s) {
  const uint32_t bits = float_bits(s);
  const uint32_t exponent = bits & 0x7f800000u;
  if (exponent == 0x7f800000u || (bits & 0x007fffffu) == 0u) return s;
  return float_from_bits(exponent + 0x00800000u);
}

// Scale of one group from its amax. IEEE division (fast-math builds must not turn it into a
// reciprocal): host `/`, device __fdiv_rn.
DEEPSEEK_ATTN_HOST_DEVICE float fp8_scale_from_amax(float amax, bool ue8m0) {
  const float floored = amax < kFp8AmaxFloor ? kFp8AmaxFloor : amax;  // NaN stays NaN
#if defined(__CUDA_ARCH__)
  const float scale = __fdiv_rn(floored, kFp8Max);
#else
  const float scale = floored / kFp8Max;
#endif
  return ue8m0 ? round_up_to_power_of_two(scale) : scale;
}

// x / s clamped to the e4m3 range (NaN stays NaN); the caller rounds it to e4m3.
DEEPSEEK_ATTN_HOST_DEVICE float fp8_scaled_and_clamped(float x, float scale) {
#if defined(__CUDA_ARCH__)
  const float scaled = __fdiv_rn(x, scale);
#else
  const float scaled = x / scale;
#endif
  return scaled > kFp8Max ? kFp8Max : (scaled < -kFp8Max ? -kFp8Max : scaled);
}

// float8_e4m3fn bits of clamp(x, -448, 448) rounded to nearest even, NaN to NaN: the SPEC §2
// saturating cast, equal to c10::Float8_e4m3fn(fp8_scaled_and_clamped(...)) for every float.
// Integer-only selections by masks, so CPU loops vectorise (GCC will not if-convert float
// comparisons, which may trap).
DEEPSEEK_ATTN_HOST_DEVICE uint8_t e4m3_bits_saturating(float x) {
  const uint32_t bits = float_bits(x);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t magnitude = bits & 0x7fffffffu;
  // Below 2^-6 (subnormal e4m3, steps of 2^-9): adding 2^14 leaves |x| rounded to a multiple of
  // 2^-9 in the low mantissa bits of the sum.
  const uint32_t subnormal = float_bits(float_from_bits(magnitude) + 16384.f) - 0x46800000u;
  // Normal: rebias the exponent (127 -> 7) and round the 20 dropped mantissa bits to even.
  const uint32_t normal = (magnitude + 0xc407ffffu + ((magnitude >> 20) & 1u)) >> 20;
  const uint32_t is_subnormal = 0u - uint32_t(magnitude < 0x3c800000u);  // below 2^-6
  const uint32_t is_over = 0u - uint32_t(magnitude > 0x43e00000u);       // above 448 or NaN
  const uint32_t is_nan = 0u - uint32_t(magnitude > 0x7f800000u);
  const uint32_t in_range = (subnormal & is_subnormal) | (normal & ~is_subnormal);
  const uint32_t saturated = (0x7fu & is_nan) | (0x7eu & ~is_nan);  // NaN, else 448
  return uint8_t(sign | (saturated & is_over) | (in_range & ~is_over));
}

// bfloat16 bits of an e4m3 value, exactly (e4m3 values are a subset of bf16). 16-bit integer
// operations only, so CPU loops vectorise at full width.
DEEPSEEK_ATTN_HOST_DEVICE uint16_t bf16_bits_from_e4m3(uint8_t bits) {
  const uint16_t magnitude = bits & 0x7fu;
  const uint16_t normal = uint16_t((magnitude << 4) + (120u << 7));  // exponent bias 7 -> 127
  // Subnormal m·2^-9 (m < 8): the leading one of m sets the exponent, the rest the mantissa.
  const uint16_t subnormal = magnitude >= 4u   ? uint16_t(0x3c00u | ((magnitude << 5) & 0x7fu))
                             : magnitude >= 2u ? uint16_t(0x3b80u | ((magnitude << 6) & 0x7fu))
                                               : uint16_t(magnitude == 1u ? 0x3b00u : 0u);
  const uint16_t finite = magnitude < 8u ? subnormal : normal;
  return uint16_t(((bits & 0x80u) << 8) | (magnitude == 0x7fu ? 0x7fc0u : finite));
}

// float8_e4m3fn bits to float, exactly (no infinities; S.1111.111 is NaN).
DEEPSEEK_ATTN_HOST_DEVICE float e4m3_to_float(uint8_t bits) {
  const uint32_t sign = uint32_t(bits & 0x80u) << 24;
  const uint32_t exponent = (bits >> 3) & 0xfu, mantissa = bits & 0x7u;
  if (exponent == 0xfu && mantissa == 0x7u) return float_from_bits(sign | 0x7fc00000u);
  if (exponent == 0) {  // subnormal: mantissa/8 * 2^-6
    const float magnitude = float(mantissa) * 0.001953125f;
    return sign ? -magnitude : magnitude;
  }
  return float_from_bits(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

}  // namespace deepseek_attn
