"""Family 2b: Multi-head Latent Attention (SPEC §3) — the latent KV cache and absorbed decode.

`mla_decode` follows FlashMLA's `flash_mla_with_kvcache` conventions (so its users can switch):
q (B, Sq, H, 576) = [W_UKᵀ·q_nope | q_pe] per head, a cache of 576-value latent rows
[c_kv | k_pe] in bf16/fp16 (or fp32/fp64 on CPU), or SPEC §3's 656-byte FP8 rows, read through
`block_table`/`cache_seqlens`; values are the first 512 columns; causal is bottom-right aligned to
each sequence's length (Sq > 1 is speculative decoding). It runs the shared attention core
(csrc/core/) on both devices: one pass over each sequence's cache for all H heads.

`MLAKVCache` owns such a cache: pages of 64 tokens by default, or one page per sequence.
"""

import math

import torch

from deepseek_attn import core  # noqa: F401  (registers the core op's fake kernel)
from deepseek_attn.fp8 import quantize_act

__all__ = ["MLAKVCache", "mla_decode", "LATENT_DIM", "LATENT_VALUES", "FP8_ROW_BYTES"]

LATENT_DIM = 576  # kv_lora_rank 512 + qk_rope_head_dim 64
LATENT_VALUES = 512
FP8_ROW_BYTES = 656  # 512 e4m3 + 4 fp32 scales + 64 bf16
_FP8_GROUP = 128
_FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.uint8)


def _cache_rows(kv_cache, is_fp8_kvcache):
    """The cache as the core reads it: uint8 bytes for FP8 rows, else the cache itself."""
    if kv_cache.dim() != 4 or kv_cache.shape[2] != 1:
        raise ValueError("kv_cache must be (num_pages, page_size, 1, row) — or (batch, seqlen, 1, "
                         f"row) without a block_table (got shape {tuple(kv_cache.shape)})")
    if is_fp8_kvcache:
        if kv_cache.dtype not in _FP8_CACHE_DTYPES or kv_cache.shape[-1] != FP8_ROW_BYTES:
            raise ValueError("is_fp8_kvcache=True needs 656-byte rows, dtype float8_e4m3fn or "
                             f"uint8 (got {kv_cache.dtype}, last dim {kv_cache.shape[-1]})")
        return kv_cache.view(torch.uint8)
    if kv_cache.dtype in _FP8_CACHE_DTYPES:
        raise ValueError(f"kv_cache has dtype {kv_cache.dtype}: pass is_fp8_kvcache=True to read "
                         "FP8 latent rows")
    if kv_cache.shape[-1] != LATENT_DIM:
        raise ValueError(f"kv_cache rows must hold {LATENT_DIM} values (got {kv_cache.shape[-1]})")
    return kv_cache


def mla_decode(q, kv_cache, block_table, cache_seqlens, head_dim_v=LATENT_VALUES,
               softmax_scale=None, causal=False, is_fp8_kvcache=False):
    """Absorbed MLA attention over a latent cache; returns (out (B, Sq, H, head_dim_v) in q's
    dtype, lse (B, H, Sq) fp32). `block_table` (B, max_pages) int32 or None (then kv_cache is
    (B, seqlen, 1, row), one page per sequence); `cache_seqlens` (B,) int32. `softmax_scale`
    defaults to 576^-0.5, as in FlashMLA; MLA passes (128 + 64)^-0.5·mscale² (SPEC §3)."""
    return torch.ops.deepseek_attn.attention_core_fwd(
        *mla_decode_core_args(q, kv_cache, block_table, cache_seqlens, head_dim_v, softmax_scale,
                              causal, is_fp8_kvcache))


def mla_decode_core_args(q, kv_cache, block_table, cache_seqlens, head_dim_v=LATENT_VALUES,
                         softmax_scale=None, causal=False, is_fp8_kvcache=False):
    """mla_decode's checks, then the arguments of the core op it runs (the emulated tests call
    the emulated core with them)."""
    rows = _cache_rows(kv_cache, is_fp8_kvcache)
    if q.dim() != 4 or q.shape[-1] != LATENT_DIM:
        raise ValueError(f"q must be (batch, seqlen_q, heads, {LATENT_DIM}) (got shape "
                         f"{tuple(q.shape)})")
    if is_fp8_kvcache and head_dim_v != LATENT_VALUES:
        raise ValueError(f"head_dim_v must be {LATENT_VALUES} with the FP8 cache (got {head_dim_v})")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    return (q, rows, None, block_table, cache_seqlens, None, 1,
            -1 if is_fp8_kvcache else head_dim_v, scale, causal, -1, -1, 0.0)


