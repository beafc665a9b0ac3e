#pragma once
// Which (Dqk, Dv) pairs have CUDA kernels: plain C++ with no CUDA headers, for the host code
// that checks and plans launches (device_call.cpp). Their tile rules are in heuristics.h.

namespace deepseek_attn {
namespace cuda {

// (Dqk, Dv) pairs with compiled kernels; anything else is rejected with this list.
#define DEEPSEEK_ATTN_ATTENTION_HEAD_DIMS(X) X(64, 64) X(96, 96) X(128, 128) X(192, 128) X(256, 256)
constexpr const char* kSupportedHeadDims = "64/64, 96/96, 128/128, 192/128, 256/256";

}  // namespace cuda
}  // namespace deepseek_attn
