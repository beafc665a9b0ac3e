#pragma once
// What the launch code needs to know about a GPU, decided once: its compute capability and
// multiprocessor count (read once per device, common/cuda_device.h), whether this build carries
// the sm90a kernels, and whether they are allowed (DEEPSEEK_ATTN_DISABLE_HOPPER, read once per
// process, or set_hopper_kernels_allowed). Plain C++: device_call.cpp plans launches with it.

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace deepseek_attn {

struct DeviceArch {
  int compute_capability = 0;  // major * 10 + minor
  int sm_count = 1;
  bool hopper_kernels = false;  // an sm90 device, this build has sm90a images, and allowed
};

// Whether an arch list, spelt as setup.py takes TORCH_CUDA_ARCH_LIST ("8.0;9.0a", "9.0a+PTX")
// or as CMake takes CMAKE_CUDA_ARCHITECTURES ("80;90a", "90a-real"), includes sm_90a.
inline bool arch_list_has_sm90a(const char* list) {
  const char* token = list;
  while (*token != '\0') {
    const size_t length = std::strcspn(token, "; ,");
    const bool sm90a = (length >= 4 && std::strncmp(token, "9.0a", 4) == 0) ||
                       (length >= 3 && std::strncmp(token, "90a", 3) == 0);
    if (sm90a) return true;
    token += length + (token[length] != '\0');
  }
  return false;
}

// Whether this build compiled the sm90a kernels (DEEPSEEK_ATTN_CUDA_ARCHS: the build's arch
// list, defined by setup.py and CMakeLists.txt in their own spellings).
inline bool build_has_sm90a() {
#ifdef DEEPSEEK_ATTN_CUDA_ARCHS
  return arch_list_has_sm90a(DEEPSEEK_ATTN_CUDA_ARCHS);
#else
  return false;
#endif
}

// The process-wide switch of the sm90a kernels: DEEPSEEK_ATTN_DISABLE_HOPPER (unset, empty or
// "0": allowed) read at first use; set_hopper_kernels_allowed overrides it (benchmarks and tests
// run the sm80 kernels beside the Hopper ones) and returns the previous value.
inline std::atomic<bool>& hopper_kernels_switch() {
  static std::atomic<bool> allowed = [] {
    const char* disable = std::getenv("DEEPSEEK_ATTN_DISABLE_HOPPER");
    return disable == nullptr || disable[0] == '\0' || (disable[0] == '0' && disable[1] == '\0');
  }();
  return allowed;
}
inline bool hopper_kernels_allowed() { return hopper_kernels_switch().load(); }
inline bool set_hopper_kernels_allowed(bool allowed) {
  return hopper_kernels_switch().exchange(allowed);
}

}  // namespace deepseek_attn
