"""Family 3: DeepSeek Sparse Attention (SPEC §4) — the lightning indexer, its top-k, and
token-sparse attention over index lists.

The indexer scores `I[t, s] = d^-0.5·k_scale[s]·Σ_h w[t, h]·ReLU(q[t, h]·k[s])` (causal, -inf where
masked): `indexer_logits` returns them (differentiable in q, k and the weights, for the indexer's
training loss), `indexer_topk` keeps each row's best `topk` keys without ever storing the (Sq, Sk)
matrix. FP8 inputs (`quantize_indexer_fp8`, after `hadamard_rotate`) take their scales.

`sparse_attn` attends each query only to the keys its kv head's list names: `indices
(B, Sq, Hkv, K)` int32, -1 slots skipped, a key listed twice counted twice, rows with no valid
index giving 0 and lse -inf. The forward is the shared core over token lists (CPU and CUDA,
each gathered key row loaded once for all query heads of its group); the backward recomputes P
from the LSE entry by entry (dQ per row, dK/dV through an inverse index: deterministic). `v=None`
reads MLA's latent rows: values are the first `head_dim_v` columns of k (Hkv = 1, 576 / 512).
"""

import functools
import math

import torch
import torch.utils.checkpoint

from deepseek_attn import core  # noqa: F401  (registers the core op's fake kernel)
from deepseek_attn.fp8 import quantize_act

__all__ = ["BlockSparseAttnFunction", "IndexerLogitsFunction", "SparseAttnFunction",
           "block_select", "block_sparse_attn", "hadamard_rotate", "indexer_kl_loss",
           "indexer_logits", "indexer_topk", "quantize_indexer_fp8", "sparse_attn"]

_ops = torch.ops.deepseek_attn


@torch.library.register_fake("deepseek_attn::sparse_attn_bwd")
def _sparse_attn_bwd_fake(dout, q, k, v, out, lse, indices, head_dim_v, softmax_scale):
    torch._check(indices.dim() == 4, lambda: "indices must be (batch, seqlen_q, heads_kv, n)")
    return (torch.empty_like(q), torch.empty_like(k),
            torch.empty_like(v) if v is not None else q.new_empty((0,)))


