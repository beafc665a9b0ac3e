"""Plain-PyTorch formula of the shared attention core: attention over a KV source (dense, paged,
latent bf16 or the 656-byte FP8 latent rows of SPEC §3) and a key selection (the SPEC §0 window
band, intersected with token or block index lists of SPEC §4-§5). Readable first; materialises
(Sq, Sk) weights on purpose, for small shapes only.
"""

import torch

from deepseek_attn.reference.fp8 import dequantize_act_ref, quantize_act_ref

LATENT_QUANTIZED = 512  # e4m3 c_kv values per row
LATENT_ROPE = 64  # bf16 k_pe values per row
LATENT_GROUP = 128  # one power-of-two scale per 128 values


def quantize_latent_fp8_ref(latent):
    """(..., 576) latent rows -> (..., 656) uint8: 512 e4m3 bytes, 4 fp32 scales (ue8m0), 64 bf16."""
    c_kv, k_pe = latent[..., :LATENT_QUANTIZED], latent[..., LATENT_QUANTIZED:]
    payload, scales = quantize_act_ref(c_kv.float(), LATENT_GROUP, ue8m0=True)
    return torch.cat([payload.view(torch.uint8), scales.float().contiguous().view(torch.uint8),
                      k_pe.to(torch.bfloat16).contiguous().view(torch.uint8)], dim=-1)


def dequantize_latent_fp8_ref(rows):
    """(..., 656) uint8 -> (..., 576) fp32: the values the FP8 latent rows stand for."""
    payload = rows[..., :LATENT_QUANTIZED].contiguous().view(torch.float8_e4m3fn)
    scales = rows[..., LATENT_QUANTIZED:LATENT_QUANTIZED + 16].contiguous().view(torch.float32)
    k_pe = rows[..., LATENT_QUANTIZED + 16:].contiguous().view(torch.bfloat16)
    return torch.cat([dequantize_act_ref(payload, scales, LATENT_GROUP), k_pe.float()], dim=-1)


def dense_kv_ref(k, v=None, block_table=None, head_dim_v=-1):
    """The source as dense (B, L, Hkv, D) keys and values: pages gathered through block_table,
    FP8 latent rows dequantised, v=None read as the first head_dim_v columns of the keys."""
    if k.dtype == torch.uint8:
        k = dequantize_latent_fp8_ref(k)
        head_dim_v = LATENT_QUANTIZED
    if v is None:
        v = k[..., :head_dim_v]
    if block_table is not None:
        pages = block_table.long().clamp(min=0)  # slots past a sequence's end may hold -1
        k, v = (t[pages].flatten(1, 2) for t in (k, v))
    return k, v


def selection_weights_ref(batch, seqlen_q, seqlen_k, heads_kv, lengths, indices=None,
                          index_block_size=1, causal=False, window_size=(-1, -1), device=None):
    """(B, Hkv, Sq, L) float: how many times query i selects key j (0: not visible). The band of
    each sequence is bottom-right aligned to its own length."""
    from deepseek_attn.reference.attention import visible_mask

    weights = torch.zeros(batch, heads_kv, seqlen_q, seqlen_k, dtype=torch.float64, device=device)
    for b in range(batch):
        length = int(lengths[b])
        band = visible_mask(seqlen_q, length, causal, window_size, device=device)
        weights[b, :, :, :length] = band.double()
    if indices is not None:
        idx = indices.long()  # (B, Sq, Hkv, n)
        keys = idx.unsqueeze(-1) * index_block_size + torch.arange(index_block_size, device=device)
        keys = keys.masked_fill(idx.unsqueeze(-1) < 0, seqlen_k).flatten(-2)  # -1 -> spill slot
        counts = torch.zeros(batch, seqlen_q, heads_kv, seqlen_k + 1, dtype=torch.float64,
                             device=device)
        counts.scatter_add_(-1, keys.clamp(max=seqlen_k), torch.ones_like(keys, dtype=torch.float64))
        weights = weights * counts[..., :seqlen_k].permute(0, 2, 1, 3)
    return weights


def attention_core_ref(q, k, v=None, block_table=None, cache_seqlens=None, indices=None,
                       index_block_size=1, head_dim_v=-1, softmax_scale=None, causal=False,
                       window_size=(-1, -1), softcap=0.0, dtype=torch.float64):
    """Returns (out (B, Sq, Hq, Dv) in `dtype`, lse (B, Hq, Sq) fp32), computed in `dtype`.

    Keys listed twice count twice; rows that see no key give out = 0 and lse = -inf.
    """
    batch, seqlen_q, heads_q, head_dim = q.shape
    keys, values = dense_kv_ref(k, v, block_table, head_dim_v)
    seqlen_k, heads_kv = keys.shape[1], keys.shape[2]
    lengths = cache_seqlens.tolist() if cache_seqlens is not None else [seqlen_k] * batch
    weights = selection_weights_ref(batch, seqlen_q, seqlen_k, heads_kv, lengths, indices,
                                    index_block_size, causal, window_size, q.device)
    group = heads_q // heads_kv
    weights = weights.repeat_interleave(group, dim=1).to(dtype)
    keys = keys.to(dtype).repeat_interleave(group, dim=2)
    values = values.to(dtype).repeat_interleave(group, dim=2)
    scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
    scores = torch.einsum("bihd,bjhd->bhij", q.to(dtype), keys) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    seen = weights > 0
    row_sees_a_key = seen.any(dim=-1, keepdim=True)
    # log(weight) adds a duplicate's multiplicity; unseen keys are -inf; empty rows stay finite.
    logits = torch.where(seen, scores + torch.log(weights.clamp(min=1)), float("-inf"))
    logits = torch.where(row_sees_a_key, logits, torch.zeros_like(logits))
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1) * row_sees_a_key
    out = torch.einsum("bhij,bjhd->bihd", probs, values)
    return out, lse.float().masked_fill(~row_sees_a_key[..., 0], float("-inf"))
