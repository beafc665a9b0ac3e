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
from the LSE entry by entry (dQ per row, dK/dV through an inverse index; CPU so far). `v=None`
reads MLA's latent rows: values are the first `head_dim_v` columns of k (Hkv = 1, 576 / 512).
"""

import functools
import math

import torch

from deepseek_attn import core  # noqa: F401  (registers the core op's fake kernel)
from deepseek_attn.fp8 import quantize_act

__all__ = ["IndexerLogitsFunction", "SparseAttnFunction", "hadamard_rotate", "indexer_logits",
           "indexer_topk", "quantize_indexer_fp8", "sparse_attn"]

_ops = torch.ops.deepseek_attn


@torch.library.register_fake("deepseek_attn::sparse_attn_bwd")
def _sparse_attn_bwd_fake(dout, q, k, v, out, lse, indices, head_dim_v, softmax_scale):
    torch._check(indices.dim() == 4, lambda: "indices must be (batch, seqlen_q, heads_kv, n)")
    return (torch.empty_like(q), torch.empty_like(k),
            torch.empty_like(v) if v is not None else q.new_empty((0,)))


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
        if q.device.type != "cpu":
            raise NotImplementedError("sparse_attn's backward runs on CPU tensors only so far (no "
                                      "CUDA kernel yet, issue 15); the forward runs on CUDA")
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
        if q.device.type != "cpu":
            raise NotImplementedError("indexer_logits' backward runs on CPU tensors only so far "
                                      "(no CUDA kernel yet, issue 15); the forward runs on CUDA")
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
