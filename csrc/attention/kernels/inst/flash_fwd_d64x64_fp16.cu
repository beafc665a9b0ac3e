// Explicit instantiation: flash attention fwd, Dqk=64, Dv=64, fp16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_fwd<64, 64, false>(const AttentionFwdParams&, const SplitKvParams&, bool, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
