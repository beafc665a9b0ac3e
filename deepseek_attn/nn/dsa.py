"""DeepSeekSparseAttention: DeepSeek-V3.2's attention (SPEC §4) as a drop-in nn.Module — MLA
whose queries attend only to the `index_topk` keys a lightning indexer picks for them.

Names are DeepSeek's: the MLA module's, plus `indexer` with `wq_b`, `wk`, `k_norm` (LayerNorm)
and `weights_proj`; `from_transformers` converts a Hugging Face `DeepseekV32Attention`.
Without a cache, sequences not longer than `index_topk` run dense causal MLA (every key is
selected anyway); longer ones select with `indexer_topk` and attend with `sparse_attn` in the
latent form (W_UK folded into the query: one 576-wide key row per token for all heads, which is
what makes attention O(L·k)). With a DSAKVCache the indexer's keys are cached beside the latent
(optionally FP8, Hadamard-rotated) and decode attends, through mla_decode, only to the selected
cached tokens. The indexer itself is trained by `indexer_kl_loss` (`forward(...,
indexer_loss="dense" | "sparse")`), on inputs detached from the main model.
"""

import torch
from torch import nn

from deepseek_attn.mla import MLAKVCache, mla_norm_rope
from deepseek_attn.nn.mla import MultiHeadLatentAttention
from deepseek_attn.sparse import (hadamard_rotate, indexer_kl_loss, indexer_topk,
                                  quantize_indexer_fp8, sparse_attn)

__all__ = ["DSAKVCache", "DeepSeekSparseAttention", "LightningIndexer"]


def rope_rotate_half(x, cos, sin):
    """Non-interleaved RoPE of x's first 2·cos.shape[-1] dims (dims i and i + r/2 rotate
    together), cos/sin (B, S, r/2) broadcast over any head dim; computed in cos's dtype."""
    half = cos.shape[-1]
    if x.dim() == 4:
        cos, sin = cos[:, :, None], sin[:, :, None]
    first, second, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    first, second = first.to(cos.dtype), second.to(cos.dtype)
    rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return torch.cat([rotated.to(x.dtype), rest], dim=-1)


class LightningIndexer(nn.Module):
    """DeepSeek-V3.2's indexer (SPEC §4): queries from MLA's compressed query c_q, one
    LayerNorm'd key head from x, per-head weights from x; heads are [pe | nope] with
    non-interleaved RoPE on pe."""

    def __init__(self, dim, q_lora_rank, n_heads=64, head_dim=128, rope_dim=64, device=None,
                 dtype=None):
        super().__init__()
        self.n_heads, self.head_dim, self.rope_dim = n_heads, head_dim, rope_dim
        factory = dict(device=device, dtype=dtype)
        self.wq_b = nn.Linear(q_lora_rank, n_heads * head_dim, bias=False, **factory)
        self.wk = nn.Linear(dim, head_dim, bias=False, **factory)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6, **factory)
        self.weights_proj = nn.Linear(dim, n_heads, bias=False, **factory)

    def forward(self, x, c_q, cos, sin):
        """(q (B, S, H_I, d_I), k (B, S, d_I), weights (B, S, H_I) fp32 with H_I^-0.5)."""
        batch, seqlen, _ = x.shape
        q = self.wq_b(c_q).view(batch, seqlen, self.n_heads, self.head_dim)
        weights = self.weights_proj(x).float() * self.n_heads ** -0.5
        return (rope_rotate_half(q, cos, sin), rope_rotate_half(self.k_norm(self.wk(x)), cos, sin),
                weights)


