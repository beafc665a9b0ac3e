"""Plain-PyTorch formulas of DeepSeek Sparse Attention (SPEC §4), readable first:

- the lightning indexer from the hidden states (`dsa_indexer_ref`), its logits in full or FP8
  precision (`indexer_logits_ref`, `indexer_logits_fp8_ref`) and their top-k (`indexer_topk_ref`);
- the whole DSA layer (`dsa_attention_ref`): MLA where each query sees only its selected keys;
- the indexer's training loss (`indexer_kl_loss_ref`).

Everything materialises (Sq, Sk) matrices on purpose: these are references for small shapes.
"""

import math

import torch

from deepseek_attn.reference.attention import visible_mask
from deepseek_attn.reference.core import attention_core_ref
from deepseek_attn.reference.fp8 import quantize_act_ref
from deepseek_attn.reference.mla import (_linear, _positions, mla_config_scale, mla_inv_freq,
                                         mla_latent_ref, mla_query_ref, rms_norm_ref,
                                         rope_interleaved_ref)

INDEXER_NORM_EPS = 1e-6  # DeepSeek-V3.2's k_norm is a LayerNorm with its default eps


def hadamard_ref(x):
    """x·H_n/√n over the last dim, H_n Sylvester's ±1 Hadamard matrix (n a power of two): an
    orthonormal rotation, so dot products are kept while outliers spread over all n dims."""
    size = x.shape[-1]
    if size < 1 or size & (size - 1):
        raise ValueError(f"hadamard_ref needs the last dim of x to be a power of two (got {size})")
    matrix = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    while matrix.shape[0] < size:  # Sylvester: H_2n = [[H_n, H_n], [H_n, -H_n]]
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)])
    return x @ matrix / math.sqrt(size)


def rope_rotate_half_ref(x, positions, inv_freq):
    """x (B, S, H, R) or (B, S, R) with dims i and i + R/2 rotated by positions (B, S) · f_i: the
    indexer's non-interleaved RoPE, i.e. interleaved RoPE on the dims (0, R/2, 1, R/2+1, ...)."""
    first, second = x.chunk(2, dim=-1)
    paired = torch.stack([first, second], dim=-1).flatten(-2)
    rotated = rope_interleaved_ref(paired, positions, inv_freq)
    return torch.cat([rotated[..., 0::2], rotated[..., 1::2]], dim=-1)


def mla_compressed_query_ref(x, weights, config, dtype=torch.float64):
    """c_q (B, S, q_lora_rank) = RMSNorm(x·W_DQ): MLA's compressed query, reused by the indexer."""
    return rms_norm_ref(_linear(x.to(dtype), weights["wq_a"]), weights["q_norm"],
                        config["norm_eps"])


def dsa_indexer_ref(x, c_q, weights, config, positions=None, dtype=torch.float64):
    """(q_I (B, S, H_I, d_I), k_I (B, S, d_I), w (B, S, H_I)) in `dtype`: the lightning indexer's
    queries from c_q, its LayerNorm'd single-head keys and its head weights (times H_I^-0.5).

    Heads are laid out [pe | nope]; the pe part gets rotate-half RoPE at MLA's frequencies.
    """
    heads, head_dim, rope = (config["index_n_heads"], config["index_head_dim"],
                             config["qk_rope_head_dim"])
    x = x.to(dtype)
    positions, inv_freq = _positions(x, positions), mla_inv_freq(config)

    def rotate_pe(t):
        return torch.cat([rope_rotate_half_ref(t[..., :rope], positions, inv_freq),
                          t[..., rope:]], dim=-1)

    q = _linear(c_q.to(dtype), weights["indexer.wq_b"]).unflatten(-1, (heads, head_dim))
    k = torch.nn.functional.layer_norm(
        _linear(x, weights["indexer.wk"]), (head_dim,),
        weights["indexer.k_norm.weight"].to(dtype), weights["indexer.k_norm.bias"].to(dtype),
        INDEXER_NORM_EPS)
    head_weights = _linear(x, weights["indexer.weights_proj"]) * heads ** -0.5
    return rotate_pe(q), rotate_pe(k), head_weights


def indexer_logits_ref(q, k, weights, causal=True, softmax_scale=None):
    """I (B, Sq, Sk) = scale·Σ_h w[b,t,h]·ReLU(q[b,t,h]·k[b,s]) from q (B, Sq, H, d),
    k (B, Sk, d), weights (B, Sq, H); computed in fp64, returned in fp32 (fp64 for fp64 q).

    scale defaults to d^-0.5; causal is bottom-right aligned and hidden keys are −inf.
    """
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    per_head = torch.einsum("bthd,bsd->bths", q.double(), k.double()).relu()
    logits = scale * torch.einsum("bth,bths->bts", weights.double(), per_head)
    if causal:
        visible = visible_mask(seqlen_q, seqlen_k, causal=True, device=q.device)
        logits = logits.masked_fill(~visible, float("-inf"))
    return logits.to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def quantize_indexer_fp8_ref(x):
    """(e4m3 like x, fp32 scales x.shape[:-1]): one scale per row, max(amax, 1e-4)/448 (SPEC §2)."""
    payload, scales = quantize_act_ref(x, group_size=x.shape[-1])
    return payload, scales.squeeze(-1)


