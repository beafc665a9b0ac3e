#include "common/cpu_tiles.h"

#include <cstdlib>
#include <string>

namespace deepseek_attn::cpu {

bool brgemm_fp32_available() {
  static const bool available = [] {
    // DEEPSEEK_ATTN_CPU_GEMM=blas forces the BLAS path (tests cover both).
    const char* choice = std::getenv("DEEPSEEK_ATTN_CPU_GEMM");
    if (choice != nullptr && std::string(choice) == "blas") return false;
    // A 1x1x1 product: builds where brgemm is missing raise instead of computing.
    const float a = 2.f, b = 3.f;
    float c = 0.f;
    try {
      at::native::cpublas::brgemm(1, 1, 1, 1, 1, 1, false, &a, &b, &c, false);
      at::native::cpublas::brgemm_release(false);
    } catch (const std::exception&) {
      return false;
    }
    return c == 6.f;
  }();
  return available;
}

}  // namespace deepseek_attn::cpu
