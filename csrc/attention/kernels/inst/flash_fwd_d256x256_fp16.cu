// Explicit instantiation: flash attention fwd, Dqk=256, Dv=256, fp16.
#include "attention/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_flash_fwd<256, 256, false>(const AttentionFwdParams&, const SplitKvParams&, bool, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
