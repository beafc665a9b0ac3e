"""deepseek_attn: DeepSeek's attention family as hand-written kernels for PyTorch."""

from deepseek_attn.attention import FlashAttnFunction, flash_attn_func
from deepseek_attn.fp8 import dequantize, fp8_gemm, quantize_act, quantize_weight
from deepseek_attn import nn  # noqa: F401  (deepseek_attn.nn.Fp8Linear)
from deepseek_attn import core  # noqa: F401  (the shared core's op and its fake kernel)
from deepseek_attn.mla import MLAKVCache, mla_decode
from deepseek_attn.sparse import block_select, block_sparse_attn, sparse_attn
from deepseek_attn import _C

__version__ = "0.1.0"


def set_hopper_kernels(enabled: bool) -> bool:
    """Allows (True) or forbids (False) the sm90a (wgmma + TMA) kernels on H100-class GPUs from
    now on, for the whole process; returns the previous setting. Forbidden, sm90 runs the
    mma.sync kernels as other GPUs do. The start value is DEEPSEEK_ATTN_DISABLE_HOPPER's
    (read once, at the first CUDA launch or call here): unset, empty or 0 allows them."""
    return bool(_C.set_hopper_kernels_allowed(bool(enabled)))


__all__ = ["FlashAttnFunction", "flash_attn_func", "quantize_act", "quantize_weight",
           "dequantize", "fp8_gemm", "mla_decode", "MLAKVCache", "sparse_attn", "block_sparse_attn",
           "block_select", "nn", "set_hopper_kernels", "__version__"]
