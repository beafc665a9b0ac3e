#pragma once
// Emulated twin of <cuda_fp8.h>: the e4m3 conversions the kernels call, bit-exact.

#include <cuda_fp16.h>

#include "emulation/numeric.h"

using __nv_fp8_storage_t = unsigned char;
using __nv_fp8x2_storage_t = unsigned short;
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };

inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t saturate,
                                                __nv_fp8_interpretation_t format) {
  if (format != __NV_E4M3) __trap();  // only e4m3 is emulated
  return dsa_emu::float_to_e4m3(x, saturate == __NV_SATFINITE);
}

inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t pair,
                                              __nv_fp8_interpretation_t format) {
  if (format != __NV_E4M3) __trap();
  // Every e4m3 value is exact in fp16.
  return {dsa_emu::float_to_half(dsa_emu::e4m3_to_float(uint8_t(pair & 0xff))),
          dsa_emu::float_to_half(dsa_emu::e4m3_to_float(uint8_t(pair >> 8)))};
}
