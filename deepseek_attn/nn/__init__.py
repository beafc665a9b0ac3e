"""nn.Modules built from the functional API."""

from deepseek_attn.nn.dsa import DeepSeekSparseAttention, DSAKVCache, LightningIndexer
from deepseek_attn.nn.fp8_linear import Fp8Linear, Fp8LinearFunction
from deepseek_attn.nn.mla import MultiHeadLatentAttention, RMSNorm
from deepseek_attn.nn.nsa import CompressionMLP, NativeSparseAttention

__all__ = ["DSAKVCache", "DeepSeekSparseAttention", "Fp8Linear", "Fp8LinearFunction",
           "CompressionMLP", "LightningIndexer", "MultiHeadLatentAttention",
           "NativeSparseAttention", "RMSNorm"]
