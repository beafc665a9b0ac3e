"""Plain-PyTorch formula of absorbed MLA decode (SPEC §3): per sequence, gather its latent rows
from the pages, then MQA over them — readable first, one sequence at a time."""

import torch

from deepseek_attn.reference.core import dequantize_latent_fp8_ref


def mla_decode_ref(q, kv_cache, block_table, cache_seqlens, head_dim_v=512, softmax_scale=None,
                   causal=False, dtype=torch.float64):
    """(out (B, Sq, H, head_dim_v) in `dtype`, lse (B, H, Sq) fp32) of FlashMLA's
    flash_mla_with_kvcache: causal is bottom-right aligned to each sequence's length."""
    if kv_cache.dtype in (torch.float8_e4m3fn, torch.uint8):
        kv_cache = dequantize_latent_fp8_ref(kv_cache.view(torch.uint8))
    batch, seqlen_q, heads, dim = q.shape
    scale = dim ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.zeros(batch, seqlen_q, heads, head_dim_v, dtype=dtype)
    lse = torch.full((batch, heads, seqlen_q), float("-inf"))
    for b in range(batch):
        length = int(cache_seqlens[b])
        if block_table is None:
            rows = kv_cache[b, :length, 0]
        else:
            page_size = kv_cache.shape[1]
            pages = block_table[b, : -(-length // page_size)].long()
            rows = kv_cache[pages].flatten(0, 1)[:length, 0]
        rows = rows.to(dtype)
        scores = torch.einsum("ihd,jd->hij", q[b].to(dtype), rows) * scale  # (H, Sq, L)
        if causal:
            keys = torch.arange(length)
            limit = torch.arange(seqlen_q) + length - seqlen_q
            scores = scores.masked_fill(keys[None, None, :] > limit[None, :, None], float("-inf"))
        seen = torch.isfinite(scores).any(-1)  # (H, Sq)
        safe = torch.where(seen[..., None], scores, torch.zeros_like(scores))
        probs = torch.softmax(safe, dim=-1) * seen[..., None]
        out[b] = torch.einsum("hij,jd->ihd", probs, rows[:, :head_dim_v])
        lse[b] = torch.where(seen, torch.logsumexp(safe, -1), float("-inf")).float()
    return out, lse
