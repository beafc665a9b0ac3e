#pragma once
// Host-side launch helpers shared by every family's launch.cuh (compiled by nvcc only).

#include <cuda_runtime.h>

#include <cstdint>

namespace deepseek_attn {
namespace cuda {

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// Opts a kernel into more than 48 KiB of dynamic shared memory, then launches it.
template <typename Kernel, typename... Args>
cudaError_t launch_with_smem(Kernel kernel, dim3 grid, int threads, int smem_bytes,
                             cudaStream_t stream, const Args&... args) {
  if (smem_bytes > 48 * 1024) {
    const cudaError_t status = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (status != cudaSuccess) return status;
  }
  kernel<<<grid, threads, smem_bytes, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace deepseek_attn