def indexer_logits_fp8_ref(q_fp8, q_scale, k_fp8, k_scale, weights, causal=True,
                           softmax_scale=None):
    """indexer_logits_ref (fp32) of e4m3 q (B, Sq, H, d) with q_scale (B, Sq, H) and e4m3
    k (B, Sk, d) with k_scale (B, Sk), dequantised as value·scale (positive scales commute with
    the ReLU, so kernels may apply them after it)."""
    q = q_fp8.float() * q_scale.unsqueeze(-1)
    k = k_fp8.float() * k_scale.unsqueeze(-1)
    return indexer_logits_ref(q, k, weights, causal, softmax_scale)


def indexer_topk_ref(logits, topk):
    """(B, Sq, topk) int32: per row the indices of the min(topk, #finite) highest finite logits
    of (B, Sq, Sk), by descending logit, ties toward the lower index; −1 in the slots left."""
    values, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    values, order = values[..., :topk], order[..., :topk]
    indices = torch.where(torch.isfinite(values), order, -1)
    return torch.nn.functional.pad(indices, (0, topk - indices.shape[-1]), value=-1).int()


def selected_keys_mask(indices, seqlen_k):
    """(B, Sq, Sk) bool from index lists (B, Sq, K): key s is listed in row t (−1 is skipped)."""
    slots = indices.long().masked_fill(indices < 0, seqlen_k)  # −1 goes to a spill column
    mask = torch.zeros(*indices.shape[:-1], seqlen_k + 1, dtype=torch.bool, device=indices.device)
    return mask.scatter(-1, slots, True)[..., :seqlen_k]


def dsa_attention_ref(x, weights, config, positions=None, dtype=torch.float64,
                      return_indices=False):
    """out (B, S, dim) in `dtype`: causal MLA over x (B, S, dim) where each query attends only to
    the index_topk keys its lightning indexer selects; (out, indices (B, S, topk)) when asked.

    Keys and values are materialised per head (MLA's naive path). The selection is not
    differentiable: no gradient reaches the indexer, which trains through indexer_kl_loss_ref.
    """
    heads, nope, v_dim = config["n_heads"], config["qk_nope_head_dim"], config["v_head_dim"]
    with torch.no_grad():
        c_q = mla_compressed_query_ref(x, weights, config, dtype)
        index_q, index_k, index_weights = dsa_indexer_ref(x, c_q, weights, config, positions,
                                                          dtype)
        indices = indexer_topk_ref(indexer_logits_ref(index_q, index_k, index_weights),
                                   config["index_topk"])
    q_nope, q_pe = mla_query_ref(x, weights, config, positions, dtype)
    c_kv, k_pe = mla_latent_ref(x, weights, config, positions, dtype)
    kv = _linear(c_kv, weights["wkv_b"]).unflatten(-1, (heads, nope + v_dim))
    k_nope, v = kv.split([nope, v_dim], dim=-1)
    k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, heads, -1)], dim=-1)
    per_head_indices = indices.unsqueeze(2).expand(-1, -1, heads, -1)  # every head, one list
    out, _ = attention_core_ref(torch.cat([q_nope, q_pe], dim=-1), k, v,
                                indices=per_head_indices, softmax_scale=mla_config_scale(config),
                                causal=True, dtype=dtype)
    out = _linear(out.flatten(2), weights["wo"])
    return (out, indices) if return_indices else out


def _attention_target(q, k, keys, softmax_scale):
    """p (B, Sq, Sk) fp64: the main attention's probabilities over `keys` (B, Sq, Sk) summed over
    query heads and L1-normalised; rows without keys are 0."""
    group = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    scores = torch.einsum("bthd,bshd->bhts", q.double(),
                          k.double().repeat_interleave(group, dim=2)) * scale
    probs = torch.softmax(scores.masked_fill(~keys.unsqueeze(1), float("-inf")), dim=-1)
    summed = probs.sum(1)
    return (summed / summed.sum(-1, keepdim=True)).nan_to_num(0.0)  # keyless rows are 0/0


def indexer_kl_loss_ref(q, k, index_logits, softmax_scale=None, indices=None, reduction="sum"):
    """Σ_t KL(p_t ‖ softmax(I_t)) in fp64 ("mean": divided by B·Sq): the indexer's training loss.

    q (B, Sq, Hq, D), k (B, Sk, Hkv, D) are the main attention's (GQA, causal bottom-right);
    p_t is its per-head softmax summed over heads and L1-normalised, without gradient.
    Dense stage (indices None): over the visible keys. Sparse stage (indices (B, Sq, K), −1
    empty, no duplicates): the main attention and softmax(I_t) both see only the selected
    visible keys. Rows without keys add 0; the gradient reaches index_logits only.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean' (got {reduction!r})")
    batch, seqlen_q = q.shape[:2]
    seqlen_k = k.shape[1]
    keys = visible_mask(seqlen_q, seqlen_k, causal=True, device=q.device).expand(batch, -1, -1)
    if indices is not None:
        keys = keys & selected_keys_mask(indices, seqlen_k)
    with torch.no_grad():
        target = _attention_target(q, k, keys, softmax_scale)
    has_key = keys.any(-1, keepdim=True)
    logits = index_logits.double().masked_fill(~keys, float("-inf"))
    log_probs = torch.log_softmax(torch.where(has_key, logits, 0.0), dim=-1)
    # 0·log 0 = 0: keys the target gives no weight add nothing, hidden keys included.
    terms = torch.where(target > 0, target * (target.log() - log_probs), 0.0)
    loss = terms.sum()
    return loss / (batch * seqlen_q) if reduction == "mean" else loss
