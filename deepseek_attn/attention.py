"""Family 1: tiled causal softmax attention (SPEC §1).

Fake (meta) kernels for torch.compile, the autograd glue over the registered ops, and the
flash-attn 2 compatible functional API.
"""

import torch

from deepseek_attn import _C  # noqa: F401  (loads the op library)

__all__ = ["FlashAttnFunction", "flash_attn_func"]

_ops = torch.ops.deepseek_attn


@torch.library.register_fake("deepseek_attn::flash_attn_fwd")
def _flash_attn_fwd_fake(q, k, v, softmax_scale, causal, window_left, window_right, softcap):
    batch, seqlen_q, heads_q, _ = q.shape
    out = q.new_empty((batch, seqlen_q, heads_q, v.shape[-1]))
    lse = q.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("deepseek_attn::flash_attn_bwd")
def _flash_attn_bwd_fake(dout, q, k, v, out, lse, softmax_scale, causal, window_left,
                         window_right, softcap, deterministic):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, softmax_scale, causal, window_left, window_right, softcap = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (softmax_scale, causal, window_left, window_right, softcap)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _ops.flash_attn_bwd(dout.contiguous(), q, k, v, out, lse, *ctx.args, False)
    return dq, dk, dv, None, None, None, None, None


# The forward op itself is differentiable, so torch.ops.deepseek_attn.flash_attn_fwd can be used
# directly (and passes torch.library.opcheck's autograd checks).
torch.library.register_autograd("deepseek_attn::flash_attn_fwd", _backward,
                                setup_context=_setup_context)


class FlashAttnFunction(torch.autograd.Function):
    """Autograd over flash_attn_fwd / flash_attn_bwd; returns (out, softmax_lse)."""

    @staticmethod
    def forward(q, k, v, softmax_scale, causal, window_size, softcap, deterministic):
        window_left, window_right = window_size
        return _ops.flash_attn_fwd(q, k, v, softmax_scale, causal, window_left, window_right,
                                   softcap)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, softmax_scale, causal, window_size, softcap, deterministic = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (softmax_scale, causal, window_size[0], window_size[1], softcap)
        ctx.deterministic = deterministic
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _ops.flash_attn_bwd(dout.contiguous(), q, k, v, out, lse, *ctx.args,
                                         ctx.deterministic)
        return dq, dk, dv, None, None, None, None, None


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
