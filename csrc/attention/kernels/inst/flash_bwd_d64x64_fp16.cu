// Explicit instantiation: flash attention bwd, Dqk=64, Dv=64, fp16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_bwd<64, 64, false>(const AttentionBwdParams&, float*, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
