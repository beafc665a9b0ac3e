"""Plain-PyTorch formulas of SPEC §0-§1: readable first, used by tests and docs.

These materialise the full (Sq, Sk) score matrix on purpose; they are references for small
shapes, not an attention path.
"""

import torch


def visible_mask(seqlen_q, seqlen_k, causal=False, window_size=(-1, -1), device=None):
    """(Sq, Sk) bool: query i sees key j iff i+off-wl <= j <= i+off+wr, off = Sk - Sq."""
    window_left, window_right = window_size
    if causal:
        window_right = 0
    rows = torch.arange(seqlen_q, device=device).unsqueeze(1)
    cols = torch.arange(seqlen_k, device=device).unsqueeze(0)
    offset = seqlen_k - seqlen_q
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if window_left >= 0:
        mask &= cols >= rows + offset - window_left
    if window_right >= 0:
        mask &= cols <= rows + offset + window_right
    return mask


def attention_ref(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
    """Returns (out (B,Sq,Hq,Dv), lse (B,Hq,Sq) fp32), computed in the dtype of the inputs.

    Rows that see no key give out = 0 and lse = -inf.
    """
    batch, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
    scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
    group = heads_q // heads_kv
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    mask = visible_mask(seqlen_q, seqlen_k, causal, window_size, device=q.device)
    row_sees_a_key = mask.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~mask, float("-inf"))
    # Empty rows get harmless finite scores, then are zeroed: no NaN in values or gradients.
    scores = torch.where(row_sees_a_key, scores, torch.zeros_like(scores))
    lse = torch.logsumexp(scores.float(), dim=-1).masked_fill(~row_sees_a_key[..., 0], float("-inf"))
    probs = torch.softmax(scores, dim=-1) * row_sees_a_key
    out = torch.einsum("bhij,bjhd->bihd", probs, v)
    return out, lse


def merge_partials(out_first, lse_first, out_second, lse_second):
    """SPEC §0: combine attention over two disjoint key sets (with the -inf convention)."""
    lse = torch.logaddexp(lse_first, lse_second)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    weight_first = torch.exp(lse_first - safe).masked_fill(torch.isinf(lse), 0.0)
    weight_second = torch.exp(lse_second - safe).masked_fill(torch.isinf(lse), 0.0)
    to_bshd = lambda w: w.transpose(1, 2).unsqueeze(-1)  # (B,H,S) -> (B,S,H,1)
    out = to_bshd(weight_first) * out_first.float() + to_bshd(weight_second) * out_second.float()
    return out.to(out_first.dtype), lse