@torch.library.register_fake("deepseek_attn::block_sparse_attn_bwd")
def _block_sparse_attn_bwd_fake(dout, q, k, v, out, lse, block_indices, block_size, causal,
                                softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class SparseAttnFunction(torch.autograd.Function):
    """(out (B, Sq, Hq, Dv), lse (B, Hq, Sq) fp32) of attention over index lists (module
    docstring). Inputs: (q, k, v or None, indices, head_dim_v, softmax_scale)."""

    @staticmethod
    def forward(q, k, v, indices, head_dim_v, softmax_scale):
        return _ops.attention_core_fwd(q, k, v, None, None, indices, 1,
                                       -1 if v is not None else head_dim_v, softmax_scale, False,
                                       -1, -1, 0.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, indices, head_dim_v, softmax_scale = inputs
        ctx.save_for_backward(q, k, v, indices, *output)
        ctx.head_dim_v, ctx.softmax_scale = head_dim_v, softmax_scale
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, indices, out, lse = ctx.saved_tensors
        dq, dk, dv = _ops.sparse_attn_bwd(dout.contiguous(), q, k, v, out, lse, indices,
                                          ctx.head_dim_v, ctx.softmax_scale)
        return dq, dk, dv if v is not None else None, None, None, None


def sparse_attn(q, k, v, indices, softmax_scale=None, return_lse=False, head_dim_v=None):
    """Attention of q (B, Sq, Hq, Dqk) over the keys of k (B, Sk, Hkv, Dqk) / v (B, Sk, Hkv, Dv)
    that `indices` (B, Sq, Hkv, K) int32 name (module docstring). v=None: latent rows, values
    = k's first `head_dim_v` (default 512) columns. softmax_scale defaults to Dqk^-0.5.
    Returns out (B, Sq, Hq, Dv), and lse (B, Hq, Sq) fp32 with return_lse."""
    if indices.dim() != 4:
        raise ValueError("indices must be (batch, seqlen_q, heads_kv, num_indices) (got shape "
                         f"{tuple(indices.shape)})")
    if indices.shape[-1] == 0:
        raise ValueError("indices must name at least one slot per row (got num_indices = 0)")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out, lse = SparseAttnFunction.apply(q, k, v, indices, 512 if head_dim_v is None else head_dim_v,
                                        scale)
    return (out, lse) if return_lse else out


@torch.library.register_fake("deepseek_attn::indexer_logits")
def _indexer_logits_fake(q, k, weights, k_scale, seqlens_k, softmax_scale, causal):
    return q.new_empty((q.shape[0], q.shape[1], k.shape[1]), dtype=weights.dtype)


@torch.library.register_fake("deepseek_attn::indexer_logits_bwd")
def _indexer_logits_bwd_fake(dlogits, q, k, weights, seqlens_k, softmax_scale, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(weights)


@torch.library.register_fake("deepseek_attn::indexer_topk")
def _indexer_topk_fake(q, k, weights, k_scale, seqlens_k, topk, softmax_scale, causal):
    torch._check(topk > 0, lambda: f"topk must be positive (got {topk})")
    return q.new_empty((q.shape[0], q.shape[1], topk), dtype=torch.int32)


class IndexerLogitsFunction(torch.autograd.Function):
    """Indexer logits (B, Sq, Sk) of 16/32/64-bit q and k, differentiable in q, k and weights.
    Inputs: (q, k, weights, seqlens_k or None, softmax_scale, causal)."""

    @staticmethod
    def forward(q, k, weights, seqlens_k, softmax_scale, causal):
        return _ops.indexer_logits(q, k, weights, None, seqlens_k, softmax_scale, causal)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, weights, seqlens_k, softmax_scale, causal = inputs
        ctx.save_for_backward(q, k, weights, seqlens_k)
        ctx.softmax_scale, ctx.causal = softmax_scale, causal

    @staticmethod
    def backward(ctx, dlogits):
        q, k, weights, seqlens_k = ctx.saved_tensors
        dq, dk, dweights = _ops.indexer_logits_bwd(dlogits.contiguous(), q, k, weights, seqlens_k,
                                                   ctx.softmax_scale, ctx.causal)
        return dq, dk, dweights, None, None, None


def _indexer_operands(q, weights, softmax_scale, q_scale, k_scale):
    """(weights with q's FP8 scales folded in, in the accumulation dtype; the softmax scale)."""
    fp8 = q.dtype == torch.float8_e4m3fn
    if (q_scale is not None, k_scale is not None) != (fp8, fp8):
        raise ValueError("q_scale and k_scale go with float8_e4m3fn q and k, and only with them "
                         f"(got q of dtype {q.dtype}, q_scale "
                         f"{'given' if q_scale is not None else 'None'}, k_scale "
                         f"{'given' if k_scale is not None else 'None'})")
    weights = weights.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    if fp8:
        weights = weights * q_scale  # positive scales factor out of the ReLU (SPEC §4)
    return weights, q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale


def indexer_logits(q, k, weights, causal=True, softmax_scale=None, seqlens_k=None, q_scale=None,
                   k_scale=None):
    """The lightning indexer's scores (B, Sq, Sk) fp32 (module docstring), -inf where masked.

    q (B, Sq, H, d), k (B, Sk, d), weights (B, Sq, H); causal is bottom-right aligned per
    sequence, over its seqlens_k[b] keys (default Sk). FP8: float8_e4m3fn q and k with q_scale
    (B, Sq, H) and k_scale (B, Sk) (`quantize_indexer_fp8`); not differentiable. Otherwise
    differentiable in q, k and weights.
    """
    weights, scale = _indexer_operands(q, weights, softmax_scale, q_scale, k_scale)
    if q.dtype == torch.float8_e4m3fn:
        return _ops.indexer_logits(q, k, weights, k_scale, seqlens_k, scale, causal)
    return IndexerLogitsFunction.apply(q, k, weights, seqlens_k, scale, causal)


def indexer_topk(q, k, weights, topk=2048, causal=True, softmax_scale=None, seqlens_k=None,
                 q_scale=None, k_scale=None):
    """Each query row's `topk` best keys by `indexer_logits` (same arguments): (B, Sq, topk)
    int32, best first, equal scores to the lower key, -1 past the row's visible keys. Streams
    over key chunks: memory O(B·Sq·topk), never O(Sq·Sk)."""
    weights, scale = _indexer_operands(q, weights, softmax_scale, q_scale, k_scale)
    return _ops.indexer_topk(q, k, weights, k_scale, seqlens_k, topk, scale, causal)


@functools.lru_cache(maxsize=16)
def _hadamard_matrix(size, device):
    """Sylvester's Hadamard matrix over ±1/√size (orthonormal), fp32."""
    matrix = torch.ones(1, 1)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return (matrix / math.sqrt(size)).to(device)


def hadamard_rotate(x):
    """x times the orthonormal Hadamard matrix over its last dim (a power of two): dot products
    are kept and outliers spread before FP8 (SPEC §4). Computed in fp32, returned in x's dtype."""
    size = x.shape[-1]
    if size < 1 or size & (size - 1):
        raise ValueError(f"hadamard_rotate needs a power-of-two last dim (got {size})")
    return (x.float() @ _hadamard_matrix(size, x.device)).to(x.dtype)


def quantize_indexer_fp8(x, scale_fmt=None):
    """(float8_e4m3fn x, fp32 scale per row of the last dim) for the FP8 indexer: one scale per
    (token, head) for q (B, Sq, H, d), per token for k (B, Sk, d); `scale_fmt="ue8m0"` rounds
    scales up to powers of two. Rotate with `hadamard_rotate` first."""
    payload, scales = quantize_act(x, group_size=x.shape[-1], scale_fmt=scale_fmt)
    return payload, scales.squeeze(-1)


# Rows of the KL loss per chunk: about this many main-attention scores are held at once.
_KL_CHUNK_SCORES = 1 << 24


def _attention_target(q, keys_k, visible, softmax_scale):
    """p (B, c, n) fp32: the main attention's per-head softmax over the `visible` (B, c, n) keys
    keys_k (B, c or 1, n, Hkv, D), summed over q's heads (B, c, Hq, D) and L1-normalised; rows
    without keys are 0."""
    batch, rows, heads, dim = q.shape
    heads_kv = keys_k.shape[-2]
    grouped = q.float().view(batch, rows, heads_kv, heads // heads_kv, dim)
    scores = torch.einsum("btkgd,btnkd->btkgn", grouped, keys_k.float()) * softmax_scale
    scores = scores.masked_fill(~visible[:, :, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).sum((2, 3))
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)


def _kl_terms(target, index_logits, visible):
    """Σ over the chunk of KL(target_t ‖ softmax(I_t over the visible keys)); 0·log 0 = 0."""
    has_key = visible.any(-1, keepdim=True)
    logits = index_logits.float().masked_fill(~visible, float("-inf"))
    log_probs = torch.log_softmax(torch.where(has_key, logits, 0.0), dim=-1)
    return torch.where(target > 0, target * (target.clamp_min(1e-30).log() - log_probs), 0.0).sum()


def indexer_kl_loss(q, k, index_q, index_k, index_weights, softmax_scale=None, indices=None,
                    reduction="sum", index_softmax_scale=None, chunk_size=None):
    """The lightning indexer's training loss (SPEC §4): Σ_t KL(p_t ‖ softmax(I_t)).

    q (B, Sq, Hq, D), k (B, Sk, Hkv, D): the main attention's queries and keys (causal,
    bottom-right; GQA or MLA's latent rows with Hkv = 1), used without gradient: p_t is their
    per-head softmax summed over heads and L1-normalised. I = indexer_logits(index_q, index_k,
    index_weights) gets the gradient. Dense warm-up (indices None): over every visible key.
    Sparse stage: indices (B, Sq, K) or (B, Sq, 1, K) int32 (-1 empty; no duplicates, as
    indexer_topk gives): both distributions over the selected visible keys only, each head's
    softmax over them. Rows without keys add 0; "mean" divides by B·Sq.

    Works `chunk_size` query rows at a time (default: about 16M main-attention scores per
    chunk), each chunk recomputed in the backward (activation checkpointing), so no (Sq, Sk)
    matrix is ever held for long sequences.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean' (got {reduction!r})")
    batch, seqlen_q, heads, dim = q.shape
    seqlen_k = k.shape[1]
    if indices is not None and indices.dim() == 4:
        indices = indices.squeeze(2)
    if indices is not None and (indices.dim() != 3 or indices.shape[:2] != (batch, seqlen_q)):
        raise ValueError(f"indices must be ({batch}, {seqlen_q}, K) (got shape "
                         f"{tuple(indices.shape)})")
    scale = dim ** -0.5 if softmax_scale is None else softmax_scale
    q, k = q.detach(), k.detach()
    width = seqlen_k if indices is None else indices.shape[-1]
    rows = chunk_size or max(1, _KL_CHUNK_SCORES // max(1, heads * width))
    total = q.new_zeros((), dtype=torch.float32)
    for t0 in range(0, seqlen_q, rows):
        t1 = min(t0 + rows, seqlen_q)
        keys = t1 + seqlen_k - seqlen_q  # the chunk's rows see keys below this
        if keys <= 0:
            continue
        # Query row t0 + i sees key s iff s <= t0 + i + Sk - Sq (SPEC §0).
        limit = torch.arange(t0, t1, device=q.device)[:, None] + seqlen_k - seqlen_q
        with torch.no_grad():
            if indices is None:
                visible = (torch.arange(keys, device=q.device) <= limit).expand(batch, -1, -1)
                target = _attention_target(q[:, t0:t1], k[:, None, :keys], visible, scale)
            else:
                chunk_indices = indices[:, t0:t1].long()
                visible = (chunk_indices >= 0) & (chunk_indices <= limit)
                gathered = chunk_indices.clamp(0, keys - 1)
                rows_k = k[torch.arange(batch, device=q.device)[:, None, None], gathered]
                target = _attention_target(q[:, t0:t1], rows_k, visible, scale)

        def chunk_loss(index_q_rows, index_k_keys, weights_rows, target=target, visible=visible,
                       gathered=None if indices is None else gathered):
            logits = indexer_logits(index_q_rows, index_k_keys, weights_rows,
                                    softmax_scale=index_softmax_scale)
            if gathered is not None:
                logits = logits.gather(-1, gathered)
            return _kl_terms(target, logits, visible)

        total = total + torch.utils.checkpoint.checkpoint(
            chunk_loss, index_q[:, t0:t1], index_k[:, :keys], index_weights[:, t0:t1],
            use_reentrant=False)
    return total / (batch * seqlen_q) if reduction == "mean" else total


BLOCK_SIZES = (16, 32, 64, 128)


class BlockSparseAttnFunction(torch.autograd.Function):
    """(out, lse) of attention over block lists (SPEC §5). Inputs: (q, k, v, block_indices,
    block_size, causal, softmax_scale). The forward is the core over block lists; the backward
    walks the same lists (dQ per query row, dK/dV per key through an inverse block -> queries
    index: deterministic, work proportional to the selected (query, block) pairs)."""

    @staticmethod
    def forward(q, k, v, block_indices, block_size, causal, softmax_scale):
        return _ops.attention_core_fwd(q, k, v, None, None, block_indices, block_size, -1,
                                       softmax_scale, causal, -1, -1, 0.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, block_indices, block_size, causal, softmax_scale = inputs
        ctx.save_for_backward(q, k, v, block_indices, *output)
        ctx.block_size, ctx.causal, ctx.softmax_scale = block_size, causal, softmax_scale
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, block_indices, out, lse = ctx.saved_tensors
        dq, dk, dv = _ops.block_sparse_attn_bwd(dout.contiguous(), q, k, v, out, lse,
                                                block_indices, ctx.block_size, ctx.causal,
                                                ctx.softmax_scale)
        return dq, dk, dv, None, None, None, None


def block_sparse_attn(q, k, v, block_indices, block_size=64, causal=True, softmax_scale=None,
                      return_lse=False):
    """Attention of q (B, Sq, Hq, D) over the key blocks of k (B, Sk, Hkv, D) / v (B, Sk, Hkv, Dv)
    that `block_indices` (B, Sq, Hkv, n) int32 names (SPEC §5): block b covers keys
    [b·block_size, (b+1)·block_size), -1 slots are skipped, a block listed twice counts twice,
    causal (bottom-right) applies inside the blocks, all query heads of a GQA group share their
    kv head's list, rows seeing no key give 0 and lse -inf. Returns out (B, Sq, Hq, Dv), and lse
    (B, Hq, Sq) fp32 with return_lse."""
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES} (got {block_size})")
    if block_indices.dim() != 4:
        raise ValueError("block_indices must be (batch, seqlen_q, heads_kv, num_blocks) (got "
                         f"shape {tuple(block_indices.shape)})")
    if block_indices.shape[-1] == 0:
        raise ValueError("block_indices must name at least one slot per row (got num_blocks = 0)")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out, lse = BlockSparseAttnFunction.apply(q, k, v, block_indices, block_size, causal, scale)
    return (out, lse) if return_lse else out


def block_select(scores, n, block_size=64, causal=True, init_blocks=1, local_blocks=2,
                 seqlen_k=None):
    """NSA's block selection (SPEC §5): per (query, kv head), the `n` best key blocks by `scores`
    (B, Sq, Hkv, n_blocks), always including the first `init_blocks` blocks and the
    `local_blocks` blocks ending at the query's own (when visible); best first, equal scores to
    the lower block, -1 past the row's visible blocks. Causal (bottom-right over seqlen_k, default
    n_blocks·block_size): a block is visible when its first key is. Returns (B, Sq, Hkv, n)
    int32."""
    if n < init_blocks + local_blocks or n <= 0:
        raise ValueError(f"n must be positive and hold the {init_blocks} initial and "
                         f"{local_blocks} local blocks (got {n})")
    if scores.dim() != 4:
        raise ValueError("scores must be (batch, seqlen_q, heads_kv, num_blocks) (got shape "
                         f"{tuple(scores.shape)})")
    seqlen_q, blocks = scores.shape[1], scores.shape[-1]
    seqlen_k = blocks * block_size if seqlen_k is None else seqlen_k
    block = torch.arange(blocks, device=scores.device)
    last_key = torch.arange(seqlen_q, device=scores.device) + seqlen_k - seqlen_q
    own = (last_key // block_size).view(-1, 1)  # the block holding the query's last key
    if causal:
        visible = block * block_size <= last_key.view(-1, 1)
    else:
        visible = torch.ones(seqlen_q, blocks, dtype=torch.bool, device=scores.device)
    forced = (block < init_blocks) | ((block <= own) & (block > own - local_blocks))
    ranked = scores.float().masked_fill(forced[None, :, None], float("inf"))
    ranked = ranked.masked_fill(~visible[None, :, None], float("-inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True)
    picked = order.indices[..., :n].to(torch.int32)
    keep = order.values[..., :n] > float("-inf")
    picked = picked.masked_fill(~keep, -1)
    if picked.shape[-1] < n:
        picked = torch.nn.functional.pad(picked, (0, n - picked.shape[-1]), value=-1)
    return picked
