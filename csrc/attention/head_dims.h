#pragma once
// Which (Dqk, Dv) pairs have CUDA kernels and the key-block rule of their tiles: plain C++ with no
// CUDA headers, for the host code that checks and plans launches (device_call.cpp).

namespace deepseek_attn {
namespace cuda {

// (Dqk, Dv) pairs with compiled kernels; anything else is rejected with this list.
#define DSA_ATTENTION_HEAD_DIMS(X) X(64, 64) X(96, 96) X(128, 128) X(192, 128) X(256, 256)
constexpr const char* kSupportedHeadDims = "64/64, 96/96, 128/128, 192/128, 256/256";

// Key-block width of the forward (and dQ) kernels for these head dims; wide heads take 32 keys
// to keep the S/P fragments and the K/V buffers small. The split-KV heuristic needs it too.
constexpr int fwd_block_n(int dim_qk, int dim_v) { return dim_qk > 128 || dim_v > 128 ? 32 : 64; }

}  // namespace cuda
}  // namespace deepseek_attn