def pack_latent_fp8(latent):
    """(..., 576) latent rows -> (..., 656) float8_e4m3fn-typed bytes of SPEC §3: the 512 c_kv
    values in e4m3 with one power-of-two scale per 128 (our quantize_act op), k_pe in bf16."""
    payload, scales = quantize_act(latent[..., :LATENT_VALUES].float().contiguous(), _FP8_GROUP,
                                   "ue8m0")
    pieces = [payload.view(torch.uint8), scales.contiguous().view(torch.uint8),
              latent[..., LATENT_VALUES:].to(torch.bfloat16).contiguous().view(torch.uint8)]
    return torch.cat(pieces, dim=-1).view(torch.float8_e4m3fn)


class MLAKVCache:
    """A latent KV cache for `batch_size` sequences of up to `max_seq_len` tokens.

    `kv_cache` is (num_pages, page_size, 1, 576) in `dtype` (1152 bytes per token in bf16) or,
    with fp8=True, (num_pages, page_size, 1, 656) float8_e4m3fn-typed bytes (656 per token);
    `block_table` (B, max_pages) int32 maps each sequence's pages (page_size=None: one page per
    sequence), `cache_seqlens` (B,) int32 counts the tokens held. `append` writes new tokens at
    each sequence's current length; `decode` runs mla_decode over the cache.
    """

    def __init__(self, batch_size, max_seq_len, page_size=64, dtype=torch.bfloat16, fp8=False,
                 device=None):
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be positive (got {batch_size} and "
                             f"{max_seq_len})")
        if page_size is not None and page_size < 1:
            raise ValueError(f"page_size must be positive or None (got {page_size})")
        self.fp8 = fp8
        self.max_seq_len = max_seq_len
        self.page_size = max_seq_len if page_size is None else page_size
        pages_per_sequence = math.ceil(max_seq_len / self.page_size)
        num_pages = batch_size * pages_per_sequence
        row, row_dtype = (FP8_ROW_BYTES, torch.uint8) if fp8 else (LATENT_DIM, dtype)
        self.kv_cache = torch.zeros(num_pages, self.page_size, 1, row, dtype=row_dtype,
                                    device=device)
        if fp8:
            self.kv_cache = self.kv_cache.view(torch.float8_e4m3fn)
        self.block_table = torch.arange(num_pages, dtype=torch.int32, device=device).view(
            batch_size, pages_per_sequence)
        self.cache_seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)

    @property
    def bytes_per_token(self):
        return self.kv_cache.shape[-1] * self.kv_cache.element_size()

    def append(self, c_kv, k_pe):
        """Writes c_kv (B, T, 512) and k_pe (B, T, 64) (already normalised and rotated) after
        each sequence's cached tokens. A cache without room for T more tokens in some sequence
        raises ValueError and changes nothing."""
        batch = self.block_table.shape[0]
        if c_kv.dim() != 3 or c_kv.shape[0] != batch or c_kv.shape[-1] != LATENT_VALUES:
            raise ValueError(f"c_kv must be ({batch}, tokens, {LATENT_VALUES}) (got shape "
                             f"{tuple(c_kv.shape)})")
        if k_pe.shape != c_kv.shape[:2] + (LATENT_DIM - LATENT_VALUES,):
            raise ValueError(f"k_pe must be ({batch}, {c_kv.shape[1]}, "
                             f"{LATENT_DIM - LATENT_VALUES}) like c_kv (got shape "
                             f"{tuple(k_pe.shape)})")
        tokens = c_kv.shape[1]
        lengths = self.cache_seqlens.long()
        if int(lengths.max()) + tokens > self.max_seq_len:
            raise ValueError(f"the cache is full: a sequence holds {int(lengths.max())} of "
                             f"{self.max_seq_len} tokens and {tokens} more were appended")
        rows = torch.cat([c_kv, k_pe.to(c_kv.dtype)], dim=-1)
        rows = pack_latent_fp8(rows) if self.fp8 else rows.to(self.kv_cache.dtype)
        positions = lengths[:, None] + torch.arange(tokens, device=lengths.device)
        pages = torch.gather(self.block_table.long(), 1, positions // self.page_size)
        target = self.kv_cache.view(torch.uint8) if self.fp8 else self.kv_cache
        values = rows.view(torch.uint8) if self.fp8 else rows
        target[pages, positions % self.page_size, 0] = values
        self.cache_seqlens += tokens

    def decode(self, q, softmax_scale=None, causal=True):
        """mla_decode of q (B, Sq, H, 576) over everything cached (the new tokens included)."""
        return mla_decode(q, self.kv_cache, self.block_table, self.cache_seqlens,
                          softmax_scale=softmax_scale, causal=causal, is_fp8_kvcache=self.fp8)
