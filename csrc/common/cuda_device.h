#pragma once
// The DeviceArch of a CUDA device, from the runtime once per device (host code of cuda.cpp and
// of the emulated test extension, which gets the emulated device's answers).

#include <cuda_runtime_api.h>

#include <mutex>
#include <stdexcept>
#include <string>

#include "common/device_arch.h"

namespace deepseek_attn {

// Compute capability, multiprocessor count and whether this build has sm90a images for
// `device`, decided at its first use; the Hopper flag also asks hopper_kernels_allowed() at
// every call (an atomic load).
inline DeviceArch device_arch(int device) {
  constexpr int kMaxDevices = 64;
  static DeviceArch known[kMaxDevices];
  static std::once_flag read[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) {
    throw std::invalid_argument("CUDA device index " + std::to_string(device) + " out of range");
  }
  std::call_once(read[device], [device] {
    int major = 0, minor = 0, sms = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      throw std::runtime_error("cannot query CUDA device " + std::to_string(device));
    }
    known[device].compute_capability = major * 10 + minor;
    known[device].sm_count = sms > 0 ? sms : 1;
    known[device].hopper_kernels = major == 9 && minor == 0 && build_has_sm90a();
  });
  DeviceArch arch = known[device];
  arch.hopper_kernels = arch.hopper_kernels && hopper_kernels_allowed();
  return arch;
}

}  // namespace deepseek_attn
