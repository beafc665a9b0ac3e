"""deepseek_attn: DeepSeek's attention family as hand-written kernels for PyTorch."""

from deepseek_attn.attention import FlashAttnFunction, flash_attn_func
from deepseek_attn.fp8 import dequantize, fp8_gemm, quantize_act, quantize_weight
from deepseek_attn import nn  # noqa: F401  (deepseek_attn.nn.Fp8Linear)

__version__ = "0.1.0"

__all__ = ["FlashAttnFunction", "flash_attn_func", "quantize_act", "quantize_weight",
           "dequantize", "fp8_gemm", "nn", "__version__"]
