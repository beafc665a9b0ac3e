#pragma once
// sm90a building blocks of the Hopper kernels (attention forward, FP8 GEMM): the PTX wrappers
// (cuda_hopper_intrinsics.cuh), wgmma shared-memory descriptors, the setmaxnreg budget rule, and
// the driver's tensor-map encoder for their launch code. No torch headers (whether a launch
// takes these kernels is common/device_arch.h's and the heuristics' call).

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/cuda_mma.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DEEPSEEK_ATTN_HOPPER_DEVICE 1
#include "common/cuda_hopper_intrinsics.cuh"
#endif

namespace deepseek_attn {
namespace cuda {

#if defined(DEEPSEEK_ATTN_HOPPER_DEVICE)

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

#endif  // DEEPSEEK_ATTN_HOPPER_DEVICE

// setmaxnreg between one producer and two consumer warpgroups of a `threads`-thread CTA (one
// CTA per SM, __launch_bounds__(threads, 1)): each thread starts with the register file's share
// rounded down to 8 (168 for 384 threads), and the consumers may only take what the producer
// released. On a GPU a shortfall stalls setmaxnreg.inc; here it fails the build.
constexpr bool warpgroup_registers_fit(int threads, int producer, int consumer) {
  const int start = 65536 / threads / 8 * 8;
  return (start - producer) * 128 >= (consumer - start) * 2 * 128 && producer >= 24 &&
         consumer <= 256 && producer % 8 == 0 && consumer % 8 == 0;
}

// Whether `kernel` (one CTA of `threads` threads per SM, setmaxnreg-balanced as above) was
// compiled within the per-thread share its setmaxnreg budget starts from; asked once per kernel
// by its launch code, which falls back to the mma.sync kernels otherwise (a toolchain that
// spilled past __launch_bounds__ would fail the launch instead).
template <typename Kernel>
bool kernel_fits_register_share(Kernel kernel, int threads) {
  static const bool fits = [kernel, threads] {
    cudaFuncAttributes attributes;
    return cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess &&
           attributes.numRegs <= 65536 / threads / 8 * 8;
  }();
  return fits;
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
