"""MultiHeadLatentAttention: DeepSeek-V2/V3's attention (SPEC §3) as a drop-in nn.Module.

Configuration and parameter names are DeepSeek's (`wq` or `wq_a`/`q_norm`/`wq_b`, `wkv_a`,
`kv_norm`, `wkv_b`, `wo`), so checkpoints load by name; `from_transformers` converts a Hugging
Face `DeepseekV3Attention`. Without a cache, `forward` is causal attention over its input (the
naive path: keys and values expanded per head, flash_attn_func with Dqk = nope + rope, trains);
with an MLAKVCache, the new tokens are appended at each sequence's length and attend over
everything cached (the absorbed path: W_UK folded into the query, mla_decode over the latent).
Each projection is followed by one fused epilogue (mla_norm_rope): RMSNorm and interleaved RoPE,
and for the latent the write into the cache.
"""

import math

import torch
from torch import nn

from deepseek_attn.attention import flash_attn_func
from deepseek_attn.fp8 import dequantize
from deepseek_attn.mla import MLAKVCache, mla_decode, mla_norm_rope
from deepseek_attn.nn.fp8_linear import Fp8Linear

__all__ = ["MultiHeadLatentAttention", "RMSNorm", "rope_inv_freq", "yarn_mscale"]


def rope_inv_freq(rope_dim, rope_theta, max_seq_len, original_seq_len, rope_factor, beta_fast,
                  beta_slow):
    """(rope_dim/2,) fp64 RoPE frequencies θ^(-2i/r), YaRN-corrected when max_seq_len exceeds
    original_seq_len (SPEC §3)."""
    freqs = rope_theta ** -(torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim)
    if max_seq_len <= original_seq_len:
        return freqs

    def correction_dim(rotations):  # the dim whose wavelength fits `rotations` times
        return rope_dim * math.log(original_seq_len / (rotations * 2 * math.pi)) / (
            2 * math.log(rope_theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), rope_dim - 1)
    ramp = ((torch.arange(rope_dim // 2, dtype=torch.float64) - low)
            / (high - low if high != low else 0.001)).clamp(0, 1)
    return freqs / rope_factor * ramp + freqs * (1 - ramp)


def yarn_mscale(rope_factor, mscale=1.0):
    """YaRN's attention temperature 0.1·m·ln(F) + 1 (1 without extension)."""
    return 0.1 * mscale * math.log(rope_factor) + 1.0 if rope_factor > 1 else 1.0


class RMSNorm(nn.Module):
    """RMSNorm with DeepSeek's parameter name (`weight`), through the fused latent epilogue."""

    def __init__(self, dim, eps=1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x):
        return mla_norm_rope(x, self.weight, eps=self.eps)


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek's MLA (module docstring). `fp8=True` makes every projection an Fp8Linear
    (block-scaled FP8 GEMMs, SPEC §2) and new caches FP8 (656 bytes per token)."""

    def __init__(self, dim, n_heads, q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128,
                 qk_rope_head_dim=64, v_head_dim=128, max_seq_len=4096, rope_theta=10000.0,
                 rope_factor=40.0, original_seq_len=4096, beta_fast=32, beta_slow=1, mscale=1.0,
                 fp8=False, norm_eps=1e-6, device=None, dtype=None):
        super().__init__()
        if qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (got {qk_rope_head_dim})")
        self.dim, self.n_heads = dim, n_heads
        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = qk_nope_head_dim, qk_rope_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.v_head_dim, self.max_seq_len, self.fp8 = v_head_dim, max_seq_len, fp8
        self.norm_eps = norm_eps
        factory = dict(device=device, dtype=dtype)

        def linear(in_features, out_features):
            if fp8:
                return Fp8Linear(in_features, out_features, scale_fmt="ue8m0", **factory)
            return nn.Linear(in_features, out_features, bias=False, **factory)

        if q_lora_rank == 0:
            self.wq = linear(dim, n_heads * self.qk_head_dim)
        else:
            self.wq_a = linear(dim, q_lora_rank)
            self.q_norm = RMSNorm(q_lora_rank, norm_eps, **factory)
            self.wq_b = linear(q_lora_rank, n_heads * self.qk_head_dim)
        self.wkv_a = linear(dim, kv_lora_rank + qk_rope_head_dim)
        self.kv_norm = RMSNorm(kv_lora_rank, norm_eps, **factory)
        self.wkv_b = linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim))
        self.wo = linear(n_heads * v_head_dim, dim)

        extended = max_seq_len > original_seq_len
        self.softmax_scale = self.qk_head_dim ** -0.5 * (
            yarn_mscale(rope_factor, mscale) ** 2 if extended else 1.0)
        inv_freq = rope_inv_freq(qk_rope_head_dim, rope_theta, max_seq_len, original_seq_len,
                                 rope_factor, beta_fast, beta_slow)
        self.register_buffer("rope_inv_freq", inv_freq.to(device), persistent=False)
        self._absorbed_key = self._absorbed = None
        self._register_load_state_dict_pre_hook(self._dequantize_fp8_checkpoint)

    # DeepSeek's FP8 checkpoints store each projection as e4m3 `weight` plus 128x128 block scales
    # (`scale` in DeepSeek's inference code, `weight_scale_inv` in Hugging Face's).
    _FP8_SCALE_NAMES = ("scale", "weight_scale_inv")

    def _dequantize_fp8_checkpoint(self, state_dict, prefix, *args):
        """Load hook: FP8 weights with block scales become the module's master weights."""
        for name in ("wq", "wq_a", "wq_b", "wkv_a", "wkv_b", "wo"):
            key = f"{prefix}{name}.weight"
            scale_keys = [f"{prefix}{name}.{s}" for s in self._FP8_SCALE_NAMES
                          if f"{prefix}{name}.{s}" in state_dict]
            if key in state_dict and state_dict[key].dtype == torch.float8_e4m3fn and scale_keys:
                scales = state_dict.pop(scale_keys[0])
                state_dict[key] = dequantize(state_dict[key], scales.float(), (128, 128)).to(
                    getattr(self, name).weight.dtype)

    @classmethod
    def from_transformers(cls, attention):
        """A module computing the same function as a Hugging Face DeepseekV3Attention, with its
        configuration (YaRN included) and a copy of its weights."""
        module = cls(**cls._transformers_config(attention))
        module.load_state_dict(cls._transformers_state(attention))
        return module

    @staticmethod
    def _transformers_config(attention):
        """The constructor's arguments for a transformers MLA attention module."""
        config = attention.config
        rope = dict(getattr(config, "rope_parameters", None) or {})
        rope_type = rope.get("rope_type", "default")
        if rope_type not in ("default", "yarn"):
            raise ValueError(f"rope_type {rope_type!r} is not MLA's (default or yarn)")
        if getattr(config, "attention_bias", False):
            raise ValueError("DeepSeek's MLA projections have no biases (attention_bias=True)")
        max_seq_len = config.max_position_embeddings
        yarn = dict(rope_factor=1.0, original_seq_len=max_seq_len, beta_fast=32, beta_slow=1,
                    mscale=1.0)
        if rope_type == "yarn":
            original = rope.get("original_max_position_embeddings") or max_seq_len
            mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
            # transformers scales cos/sin (the rope half of the scores only) unless the two agree,
            # and applies YaRN even without extension: neither is MLA's rule (SPEC §3).
            if not mscale_all_dim or mscale != mscale_all_dim or max_seq_len <= original:
                raise ValueError("a YaRN DeepseekV3Attention converts when mscale == mscale_all_dim"
                                 " (both set) and max_position_embeddings > original_max_position_"
                                 f"embeddings (got {mscale}, {mscale_all_dim}, {max_seq_len} and "
                                 f"{original})")
            yarn = dict(rope_factor=rope["factor"], beta_fast=rope.get("beta_fast") or 32,
                        beta_slow=rope.get("beta_slow") or 1, mscale=mscale_all_dim,
                        original_seq_len=original)
        weight = attention.kv_a_proj_with_mqa.weight
        return dict(dim=config.hidden_size, n_heads=config.num_attention_heads,
                    q_lora_rank=config.q_lora_rank or 0, kv_lora_rank=config.kv_lora_rank,
                    qk_nope_head_dim=config.qk_nope_head_dim,
                    qk_rope_head_dim=config.qk_rope_head_dim, v_head_dim=config.v_head_dim,
                    max_seq_len=max_seq_len, rope_theta=rope.get("rope_theta", 10000.0),
                    norm_eps=attention.kv_a_layernorm.variance_epsilon, device=weight.device,
                    dtype=weight.dtype, **yarn)

    # transformers' MLA layer names -> DeepSeek's.
    _TRANSFORMERS_NAMES = {"q_proj": "wq", "q_a_proj": "wq_a", "q_a_layernorm": "q_norm",
                           "q_b_proj": "wq_b", "kv_a_proj_with_mqa": "wkv_a",
                           "kv_a_layernorm": "kv_norm", "kv_b_proj": "wkv_b", "o_proj": "wo"}

    @classmethod
    def _transformers_state(cls, attention):
        """A transformers MLA module's weights under DeepSeek's names."""
        state = {}
        for name, value in attention.state_dict().items():
            layer, _, rest = name.partition(".")
            if layer in cls._TRANSFORMERS_NAMES:
                state[f"{cls._TRANSFORMERS_NAMES[layer]}.{rest}"] = value
        return state

    def new_cache(self, batch_size, max_seq_len=None, page_size=None, fp8=None):
        """An empty MLAKVCache for this module: pages of `page_size` tokens (None: one page per
        sequence), in the module's dtype, FP8 rows by default for fp8 modules."""
        weight = self.wkv_a.weight
        return MLAKVCache(batch_size, max_seq_len or self.max_seq_len, page_size,
                          dtype=weight.dtype, fp8=self.fp8 if fp8 is None else fp8,
                          device=weight.device, kv_lora_rank=self.kv_lora_rank,
                          rope_dim=self.qk_rope_head_dim)

    def _positions(self, x, cache):
        """(positions (B, S), cache slots (B, S) or None) of x's tokens: 0..S-1 without a cache,
        else after each sequence's cached tokens (reserved, to be committed)."""
        batch, seqlen, _ = x.shape
        if cache is None:
            return torch.arange(seqlen, device=x.device).expand(batch, seqlen), None
        if cache.block_table.shape[0] != batch:
            raise ValueError(f"the cache holds {cache.block_table.shape[0]} sequences and x "
                             f"{batch}")
        return cache.reserve(seqlen)

    def _rope_tables(self, positions, dtype):
        angles = positions.to(torch.float64)[..., None] * self.rope_inv_freq
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return angles.cos().to(table_dtype), angles.sin().to(table_dtype)

    def _weight(self, layer):
        """A projection's weight as the forward uses it (dequantised FP8 for Fp8Linear)."""
        if isinstance(layer, Fp8Linear):
            payload, scales = layer.quantized_weight()
            return dequantize(payload, scales, (128, 128), layer.weight.dtype)
        return layer.weight

    def absorbed_weights(self):
        """(W_UK (H, nope, kv_lora_rank), W_UV (H, v, kv_lora_rank)) from wkv_b, recomputed only
        when the weight changes (its version counter moves on every in-place update)."""
        weight = self.wkv_b.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if key != self._absorbed_key or torch.compiler.is_compiling():
            with torch.no_grad():
                folded = self._weight(self.wkv_b).view(
                    self.n_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
                self._absorbed = folded.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
            self._absorbed_key = key
        return self._absorbed

    def forward(self, x, cache=None):
        """x (B, S, dim) -> (B, S, dim). Without `cache`, causal attention over x; with an
        MLAKVCache, x's tokens are appended to it and attend over everything cached."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (batch, seqlen, {self.dim}) (got shape {tuple(x.shape)})")
        batch, seqlen, _ = x.shape
        positions, slots = self._positions(x, cache)
        cos, sin = self._rope_tables(positions, x.dtype)

        if self.q_lora_rank == 0:
            q = self.wq(x)
        else:
            q = self.wq_b(self.q_norm(self.wq_a(x)))
        q = mla_norm_rope(q.view(batch, seqlen, self.n_heads, self.qk_head_dim), rope_cos=cos,
                          rope_sin=sin)
        latent = mla_norm_rope(self.wkv_a(x), self.kv_norm.weight, cos, sin, self.norm_eps,
                               cache=None if cache is None else cache.kv_cache, cache_slots=slots)
        if cache is None:
            out = self._naive_attention(q, latent)
        else:
            cache.commit(seqlen)
            out = self._absorbed_attention(q, cache)
        return self.wo(out.flatten(2))

    def expand_latent(self, latent):
        """Per-head keys [k_nope | k_pe] (B, S, H, nope + rope) and values (B, S, H, v) from the
        latent rows [c_kv | k_pe] (B, S, kv_lora_rank + rope): the naive path's K and V."""
        batch, seqlen = latent.shape[:2]
        c_kv, k_pe = latent.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        expanded = self.wkv_b(c_kv).view(batch, seqlen, self.n_heads, -1)
        k_nope, v = expanded.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, self.n_heads, -1)], dim=-1)
        return k, v

    def _naive_attention(self, q, latent):
        k, v = self.expand_latent(latent)
        return flash_attn_func(q, k, v, softmax_scale=self.softmax_scale, causal=True)

    def _latent_query(self, q, w_uk):
        """[W_UK[h]ᵀ·q_nope[h] | q_pe[h]] (B, S, H, kv_lora_rank + rope): the absorbed query."""
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        return torch.cat([torch.einsum("bshd,hdc->bshc", q_nope, w_uk.to(q.dtype)), q_pe], dim=-1)

    def _absorbed_attention(self, q, cache, indices=None):
        """Causal attention of q over the cached latent rows (only the listed cached tokens with
        `indices` (B, S, K): DSA's sparse decode), W_UV applied per head."""
        w_uk, w_uv = self.absorbed_weights()
        out_latent, _ = mla_decode(self._latent_query(q, w_uk), cache.kv_cache, cache.block_table,
                                   cache.cache_seqlens, head_dim_v=self.kv_lora_rank,
                                   softmax_scale=self.softmax_scale, causal=True,
                                   is_fp8_kvcache=cache.fp8, indices=indices)
        return torch.einsum("bshc,hvc->bshv", out_latent, w_uv.to(q.dtype))

    def extra_repr(self):
        return (f"dim={self.dim}, n_heads={self.n_heads}, q_lora_rank={self.q_lora_rank}, "
                f"kv_lora_rank={self.kv_lora_rank}, qk_nope_head_dim={self.qk_nope_head_dim}, "
                f"qk_rope_head_dim={self.qk_rope_head_dim}, v_head_dim={self.v_head_dim}, "
                f"fp8={self.fp8}")
