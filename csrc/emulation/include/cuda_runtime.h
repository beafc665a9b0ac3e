#pragma once
// Emulated twin of <cuda_runtime.h> for the CPU emulator (csrc/emulation/README.md): the CUDA
// C++ keywords and builtins our kernels use, the vector types, the math they call, and the
// runtime calls of our launch code, all executing on CPU fibers. Found before the toolkit's
// header because emulated builds put csrc/emulation/include first on the include path.

#include <cudaTypedefs.h>
#include <math.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "emulation/runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__ __restrict
#define __align__(n) alignas(n)
// Kernels declare shared memory with DEEPSEEK_ATTN_STATIC_SHARED_ARRAY /
// DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY (common/cuda_intrinsics.cuh), which the emulator can track; a
// bare __shared__ fails to compile.
#define __shared__ use_DEEPSEEK_ATTN_STATIC_SHARED_ARRAY_or_DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY

using dim3 = dsa_emu::Dim3;
using uint3 = dsa_emu::Dim3;

namespace dsa_emu {
// threadIdx.x and friends: each coordinate reads the running thread's value when converted.
template <Dim3 (*kRead)()>
struct BuiltinCoordinates {
  struct X {
    operator unsigned() const { return kRead().x; }
  } x;
  struct Y {
    operator unsigned() const { return kRead().y; }
  } y;
  struct Z {
    operator unsigned() const { return kRead().z; }
  } z;
};
}  // namespace dsa_emu
inline constexpr dsa_emu::BuiltinCoordinates<dsa_emu::thread_idx> threadIdx{};
inline constexpr dsa_emu::BuiltinCoordinates<dsa_emu::block_idx> blockIdx{};
inline constexpr dsa_emu::BuiltinCoordinates<dsa_emu::block_dim> blockDim{};
inline constexpr dsa_emu::BuiltinCoordinates<dsa_emu::grid_dim> gridDim{};
constexpr int warpSize = 32;

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }

// The runtime tells barriers apart by the source line of the call (default arguments are
// evaluated where __syncthreads() is written).
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  dsa_emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { dsa_emu::syncwarp(mask); }
[[noreturn]] inline void __trap() { dsa_emu::trap(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = dsa_emu::shfl_xor(mask, bits, lane_mask, width);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return dsa_emu::ballot(mask, predicate != 0);
}
inline bool __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline bool __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == __ballot_sync(mask, 1);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float atomicAdd(float* address, float value) { return dsa_emu::atomic_add(address, value); }
inline size_t __cvta_generic_to_shared(const void* pointer) {
  return dsa_emu::shared_window_address(pointer);
}

// --- The runtime API our launch code calls ---------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
using cudaError = cudaError_t;
using cudaStream_t = struct EmulatedStream*;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
  }
  return "unknown error";
}

// Launches report their status through the return value; there is nothing sticky to fetch.
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return cudaError_t(
      dsa_emu::set_max_dynamic_shared_bytes(reinterpret_cast<const void*>(kernel), value));
}

struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes = 0;
  cudaStream_t stream = nullptr;
  void* attrs = nullptr;
  unsigned numAttrs = 0;
};

template <typename... Parameters, typename... Arguments>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(Parameters...),
                               Arguments&&... arguments) {
  return cudaError_t(dsa_emu::launch_with_arguments(kernel, config->gridDim, config->blockDim,
                                                    config->dynamicSmemBytes,
                                                    std::forward<Arguments>(arguments)...));
}

// Kernels have no register allocation here: every one reports 0 registers.
struct cudaFuncAttributes {
  int numRegs = 0;
};
template <typename Kernel>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, Kernel) {
  *attributes = cudaFuncAttributes{};
  return cudaSuccess;
}

// The emulated device: device 0, with the compute capability of the emulated arch.
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  const int capability = dsa_emu::device_properties().compute_capability;
  if (device != 0) return cudaErrorInvalidValue;
  if (attribute == cudaDevAttrMultiProcessorCount) {
    *value = dsa_emu::device_properties().sm_count;
  } else if (attribute == cudaDevAttrComputeCapabilityMajor) {
    *value = capability / 10;
  } else if (attribute == cudaDevAttrComputeCapabilityMinor) {
    *value = capability % 10;
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// Driver entry points: the emulator's tensor-map encoder is the only one there is.
enum cudaGetDriverEntryPointFlags { cudaEnableDefault = 0 };
enum cudaDriverEntryPointQueryResult {
  cudaDriverEntryPointSuccess = 0,
  cudaDriverEntryPointSymbolNotFound = 1,
};
inline cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** function,
                                                    unsigned /*version*/,
                                                    unsigned long long /*flags*/,
                                                    cudaDriverEntryPointQueryResult* status) {
  const bool known = std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
  *function = known ? reinterpret_cast<void*>(&dsa_emu::emulated_tensor_map_encode_tiled) : nullptr;
  if (status != nullptr)
    *status = known ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}
