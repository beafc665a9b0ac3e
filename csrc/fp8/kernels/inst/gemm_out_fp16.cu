// Explicit instantiation: block-scaled FP8 GEMM with fp16 output.
#include "fp8/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_fp8_gemm<Fp8GemmOut::kFloat16>(const Fp8GemmParams&, bool, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
