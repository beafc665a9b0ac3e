// Explicit instantiation: flash attention fwd, Dqk=192, Dv=128, fp16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_fwd<192, 128, false>(const AttentionFwdParams&, const SplitKvParams&, bool, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
