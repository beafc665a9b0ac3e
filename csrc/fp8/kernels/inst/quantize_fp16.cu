// Explicit instantiation: FP8 quantisers (1x group activations, group x group weights) from fp16.
#include "fp8/launch.cuh"

namespace deepseek_attn {
namespace cuda {
template cudaError_t launch_quantize_act<Fp8Source::kFloat16>(const Fp8QuantizeParams&, cudaStream_t);
template cudaError_t launch_quantize_weight<Fp8Source::kFloat16>(const Fp8QuantizeParams&, cudaStream_t);
}  // namespace cuda
}  // namespace deepseek_attn
