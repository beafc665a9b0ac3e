#pragma once
// sm90a building blocks of the Hopper kernels (attention forward, FP8 GEMM): the PTX wrappers
// (cuda_hopper_intrinsics.cuh), wgmma shared-memory descriptors, and the host side that gates
// and feeds them (is this an sm90a device, the driver's tensor-map encoder). No torch headers.

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/cuda_mma.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSA_HOPPER_DEVICE 1
#include "common/cuda_hopper_intrinsics.cuh"
#endif

namespace deepseek_attn {
namespace cuda {

#if defined(DSA_HOPPER_DEVICE)

// Shared-memory matrix descriptor for a 128-byte-swizzled operand (the layout TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B; atoms of 8 rows x 128 bytes, 1024-byte aligned). For K-major
// operands `leading_bytes` is unused and `stride_bytes` is the step between 8-row groups; for
// MN-major ones `leading_bytes` steps between 64-element column blocks and `stride_bytes`
// between groups of 8 along K.
__device__ __forceinline__ uint64_t swizzle128_descriptor(const void* shared,
                                                          uint32_t leading_bytes,
                                                          uint32_t stride_bytes) {
  return uint64_t((shared_address(shared) & 0x3FFFF) >> 4) |
         (uint64_t((leading_bytes >> 4) & 0x3FFF) << 16) |
         (uint64_t((stride_bytes >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

#endif  // DSA_HOPPER_DEVICE

// Host side: whether to launch the sm90a kernels — this build carries an sm90a image, the
// current device is sm90, and DEEPSEEK_ATTN_DISABLE_HOPPER (which forces the sm80 kernels,
// read at every launch) is unset or 0.
inline bool hopper_kernels_enabled() {
#ifndef DEEPSEEK_ATTN_CUDA_ARCHS
  return false;
#else
  if (std::strstr(DEEPSEEK_ATTN_CUDA_ARCHS, "9.0a") == nullptr) return false;
  const char* disable = std::getenv("DEEPSEEK_ATTN_DISABLE_HOPPER");
  if (disable != nullptr && disable[0] != '\0' && disable[0] != '0') return false;
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return false;
  }
  return major == 9 && minor == 0;
#endif
}

// The driver's cuTensorMapEncodeTiled, found through the runtime (no link against libcuda);
// nullptr when the driver lacks it.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000,
                                         cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      function = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function);
  }();
  return encode;
}

}  // namespace cuda
}  // namespace deepseek_attn
