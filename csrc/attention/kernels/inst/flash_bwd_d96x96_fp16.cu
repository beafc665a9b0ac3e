// Explicit instantiation: flash attention bwd, Dqk=96, Dv=96, fp16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_bwd<96, 96, false>(const AttentionBwdParams&, float*, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
