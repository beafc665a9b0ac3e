"""Plain-PyTorch formulas of SPEC §2 (DeepSeek-V3 fine-grained FP8), readable first.

Quantisation rule for one group (a 1x128 slice of an activation row, or a 128x128 weight block):
    s = max(amax, 1e-4) / 448            (optionally rounded up to a power of two: "ue8m0")
    q = e4m3(clamp(x / s, -448, 448))    (round to nearest even)
amax propagates NaN: a group holding a NaN gets scale NaN and an all-NaN payload; a group
holding ±inf gets scale inf, NaN where the inf was and ±0 elsewhere. Partial edge groups behave
as if zero-padded (the padding never changes amax).
"""

import math

import torch

FP8_MAX = 448.0
AMAX_FLOOR = 1e-4


def round_scale_up_to_power_of_two(scale):
    """ue8m0: the smallest power of two >= scale (exact, through the binary exponent)."""
    mantissa, exponent = torch.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)
    rounded = torch.ldexp(torch.ones_like(scale), exponent)
    return torch.where(torch.isfinite(scale) & (scale > 0), rounded, scale)


def scale_from_amax(amax, ue8m0=False):
    scale = torch.clamp(amax.float(), min=AMAX_FLOOR) / FP8_MAX  # clamp keeps NaN
    return round_scale_up_to_power_of_two(scale) if ue8m0 else scale


def cast_to_e4m3(x):
    return torch.clamp(x, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def quantize_act_ref(x, group_size=128, ue8m0=False):
    """x (..., K) -> (e4m3 (..., K), fp32 scales (..., ceil(K / group_size)))."""
    k = x.shape[-1]
    groups = math.ceil(k / group_size)
    padded = torch.nn.functional.pad(x.float(), (0, groups * group_size - k))
    grouped = padded.unflatten(-1, (groups, group_size))
    scales = scale_from_amax(grouped.abs().amax(dim=-1), ue8m0)
    payload = cast_to_e4m3(grouped / scales.unsqueeze(-1)).flatten(-2)[..., :k].contiguous()
    return payload, scales


def quantize_weight_ref(w, block_size=128, ue8m0=False):
    """w (N, K) -> (e4m3 (N, K), fp32 scales (ceil(N / block), ceil(K / block)))."""
    n, k = w.shape
    blocks_n, blocks_k = math.ceil(n / block_size), math.ceil(k / block_size)
    padded = torch.nn.functional.pad(w.float(), (0, blocks_k * block_size - k,
                                                 0, blocks_n * block_size - n))
    blocks = padded.reshape(blocks_n, block_size, blocks_k, block_size)
    scales = scale_from_amax(blocks.abs().amax(dim=(1, 3)), ue8m0)
    payload = cast_to_e4m3(blocks / scales[:, None, :, None]).reshape(padded.shape)[:n, :k].contiguous()
    return payload, scales


def expand_scales(scales, rows, cols, block_rows, block_cols):
    """Block scales -> one scale per element of a (rows, cols) matrix."""
    full = scales.repeat_interleave(block_rows, dim=-2).repeat_interleave(block_cols, dim=-1)
    return full[..., :rows, :cols]


def dequantize_act_ref(payload, scales, group_size=128):
    k = payload.shape[-1]
    return payload.float() * scales.repeat_interleave(group_size, dim=-1)[..., :k]


def dequantize_weight_ref(payload, scales, block_size=128):
    n, k = payload.shape
    return payload.float() * expand_scales(scales, n, k, block_size, block_size)


def b_scale_rows(b, b_scales):
    """fp8_gemm's B operand carries 128x128 block scales or per-row 1x128 scales."""
    n = b.shape[0]
    return 1 if b_scales.shape[0] == n else 128


def fp8_gemm_ref(a, a_scales, b, b_scales, out_dtype=torch.bfloat16):
    """SPEC §2 "NT" block-scaled GEMM: C = A Bᵀ with every 128-wide K block promoted to fp32:
    C[m, n] = Σ_kb a_scales[m, kb] · b_scales[n // r, kb] · Σ_{k in kb} A[m, k] B[n, k],
    r = 128 for 128x128 block-scaled B (weights) or 1 for 1x128 row-scaled B (wgrad)."""
    m, k = a.shape
    n = b.shape[0]
    rows_per_scale = b_scale_rows(b, b_scales)
    out = torch.zeros(m, n, dtype=torch.float32, device=a.device)
    for kb in range(math.ceil(k / 128)):
        block = slice(kb * 128, min(k, (kb + 1) * 128))
        partial = a[:, block].float() @ b[:, block].float().T  # exact products, fp32 sums
        b_scale = b_scales[:, kb].repeat_interleave(rows_per_scale)[:n]
        out += partial * a_scales[:, kb : kb + 1] * b_scale[None, :]
    return out.to(out_dtype)
