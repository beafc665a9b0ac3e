// Explicit instantiation: flash attention bwd, Dqk=256, Dv=256, fp16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_bwd<256, 256, false>(const AttentionBwdParams&, float*, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