class DSAKVCache(MLAKVCache):
    """An MLAKVCache plus the indexer's key cache `index_keys` (B, max_seq_len, d_I) in `dtype`,
    or, with index_fp8=True, Hadamard-rotated e4m3 keys with one fp32 scale per token
    (`index_scales`), as DeepSeek-V3.2 keeps them."""

    def __init__(self, batch_size, max_seq_len, page_size=64, dtype=torch.bfloat16, fp8=False,
                 device=None, kv_lora_rank=512, rope_dim=64, index_head_dim=128,
                 index_fp8=False):
        super().__init__(batch_size, max_seq_len, page_size, dtype, fp8, device, kv_lora_rank,
                         rope_dim)
        self.index_fp8 = index_fp8
        shape = (batch_size, max_seq_len, index_head_dim)
        self.index_keys = torch.zeros(shape, dtype=torch.float8_e4m3fn if index_fp8 else dtype,
                                      device=device)
        self.index_scales = (torch.ones(shape[:2], dtype=torch.float32, device=device)
                             if index_fp8 else None)

    def write_index_keys(self, positions, keys):
        """Stores the indexer keys (B, T, d_I) of the tokens at `positions` (B, T)."""
        rows = torch.arange(keys.shape[0], device=keys.device)[:, None]
        with torch.no_grad():
            if self.index_fp8:
                payload, scales = quantize_indexer_fp8(hadamard_rotate(keys))
                self.index_keys[rows, positions] = payload
                self.index_scales[rows, positions] = scales
            else:
                self.index_keys[rows, positions] = keys.to(self.index_keys.dtype)


