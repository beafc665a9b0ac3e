"""Fp8Linear: an nn.Linear whose products run in FP8 with DeepSeek-V3 fine-grained scaling."""

import math

import torch
from torch import nn

from deepseek_attn.fp8 import fp8_gemm, quantize_act, quantize_weight

__all__ = ["Fp8Linear", "Fp8LinearFunction"]

_HIGH_PRECISION = (torch.float32, torch.bfloat16, torch.float16)


class Fp8LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b with x quantised 1x128 and W 128x128 (SPEC §2).

    Backward (fp8_backward=True, the DeepSeek-V3 recipe): dgrad dX = dY W with dY quantised 1x128
    along N and the transposed weight blocks; wgrad dW = dYᵀ X with dYᵀ and Xᵀ quantised 1x128
    along the tokens. fp8_backward=False computes both in bf16 (fp32 accumulation).
    Inputs: (x, weight, bias, weight_fp8, weight_scales, scale_fmt, fp8_backward); weight_fp8 /
    weight_scales are quantize_weight(weight) and receive no gradient.
    """

    @staticmethod
    def forward(x, weight, bias, weight_fp8, weight_scales, scale_fmt, fp8_backward):
        x2d = x.reshape(-1, x.shape[-1])
        x_fp8, x_scales = quantize_act(x2d, 128, scale_fmt)
        out_dtype = x.dtype if x.dtype in _HIGH_PRECISION else torch.bfloat16
        y = fp8_gemm(x_fp8, x_scales, weight_fp8, weight_scales, out_dtype)
        if bias is not None:
            y = y + bias.to(out_dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, weight_fp8, weight_scales, scale_fmt, fp8_backward = inputs
        ctx.save_for_backward(x, weight, weight_fp8, weight_scales)
        ctx.has_bias = bias is not None
        ctx.scale_fmt, ctx.fp8_backward = scale_fmt, fp8_backward

    @staticmethod
    def backward(ctx, dy):
        x, weight, weight_fp8, weight_scales = ctx.saved_tensors
        x2d = x.reshape(-1, x.shape[-1])
        dy2d = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.fp8_backward:
            if ctx.needs_input_grad[0]:
                dy_fp8, dy_scales = quantize_act(dy2d, 128, ctx.scale_fmt)
                # The 128x128 blocks of W transpose exactly into those of Wᵀ.
                dx = fp8_gemm(dy_fp8, dy_scales, weight_fp8.t().contiguous(),
                              weight_scales.t().contiguous(), x.dtype)
            if ctx.needs_input_grad[1]:
                dyt_fp8, dyt_scales = quantize_act(dy2d.t(), 128, ctx.scale_fmt)
                xt_fp8, xt_scales = quantize_act(x2d.t(), 128, ctx.scale_fmt)
                dw = fp8_gemm(dyt_fp8, dyt_scales, xt_fp8, xt_scales, torch.float32)
        else:
            dy_bf16 = dy2d.to(torch.bfloat16)
            if ctx.needs_input_grad[0]:
                dx = dy_bf16 @ weight.to(torch.bfloat16)
            if ctx.needs_input_grad[1]:
                dw = dy_bf16.t() @ x2d.to(torch.bfloat16)
        if dx is not None:
            dx = dx.to(x.dtype).reshape(x.shape)
        if dw is not None:
            dw = dw.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2d.float().sum(0)
        return dx, dw, db, None, None, None, None


class Fp8Linear(nn.Module):
    """Drop-in nn.Linear computing y = x Wᵀ + b in FP8 (DeepSeek-V3 recipe, SPEC §2).

    Activations are quantised 1x128 on every call; the weight 128x128, cached until it changes
    (its version counter moves on every in-place update, e.g. optimizer.step()). Master weights
    stay in the module dtype. fp8_backward=False runs the backward products in bf16.
    Changing the weight through `.data` bypasses the version counter: call
    invalidate_weight_cache() after doing so.
    """

    def __init__(self, in_features, out_features, bias=False, scale_fmt=None, fp8_backward=True,
                 device=None, dtype=None):
        super().__init__()
        if scale_fmt not in (None, "ue8m0"):
            raise ValueError(f"scale_fmt must be None or 'ue8m0' (got {scale_fmt!r})")
        self.in_features, self.out_features = in_features, out_features
        self.scale_fmt, self.fp8_backward = scale_fmt, fp8_backward
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()
        self.invalidate_weight_cache()

    def reset_parameters(self):
        # nn.Linear's initialisation, so swapping layers keeps training dynamics.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear, scale_fmt=None, fp8_backward=True):
        """An Fp8Linear sharing `linear`'s parameters (optimizer state carries over)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     scale_fmt=scale_fmt, fp8_backward=fp8_backward, device="meta")
        module.weight = linear.weight
        module.bias = linear.bias
        module.invalidate_weight_cache()
        return module

    def invalidate_weight_cache(self):
        self._weight_cache_key = None
        self._weight_cache = None

    def quantized_weight(self):
        """(e4m3 payload, 128x128 scales) of the current weight, recomputed only on change."""
        weight = self.weight
        if torch.compiler.is_compiling():
            return quantize_weight(weight.detach(), 128, self.scale_fmt)
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype,
               tuple(weight.shape))
        if key != self._weight_cache_key:
            with torch.no_grad():
                self._weight_cache = quantize_weight(weight.detach(), 128, self.scale_fmt)
            self._weight_cache_key = key
        return self._weight_cache

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x.shape[-1] must be in_features={self.in_features} "
                             f"(got shape {tuple(x.shape)})")
        weight_fp8, weight_scales = self.quantized_weight()
        return Fp8LinearFunction.apply(x, self.weight, self.bias, weight_fp8, weight_scales,
                                       self.scale_fmt, self.fp8_backward)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scale_fmt={self.scale_fmt}, "
                f"fp8_backward={self.fp8_backward}")
