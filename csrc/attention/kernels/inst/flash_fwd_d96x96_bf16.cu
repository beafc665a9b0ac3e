// Explicit instantiation: flash attention fwd, Dqk=96, Dv=96, bf16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_fwd<96, 96, true>(const AttentionFwdParams&, const SplitKvParams&, bool, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
