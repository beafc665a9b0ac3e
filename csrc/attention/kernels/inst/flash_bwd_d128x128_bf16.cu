// Explicit instantiation: flash attention bwd, Dqk=128, Dv=128, bf16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_bwd<128, 128, true>(const AttentionBwdParams&, float*, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
