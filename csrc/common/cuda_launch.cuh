#pragma once
// Host-side launch helpers shared by every family's launch_*.cuh. Launches go through
// cudaLaunchKernelEx rather than <<<>>>, so this code also compiles as plain C++ against the
// CPU emulator's runtime (csrc/emulation/include/cuda_runtime.h) and the emulated tests run the
// real launch path.

#include <cuda_runtime.h>

#include <cstdint>

namespace deepseek_attn {
namespace cuda {

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// Launches `kernel(args...)` on `stream`; opts the kernel into more than 48 KiB of dynamic
// shared memory first when it asks for that much.
template <typename... Parameters, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Parameters...), dim3 grid, int threads, int smem_bytes,
                          cudaStream_t stream, const Args&... args) {
  if (smem_bytes > 48 * 1024) {
    const cudaError_t status = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (status != cudaSuccess) return status;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(threads, 1, 1);
  config.dynamicSmemBytes = static_cast<size_t>(smem_bytes);
  config.stream = stream;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

}  // namespace cuda
}  // namespace deepseek_attn
