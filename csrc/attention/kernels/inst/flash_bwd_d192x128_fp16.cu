// Explicit instantiation: flash attention bwd, Dqk=192, Dv=128, fp16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_bwd<192, 128, false>(const AttentionBwdParams&, float*, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