class DeepSeekSparseAttention(MultiHeadLatentAttention):
    """DeepSeek-V3.2's DSA (module docstring). Takes MultiHeadLatentAttention's arguments (with
    q_lora_rank > 0: the indexer reuses the compressed query) plus the indexer's."""

    def __init__(self, dim, n_heads, q_lora_rank=1536, *args, index_n_heads=64,
                 index_head_dim=128, index_topk=2048, **kwargs):
        if q_lora_rank <= 0:
            raise ValueError("DeepSeekSparseAttention needs q_lora_rank > 0: the indexer reads the "
                             f"compressed query (got {q_lora_rank})")
        if index_topk <= 0:
            raise ValueError(f"index_topk must be positive (got {index_topk})")
        super().__init__(dim, n_heads, q_lora_rank, *args, **kwargs)
        if index_head_dim < self.qk_rope_head_dim:
            raise ValueError(f"index_head_dim ({index_head_dim}) must hold the rope part "
                             f"({self.qk_rope_head_dim})")
        self.index_topk = index_topk
        self.indexer = LightningIndexer(dim, q_lora_rank, index_n_heads, index_head_dim,
                                        self.qk_rope_head_dim, device=kwargs.get("device"),
                                        dtype=kwargs.get("dtype"))

    @staticmethod
    def _transformers_config(attention):
        config = attention.config
        return dict(MultiHeadLatentAttention._transformers_config(attention),
                    index_n_heads=config.index_n_heads, index_head_dim=config.index_head_dim,
                    index_topk=config.index_topk)

    @classmethod
    def _transformers_state(cls, attention):
        state = super()._transformers_state(attention)
        state.update({name: value for name, value in attention.state_dict().items()
                      if name.startswith("indexer.")})  # DeepSeek's names already
        return state

    def new_cache(self, batch_size, max_seq_len=None, page_size=None, fp8=None, index_fp8=False):
        """An empty DSAKVCache for this module (MultiHeadLatentAttention.new_cache's arguments,
        plus FP8 indexer keys with index_fp8=True)."""
        weight = self.wkv_a.weight
        return DSAKVCache(batch_size, max_seq_len or self.max_seq_len, page_size,
                          dtype=weight.dtype, fp8=self.fp8 if fp8 is None else fp8,
                          device=weight.device, kv_lora_rank=self.kv_lora_rank,
                          rope_dim=self.qk_rope_head_dim, index_head_dim=self.indexer.head_dim,
                          index_fp8=index_fp8)

    def _absorption(self):
        """(W_UK, W_UV) as absorbed_weights(), but differentiable while training wkv_b."""
        if torch.is_grad_enabled() and self.wkv_b.weight.requires_grad:
            folded = self._weight(self.wkv_b).view(
                self.n_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
            return folded.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
        return self.absorbed_weights()

    def forward(self, x, cache=None, indexer_loss=None):
        """x (B, S, dim) -> (B, S, dim), as MultiHeadLatentAttention.forward with a DSAKVCache.
        indexer_loss "dense" (warm-up) or "sparse" (no cache): returns (out, the indexer's KL
        loss against this layer's attention), the indexer fed detached inputs."""
        if indexer_loss not in (None, "dense", "sparse"):
            raise ValueError(f"indexer_loss must be None, 'dense' or 'sparse' (got "
                             f"{indexer_loss!r})")
        if cache is not None and indexer_loss is not None:
            raise ValueError("indexer_loss trains on whole sequences: call without a cache")
        if cache is not None and not isinstance(cache, DSAKVCache):
            raise TypeError(f"cache must be a DSAKVCache (new_cache()) (got "
                            f"{type(cache).__name__})")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (batch, seqlen, {self.dim}) (got shape {tuple(x.shape)})")
        batch, seqlen, _ = x.shape
        positions, slots = self._positions(x, cache)
        cos, sin = self._rope_tables(positions, x.dtype)
        c_q = self.q_norm(self.wq_a(x))
        q = mla_norm_rope(self.wq_b(c_q).view(batch, seqlen, self.n_heads, self.qk_head_dim),
                          rope_cos=cos, rope_sin=sin)
        latent = mla_norm_rope(self.wkv_a(x), self.kv_norm.weight, cos, sin, self.norm_eps,
                               cache=None if cache is None else cache.kv_cache, cache_slots=slots)
        if cache is not None:
            out = self._sparse_decode(x, c_q, q, cos, sin, positions, cache)
            return self.wo(out.flatten(2))
        sparse = seqlen > self.index_topk  # else every visible key is selected: dense MLA
        if sparse or indexer_loss is not None:
            index_q, index_k, index_weights = self.indexer(x.detach(), c_q.detach(), cos, sin)
        indices = None
        if sparse or indexer_loss == "sparse":
            indices = indexer_topk(index_q, index_k, index_weights, self.index_topk)
        q_latent = None
        if sparse:
            # Attention over the selected tokens in the latent form: MQA over the 576-wide rows,
            # all heads sharing one list.
            w_uk, w_uv = self._absorption()
            q_latent = self._latent_query(q, w_uk)
            out_latent = sparse_attn(q_latent, latent[:, :, None], None, indices[:, :, None],
                                     softmax_scale=self.softmax_scale,
                                     head_dim_v=self.kv_lora_rank)
            out = torch.einsum("bshc,hvc->bshv", out_latent, w_uv.to(q.dtype))
        else:
            out = self._naive_attention(q, latent)
        out = self.wo(out.flatten(2))
        if indexer_loss is None:
            return out
        if q_latent is None:
            with torch.no_grad():
                q_latent = self._latent_query(q, self.absorbed_weights()[0])
        # The loss detaches the main attention's queries and keys itself.
        loss = indexer_kl_loss(q_latent, latent[:, :, None], index_q, index_k, index_weights,
                               softmax_scale=self.softmax_scale,
                               indices=indices if indexer_loss == "sparse" else None)
        return out, loss

    def _sparse_decode(self, x, c_q, q, cos, sin, positions, cache):
        """Caches the new tokens' indexer keys, selects each new query's top-k among everything
        cached, and attends over those cached latent rows only."""
        index_q, index_k, index_weights = self.indexer(x, c_q, cos, sin)
        cache.write_index_keys(positions, index_k)
        cache.commit(x.shape[1])
        if cache.index_fp8:
            q_fp8, q_scale = quantize_indexer_fp8(hadamard_rotate(index_q))
            indices = indexer_topk(q_fp8, cache.index_keys, index_weights, self.index_topk,
                                   seqlens_k=cache.cache_seqlens, q_scale=q_scale,
                                   k_scale=cache.index_scales)
        else:
            indices = indexer_topk(index_q, cache.index_keys, index_weights, self.index_topk,
                                   seqlens_k=cache.cache_seqlens)
        return self._absorbed_attention(q, cache, indices)

    def extra_repr(self):
        return (f"{super().extra_repr()}, index_n_heads={self.indexer.n_heads}, "
                f"index_head_dim={self.indexer.head_dim}, index_topk={self.index_topk}")
