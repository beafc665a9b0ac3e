"""Family 2a: fine-grained FP8 quantisation and block-scaled GEMM (SPEC §2).

Fake (meta) kernels for torch.compile and the functional API over the registered ops.
"""

import math

import torch

from deepseek_attn import _C  # noqa: F401  (loads the op library)

__all__ = ["quantize_act", "quantize_weight", "dequantize", "fp8_gemm"]

_ops = torch.ops.deepseek_attn


@torch.library.register_fake("deepseek_attn::quantize_act")
def _quantize_act_fake(x, group_size, ue8m0):
    scale_shape = (*x.shape[:-1], math.ceil(x.shape[-1] / group_size))
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty(scale_shape, dtype=torch.float32))


@torch.library.register_fake("deepseek_attn::quantize_weight")
def _quantize_weight_fake(w, block_size, ue8m0):
    rows, cols = w.shape
    return (w.new_empty(w.shape, dtype=torch.float8_e4m3fn),
            w.new_empty((math.ceil(rows / block_size), math.ceil(cols / block_size)),
                        dtype=torch.float32))


@torch.library.register_fake("deepseek_attn::fp8_gemm")
def _fp8_gemm_fake(a, a_scales, b, b_scales, out_dtype):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def _ue8m0(scale_fmt):
    if scale_fmt not in (None, "ue8m0"):
        raise ValueError(f"scale_fmt must be None or 'ue8m0' (got {scale_fmt!r})")
    return scale_fmt == "ue8m0"


def quantize_act(x, group_size=128, scale_fmt=None):
    """1 x group_size quantisation along the last dim (SPEC §2).

    Returns (e4m3 payload shaped like x, fp32 scales (..., ceil(K / group_size))). A last dim
    that is not a multiple of group_size behaves as zero-padded: the last group is shorter.
    scale_fmt="ue8m0" rounds every scale up to a power of two.
    """
    return _ops.quantize_act(x, group_size, _ue8m0(scale_fmt))


def quantize_weight(w, block_size=128, scale_fmt=None):
    """block_size x block_size quantisation of w (N, K) (SPEC §2).

    Returns (e4m3 payload (N, K), fp32 scales (ceil(N / block_size), ceil(K / block_size)));
    partial edge blocks behave as zero-padded.
    """
    return _ops.quantize_weight(w, block_size, _ue8m0(scale_fmt))


def dequantize(payload, scales, block_shape=(1, 128), out_dtype=torch.float32):
    """payload · scale for either layout: block_shape (1, g) for quantize_act's groups
    (any leading shape), (b, b) for quantize_weight's blocks."""
    block_rows, block_cols = block_shape
    expanded = scales.repeat_interleave(block_cols, dim=-1)[..., : payload.shape[-1]]
    if block_rows > 1:
        expanded = expanded.repeat_interleave(block_rows, dim=-2)[..., : payload.shape[-2], :]
    return (payload.float() * expanded).to(out_dtype)


def fp8_gemm(a, a_scales, b, b_scales, out_dtype=torch.bfloat16):
    """C = a @ b.T with SPEC §2 block scaling ("NT" layout), fp32 promotion every 128 of K.

    a (M, K) e4m3 with a_scales (M, ceil(K/128)) from quantize_act; b (N, K) e4m3 with either
    128x128 block scales (ceil(N/128), ceil(K/128)) from quantize_weight, or 1x128 row scales
    (N, ceil(K/128)) from quantize_act (the weight-gradient GEMM). Returns (M, N) in out_dtype.
    """
    return _ops.fp8_gemm(a, a_scales, b, b_scales, out_dtype)
