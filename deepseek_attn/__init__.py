"""deepseek_attn: DeepSeek's attention family as hand-written kernels for PyTorch."""

from deepseek_attn.attention import FlashAttnFunction, flash_attn_func

__version__ = "0.1.0"

__all__ = ["FlashAttnFunction", "flash_attn_func", "__version__"]
