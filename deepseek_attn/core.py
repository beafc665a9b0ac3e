"""The shared attention core (csrc/core/): the forward main loop that every family builds on.

`attention_core_fwd` is internal: MLA decode, DSA and NSA expose it through their own ops and
autograd. It answers two questions per call: where K and V live (a dense `k`/`v`; pages of `k`/`v`
addressed through `block_table` (B, max_pages) int32 and `cache_seqlens` (B,) int32; a latent
`k` with `v=None`, whose values are the first `head_dim_v` columns of each row, stored in q's
dtype or as SPEC §3's 656-byte FP8 rows in a uint8 tensor) and which keys a query sees (the
SPEC §0 window band of each sequence, bottom-right aligned to its length, intersected with
`indices` (B, Sq, Hkv, n) int32 when given: token indices, or blocks of `index_block_size` keys;
-1 slots are skipped and duplicates count twice).
"""

import torch

from deepseek_attn import _C  # noqa: F401  (loads the op library)

__all__ = ["attention_core_fwd"]

_LATENT_FP8_ROW_BYTES = 656


@torch.library.register_fake("deepseek_attn::attention_core_fwd")
def _attention_core_fwd_fake(q, k, v, block_table, cache_seqlens, indices, index_block_size,
                             head_dim_v, softmax_scale, causal, window_left, window_right, softcap):
    torch._check(q.dim() == 4 and k.dim() == 4, lambda: "q and k must have 4 dimensions")
    if k.dtype == torch.uint8:
        torch._check(k.shape[-1] == _LATENT_FP8_ROW_BYTES,
                     lambda: f"k.size(3) must be 656 for FP8 latent rows (got {k.shape[-1]})")
        dim_v = 512
    elif v is not None:
        dim_v = v.shape[-1]
    else:
        torch._check(0 < head_dim_v <= k.shape[-1], lambda: "head_dim_v must be in [1, "
                     f"{k.shape[-1]}] when v is None (got {head_dim_v})")
        dim_v = head_dim_v
    batch, seqlen_q, heads_q, _ = q.shape
    torch._check(heads_q % k.shape[2] == 0, lambda: "heads_q must be a multiple of heads_kv")
    return (q.new_empty((batch, seqlen_q, heads_q, dim_v)),
            q.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32))


def attention_core_fwd(q, k, v=None, *, block_table=None, cache_seqlens=None, indices=None,
                       index_block_size=1, head_dim_v=-1, softmax_scale=None, causal=False,
                       window_size=(-1, -1), softcap=0.0):
    """Forward attention over any KV source and key selection (module docstring); returns
    (out (B, Sq, Hq, Dv) in q's dtype, lse (B, Hq, Sq) fp32). No autograd: the families add it."""
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    return torch.ops.deepseek_attn.attention_core_fwd(
        q, k, v, block_table, cache_seqlens, indices, index_block_size, head_dim_v, scale, causal,
        window_size[0], window_size[1], softcap)
