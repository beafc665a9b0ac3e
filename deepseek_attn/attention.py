"""Family 1: tiled causal softmax attention (SPEC §1).

Fake (meta) kernels for torch.compile, the autograd glue over the registered ops, and the
flash-attn 2 compatible functional API.
"""

import torch

from deepseek_attn import _C  # noqa: F401  (loads the op library)

__all__ = ["FlashAttnFunction", "flash_attn_func"]

_ops = torch.ops.deepseek_attn


def _check_shapes(q, k, v):
    """The shape rules of SPEC §1 that the real kernels check, for the fake ones (torch.compile
    traces report the same errors instead of producing wrong shapes)."""
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4,
                 lambda: "q, k, v must be (batch, seqlen, heads, head_dim)")
    torch._check(k.shape[:3] == v.shape[:3], lambda: "k and v must agree on (batch, seqlen_k, "
                 f"heads_kv) (got {tuple(k.shape)} and {tuple(v.shape)})")
    torch._check(q.shape[0] == k.shape[0],
                 lambda: f"q and k must have the same batch (got {q.shape[0]} and {k.shape[0]})")
    torch._check(q.shape[3] == k.shape[3], lambda: "q and k must have the same head_dim "
                 f"(got {q.shape[3]} and {k.shape[3]})")
    torch._check(k.shape[2] > 0 and q.shape[2] % k.shape[2] == 0, lambda: "heads_q must be a "
                 f"multiple of heads_kv (got {q.shape[2]} and {k.shape[2]})")


@torch.library.register_fake("deepseek_attn::flash_attn_fwd")
def _flash_attn_fwd_fake(q, k, v, softmax_scale, causal, window_left, window_right, softcap,
                         deterministic=False):
    _check_shapes(q, k, v)
    batch, seqlen_q, heads_q, _ = q.shape
    out = q.new_empty((batch, seqlen_q, heads_q, v.shape[-1]))
    lse = q.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("deepseek_attn::flash_attn_bwd")
def _flash_attn_bwd_fake(dout, q, k, v, out, lse, softmax_scale, causal, window_left,
                         window_right, softcap, deterministic):
    _check_shapes(q, k, v)
    torch._check(dout.shape == out.shape, lambda: "dout must have out's shape "
                 f"(got {tuple(dout.shape)} and {tuple(out.shape)})")
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# --- One autograd path: the op's registered autograd and FlashAttnFunction share both halves.

def _save_for_backward(ctx, inputs, output):
    """Setup context over the op's own arguments (q, k, v, scale, causal, left, right, softcap,
    deterministic)."""
    q, k, v, *args = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = tuple(args)  # register_autograd fills in defaulted arguments
    ctx.mark_non_differentiable(lse)


def _attention_grads(ctx, dout):
    """(dq, dk, dv) of SPEC §1 from the saved forward: the backward formula, once."""
    q, k, v, out, lse = ctx.saved_tensors
    return _ops.flash_attn_bwd(dout.contiguous(), q, k, v, out, lse, *ctx.args)


def _op_backward(ctx, dout, dlse):
    return (*_attention_grads(ctx, dout), *([None] * len(ctx.args)))


# The forward op itself is differentiable, so torch.ops.deepseek_attn.flash_attn_fwd can be used
# directly (and passes torch.library.opcheck's autograd checks).
torch.library.register_autograd("deepseek_attn::flash_attn_fwd", _op_backward,
                                setup_context=_save_for_backward)


class FlashAttnFunction(torch.autograd.Function):
    """Autograd over flash_attn_fwd / flash_attn_bwd; returns (out, softmax_lse). Arguments:
    (q, k, v, softmax_scale, causal, window_size, softcap, deterministic)."""

    @staticmethod
    def forward(q, k, v, softmax_scale, causal, window_size, softcap, deterministic):
        window_left, window_right = window_size
        return _ops.flash_attn_fwd(q, k, v, softmax_scale, causal, window_left, window_right,
                                   softcap, deterministic)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, softmax_scale, causal, window_size, softcap, deterministic = inputs
        _save_for_backward(ctx, (q, k, v, softmax_scale, causal, *window_size, softcap,
                                 deterministic), output)

    @staticmethod
    def backward(ctx, dout, dlse):
        return (*_attention_grads(ctx, dout), None, None, None, None, None)


def _check_window(window_size):
    if not (isinstance(window_size, (tuple, list)) and len(window_size) == 2):
        raise ValueError(f"window_size must be a pair (left, right) (got {window_size!r})")
    return int(window_size[0]), int(window_size[1])


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """Drop-in for flash-attn 2's ``flash_attn_func`` (SPEC §0-§1).

    q: (batch, seqlen_q, heads_q, head_dim); k: (batch, seqlen_k, heads_kv, head_dim);
    v: (batch, seqlen_k, heads_kv, head_dim_v), heads_q % heads_kv == 0 (GQA/MQA).
    causal is bottom-right aligned; window_size=(left, right) with -1 unbounded; softcap > 0
    applies c·tanh(s/c) to the scaled scores. Returns out (batch, seqlen_q, heads_q, head_dim_v),
    or (out, softmax_lse (batch, heads_q, seqlen_q) fp32, None) with return_attn_probs=True.
    deterministic=True makes the CUDA backward avoid float atomics (bitwise reproducible
    gradients, somewhat slower); the CPU backward is always deterministic.
    """
    if dropout_p != 0.0:
        raise NotImplementedError(
            f"dropout_p must be 0.0: attention dropout is not implemented (got {dropout_p})")
    if alibi_slopes is not None:
        raise NotImplementedError("alibi_slopes is not supported: pass None")
    window = _check_window(window_size)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    out, lse = FlashAttnFunction.apply(q, k, v, float(softmax_scale), bool(causal), window,
                                       float(softcap), bool(deterministic))
    if return_attn_probs:
        return out, lse, None
    return out
