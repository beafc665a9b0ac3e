// Unit test of the Hopper build gate (common/device_arch.h): the arch list parser must accept
// both spellings our builds define DEEPSEEK_ATTN_CUDA_ARCHS with — setup.py's
// TORCH_CUDA_ARCH_LIST ("8.0;9.0a") and CMake's CMAKE_CUDA_ARCHITECTURES ("80;90a"). When CMake
// compiles this test beside a CUDA build it passes that build's list and whether it names sm_90a
// (DEEPSEEK_ATTN_EXPECT_SM90A), so the gate is checked on the CMake spelling actually in use.

#include <cstdio>

#include "common/device_arch.h"

namespace {

int failures = 0;

void expect_sm90a(const char* list, bool expected) {
  if (deepseek_attn::arch_list_has_sm90a(list) != expected) {
    ++failures;
    std::fprintf(stderr, "arch_list_has_sm90a(\"%s\") should be %s\n", list,
                 expected ? "true" : "false");
  }
}

}  // namespace

int main() {
  expect_sm90a("8.0;9.0a", true);  // setup.py's default
  expect_sm90a("80;90a", true);    // CMake's default
  expect_sm90a("8.0 9.0a", true);  // TORCH_CUDA_ARCH_LIST may use spaces
  expect_sm90a("9.0a+PTX", true);
  expect_sm90a("80-real;90a-real", true);
  expect_sm90a("8.0;9.0", false);  // sm_90 without the a: no wgmma/setmaxnreg image
  expect_sm90a("80;90", false);
  expect_sm90a("8.9", false);
  expect_sm90a("", false);
#if defined(DEEPSEEK_ATTN_CUDA_ARCHS) && defined(DEEPSEEK_ATTN_EXPECT_SM90A)
  if (deepseek_attn::build_has_sm90a() != bool(DEEPSEEK_ATTN_EXPECT_SM90A)) {
    ++failures;
    std::fprintf(stderr, "the build's arch list \"%s\" is %sread as naming sm_90a\n",
                 DEEPSEEK_ATTN_CUDA_ARCHS, DEEPSEEK_ATTN_EXPECT_SM90A ? "not " : "");
  }
#endif
  if (failures == 0) std::printf("device_arch: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
