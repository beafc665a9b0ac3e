"""Family 3: DeepSeek Sparse Attention (SPEC §4) — token-sparse attention over index lists.

`sparse_attn` attends each query only to the keys its kv head's list names: `indices
(B, Sq, Hkv, K)` int32, -1 slots skipped, a key listed twice counted twice, rows with no valid
index giving 0 and lse -inf. The forward is the shared core over token lists (CPU and CUDA,
each gathered key row loaded once for all query heads of its group); the backward recomputes P
from the LSE entry by entry (dQ per row, dK/dV through an inverse index; CPU so far). `v=None`
reads MLA's latent rows: values are the first `head_dim_v` columns of k (Hkv = 1, 576 / 512).
"""

import torch

from deepseek_attn import core  # noqa: F401  (registers the core op's fake kernel)

__all__ = ["SparseAttnFunction", "sparse_attn"]

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
