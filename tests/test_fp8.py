"""FP8 quantisers, block-scaled GEMM and Fp8Linear against SPEC §2 (reference: reference/fp8.py)."""

import math

import pytest
import torch

import deepseek_attn
from deepseek_attn import dequantize, fp8_gemm, quantize_act, quantize_weight
from deepseek_attn.nn import Fp8Linear
from deepseek_attn.reference import (dequantize_act_ref, dequantize_weight_ref, fp8_gemm_ref,
                                     quantize_act_ref, quantize_weight_ref)

from deepseek_attn.testing import check_poison, poisoned

from conftest import device_params, run_python

_ops = torch.ops.deepseek_attn
QUANT_DEVICES = device_params("deepseek_attn::quantize_act")
GEMM_DEVICES = device_params("deepseek_attn::fp8_gemm")
HIGH_PRECISION = [torch.float32, torch.bfloat16, torch.float16]


def assert_same_fp8(payload, expected):
    """Bit-exact e4m3 payloads; NaN compared by position (its sign bit is not specified)."""
    assert payload.dtype == torch.float8_e4m3fn and payload.shape == expected.shape
    ours, ref = payload.float(), expected.float()
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)), "NaN positions differ"
    finite = ~torch.isnan(ref)
    assert torch.equal(payload.view(torch.uint8)[finite], expected.view(torch.uint8)[finite])


def assert_same_scales(scales, expected):
    assert scales.dtype == torch.float32 and scales.shape == expected.shape
    torch.testing.assert_close(scales, expected, atol=0, rtol=0, equal_nan=True)


def fp8_difference(ours, ref):
    """SPEC §6 FP8 rule: 1 - 2·Σ(a·r) / Σ(a² + r²) over finite entries."""
    a, r = ours.double(), ref.double()
    finite = torch.isfinite(a) & torch.isfinite(r)
    a, r = a[finite], r[finite]
    denominator = (a * a + r * r).sum()
    return 0.0 if denominator == 0 else (1 - 2 * (a * r).sum() / denominator).item()


def assert_fp8_close(ours, ref, bound=1e-3):
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)), "NaN positions differ"
    assert torch.equal(torch.isposinf(ours), torch.isposinf(ref)), "+inf positions differ"
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref)), "-inf positions differ"
    difference = fp8_difference(ours, ref)
    assert difference <= bound, f"FP8 difference {difference:.3e} > {bound}"


# ------------------------------------------------------------------------------- quantisers


@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32_scale", "ue8m0"])
@pytest.mark.parametrize("shape", [(1,), (127,), (128,), (129,), (3, 300), (2, 3, 1000),
                                   (5, 0), (0, 256)], ids=str)
@pytest.mark.parametrize("dtype", HIGH_PRECISION, ids=str)
@pytest.mark.parametrize("device", QUANT_DEVICES)
def test_quantize_act_is_bit_exact(device, dtype, shape, ue8m0):
    x = (torch.randn(shape) * torch.logspace(-3, 3, shape[-1] or 1)[: shape[-1]]).to(device, dtype)
    payload, scales = quantize_act(x, scale_fmt="ue8m0" if ue8m0 else None)
    ref_payload, ref_scales = quantize_act_ref(x.cpu(), 128, ue8m0)
    assert_same_fp8(payload.cpu(), ref_payload)
    assert_same_scales(scales.cpu(), ref_scales)
    if ue8m0 and scales.numel():
        mantissa, _ = torch.frexp(scales)
        assert torch.all(mantissa == 0.5), "ue8m0 scales must be powers of two"


@pytest.mark.parametrize("group_size", [16, 64, 256])
@pytest.mark.parametrize("device", QUANT_DEVICES)
def test_quantize_act_other_group_sizes(device, group_size):
    x = torch.randn(7, 333, device=device, dtype=torch.bfloat16)
    payload, scales = quantize_act(x, group_size)
    ref_payload, ref_scales = quantize_act_ref(x.cpu(), group_size)
    assert_same_fp8(payload.cpu(), ref_payload)
    assert_same_scales(scales.cpu(), ref_scales)


@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32_scale", "ue8m0"])
@pytest.mark.parametrize("shape", [(1, 1), (128, 128), (129, 300), (300, 129), (17, 1000)],
                         ids=str)
@pytest.mark.parametrize("dtype", HIGH_PRECISION, ids=str)
@pytest.mark.parametrize("device", QUANT_DEVICES)
def test_quantize_weight_is_bit_exact(device, dtype, shape, ue8m0):
    w = (torch.randn(shape) * 0.02).to(device, dtype)
    w[0, 0] = 3.0  # one block with a much larger amax than the others
    payload, scales = quantize_weight(w, scale_fmt="ue8m0" if ue8m0 else None)
    ref_payload, ref_scales = quantize_weight_ref(w.cpu(), 128, ue8m0)
    assert_same_fp8(payload.cpu(), ref_payload)
    assert_same_scales(scales.cpu(), ref_scales)


@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_poisoned_inputs_are_never_read_or_written_past(device):
    """The quantisers and the GEMM over views inside NaN-filled buffers give what they give on
    plain tensors, and leave the poison around their inputs untouched."""
    x = torch.randn(70, 300, device=device)
    w = torch.randn(200, 300, device=device) * 0.05
    x_view, w_view = poisoned(x), poisoned(w)
    for plain, view in ((quantize_act(x), quantize_act(x_view)),
                        (quantize_weight(w), quantize_weight(w_view))):
        assert_same_fp8(view[0].cpu(), plain[0].cpu())
        assert_same_scales(view[1].cpu(), plain[1].cpu())
    a, a_scales = quantize_act(x)
    b, b_scales = quantize_weight(w)
    views = [poisoned(t, contiguous=True) for t in (a, a_scales, b, b_scales)]  # as it requires
    expected = fp8_gemm(a, a_scales, b, b_scales, torch.float32)
    torch.testing.assert_close(fp8_gemm(*views, torch.float32), expected, atol=0, rtol=0)
    for view in (x_view, w_view, *views):
        check_poison(view)


@pytest.mark.parametrize("device", QUANT_DEVICES)
def test_round_trip_error_is_within_half_an_e4m3_step(device):
    x = torch.randn(64, 1000, device=device) * torch.logspace(-2, 2, 1000, device=device)
    payload, scales = quantize_act(x)
    error = (dequantize(payload, scales) - x).abs()
    # e4m3 keeps 3 mantissa bits: |x/s| <= 448 is off by at most half a step of 32, i.e. 16·s.
    bound = 16 * scales.repeat_interleave(128, dim=-1)[:, :1000]
    assert torch.all(error <= bound)
    w = torch.randn(300, 260, device=device)
    w_payload, w_scales = quantize_weight(w)
    w_error = (dequantize(w_payload, w_scales, (128, 128)) - w).abs()
    assert torch.all(w_error <= 16 * dequantize(torch.ones_like(w_payload), w_scales, (128, 128)))
    torch.testing.assert_close(dequantize(w_payload, w_scales, (128, 128)).cpu(),
                               dequantize_weight_ref(w_payload.cpu(), w_scales.cpu()))
    torch.testing.assert_close(dequantize(payload, scales).cpu(),
                               dequantize_act_ref(payload.cpu(), scales.cpu()))


@pytest.mark.parametrize("device", QUANT_DEVICES)
def test_saturation_zero_inf_and_nan(device):
    row = torch.zeros(4, 256, device=device)
    row[0, :128] = 1e30           # huge but finite: the scale absorbs it
    row[0, 130] = 3e-6            # tiny values under the 1e-4 amax floor
    row[1, 5] = float("inf")      # group 0 of row 1: scale inf, NaN where the inf was, 0 elsewhere
    row[1, 6] = 2.0
    row[2, 200] = float("nan")    # group 1 of row 2: all NaN
    row[2, 3] = -7.0
    payload, scales = quantize_act(row)
    ref_payload, ref_scales = quantize_act_ref(row.cpu())
    assert_same_fp8(payload.cpu(), ref_payload)
    assert_same_scales(scales.cpu(), ref_scales)
    assert scales[3, 0] == scales[3, 1] == torch.tensor(1e-4) / 448  # all-zero groups: the floor
    assert torch.all(payload[3].float() == 0)
    assert torch.isinf(scales[1, 0]) and torch.isnan(payload[1, 5].float())
    assert payload[1, 6].float() == 0
    assert torch.isnan(scales[2, 1]) and torch.isnan(payload[2, 128:].float()).all()
    assert payload[2, 3].float() == -448  # amax element lands exactly on the e4m3 maximum
    finite = payload[0].float()
    assert torch.isfinite(finite).all() and finite.abs().max() == 448


def e4m3_rounding_boundaries():
    """Every finite e4m3 magnitude, the midpoints between neighbours (where round-to-nearest-even
    decides), the fp32 values just either side of each midpoint, and the same negated."""
    values = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    midpoints = (values[:-1] + values[1:]) / 2
    around = torch.cat([values, midpoints, torch.nextafter(midpoints, values[1:]),
                        torch.nextafter(midpoints, values[:-1])])
    return torch.cat([around, -around])


@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32_scale", "ue8m0"])
@pytest.mark.parametrize("device", QUANT_DEVICES)
def test_quantizers_round_every_e4m3_boundary_like_the_reference(device, ue8m0):
    """With 448 in each group the scale is exactly 1, so the payload is e4m3(x) itself."""
    boundaries = e4m3_rounding_boundaries()
    rows = math.ceil(boundaries.numel() / 127)
    x = torch.zeros(rows * 127)
    x[: boundaries.numel()] = boundaries
    x = torch.cat([torch.full((rows, 1), 448.0), x.reshape(rows, 127)], dim=1).to(device)
    payload, scales = quantize_act(x, scale_fmt="ue8m0" if ue8m0 else None)
    assert torch.all(scales == 1)
    assert_same_fp8(payload.cpu(), quantize_act_ref(x.cpu(), 128, ue8m0)[0])
    assert_same_fp8(payload.cpu(), x.cpu().to(torch.float8_e4m3fn))
    w_payload, w_scales = quantize_weight(x, scale_fmt="ue8m0" if ue8m0 else None)
    assert torch.all(w_scales == 1)
    assert_same_fp8(w_payload.cpu(), payload.cpu())


# ------------------------------------------------------------------------------- GEMM

GEMM_SHAPES = [(1, 128, 128), (17, 257, 384), (128, 2112, 7168), (64, 576, 7168), (5, 33, 200)]


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=str)
@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_fp8_gemm_matches_dequantised_reference(device, mnk, out_dtype):
    m, n, k = mnk
    a_fp8, a_scales = quantize_act(torch.randn(m, k, device=device))
    b_fp8, b_scales = quantize_weight(torch.randn(n, k, device=device) * 0.05)
    out = fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, out_dtype)
    assert out.shape == (m, n) and out.dtype == out_dtype
    reference = fp8_gemm_ref(a_fp8.cpu(), a_scales.cpu(), b_fp8.cpu(), b_scales.cpu(),
                             torch.float32)
    assert_fp8_close(out.cpu().float(), reference)
    if out_dtype == torch.float32:  # the ops differ only by fp32 rounding and summation order
        torch.testing.assert_close(out.cpu(), reference, atol=1e-3 * reference.abs().max().item(),
                                   rtol=1e-4)


# M, N, K off every tile size (1, 16, 64, 128) and M past the CPU path's 512-row chunk.
ODD_GEMM_SHAPES = [(1, 1, 1), (1, 7, 129), (2, 5, 17), (3, 130, 257), (65, 200, 300),
                   (129, 63, 1000), (515, 70, 130)]


def odd_gemm_operands(mnk, row_scaled_b, device="cpu"):
    m, n, k = mnk
    a_fp8, a_scales = quantize_act(torch.randn(m, k, device=device))
    b = torch.randn(n, k, device=device) * 0.05
    b_fp8, b_scales = quantize_act(b) if row_scaled_b else quantize_weight(b)
    return a_fp8, a_scales, b_fp8, b_scales


def assert_matches_fp32_reference(out, operands):
    """Exact products summed in fp32: only the summation order and rounding may differ."""
    reference = fp8_gemm_ref(*(t.cpu() for t in operands), torch.float32)
    torch.testing.assert_close(out.cpu(), reference, rtol=1e-5,
                               atol=1e-5 * reference.abs().max().item())


@pytest.mark.parametrize("row_scaled_b", [False, True], ids=["block_b", "row_b"])
@pytest.mark.parametrize("mnk", ODD_GEMM_SHAPES, ids=str)
@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_fp8_gemm_odd_shapes_match_reference(device, mnk, row_scaled_b):
    operands = odd_gemm_operands(mnk, row_scaled_b, device)
    assert_matches_fp32_reference(fp8_gemm(*operands, torch.float32), operands)
    bf16 = fp8_gemm(*operands, torch.bfloat16)
    torch.testing.assert_close(bf16, fp8_gemm(*operands, torch.float32).bfloat16(), atol=0, rtol=0)


@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_fp8_gemm_reads_every_e4m3_code_exactly(device):
    """Each finite code (subnormals, ±0, ±448) times 1 in both operand roles is the code's value
    exactly, so any widening mistake shows, however small the value; a NaN code makes its row
    (or column) NaN under finite scales."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(device)
    finite = codes[~torch.isnan(codes.float())]
    k = finite.numel()
    identity = torch.eye(k, device=device).to(torch.float8_e4m3fn)
    ones = torch.ones(k, 2, device=device)
    as_a = fp8_gemm(finite[None, :], ones[:1], identity, ones, torch.float32)
    as_b = fp8_gemm(identity, ones, finite[None, :].repeat(2, 1), ones[:1], torch.float32)
    assert torch.equal(as_a[0], finite.float()) and torch.equal(as_b[:, 1], finite.float())
    for nan in codes[torch.isnan(codes.float())]:
        with_nan = finite.clone()
        with_nan[5] = nan
        assert torch.isnan(fp8_gemm(with_nan[None, :], ones[:1], identity, ones,
                                    torch.float32)).all()
        assert torch.isnan(fp8_gemm(identity, ones, with_nan[None, :], ones[:1],
                                    torch.float32)).all()


def cpu_has_native_bf16():
    with open("/proc/cpuinfo") as cpuinfo:
        flags = cpuinfo.read()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def test_cpu_fp8_gemm_bf16_tiles_and_blas_fallback_both_match_reference(tmp_path):
    """DEEPSEEK_ATTN_CPU_GEMM=blas forces the dequantised fp32 BLAS path; the default takes bf16
    brgemm tiles where the CPU has native bf16. Both must match the reference, NaN and inf too."""
    cases = [odd_gemm_operands(mnk, row_scaled_b) for mnk in ODD_GEMM_SHAPES
             for row_scaled_b in (False, True)]
    a_fp8, a_scales, b_fp8, b_scales = odd_gemm_operands((4, 130, 256), False)
    a_fp8[1, 3] = float("nan")
    b_scales[1, 0] = float("inf")
    cases.append((a_fp8, a_scales, b_fp8, b_scales))
    torch.save(cases, tmp_path / "cases.pt")
    code = """
        import sys, torch, deepseek_attn
        cases = torch.load(sys.argv[1] + "/cases.pt")
        outputs = [deepseek_attn.fp8_gemm(*case, torch.float32) for case in cases]
        torch.save(outputs, sys.argv[1] + "/" + sys.argv[2] + ".pt")
    """
    outputs = {}
    for mode in ("blas", "auto"):
        run_python(code, {"DEEPSEEK_ATTN_CPU_GEMM": mode}, args=[str(tmp_path), mode])
        outputs[mode] = torch.load(tmp_path / f"{mode}.pt")
    for case, blas, auto in zip(cases, outputs["blas"], outputs["auto"]):
        reference = fp8_gemm_ref(*case, torch.float32)
        if torch.isfinite(reference).all():
            assert_matches_fp32_reference(blas, case)
            assert_matches_fp32_reference(auto, case)
        else:
            assert_fp8_close(blas, reference)
            assert_fp8_close(auto, reference)
    if cpu_has_native_bf16():  # then the two settings run different kernels: bits differ
        assert any(not torch.equal(blas, auto)
                   for blas, auto in zip(outputs["blas"], outputs["auto"]))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the wgmma/TMA GEMM runs on sm90 only")
@pytest.mark.parametrize("row_scaled_b", [False, True], ids=["block_b", "row_b"])
@pytest.mark.parametrize("mnk", GEMM_SHAPES + [(300, 130, 1000)], ids=str)
def test_hopper_fp8_gemm_matches_the_mma_sync_kernel(mnk, row_scaled_b, sm80_kernels_only):
    m, n, k = mnk
    a_fp8, a_scales = quantize_act(torch.randn(m, k, device="cuda"))
    b = torch.randn(n, k, device="cuda") * 0.05
    b_fp8, b_scales = quantize_act(b) if row_scaled_b else quantize_weight(b)
    hopper = fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    with sm80_kernels_only():
        mma_sync = fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    scale = mma_sync.abs().max().item()
    torch.testing.assert_close(hopper, mma_sync, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_fp8_gemm_with_row_scaled_b_for_weight_gradients(device):
    dy, x = torch.randn(300, 96, device=device), torch.randn(300, 200, device=device)
    dyt_fp8, dyt_scales = quantize_act(dy.t())
    xt_fp8, xt_scales = quantize_act(x.t())
    assert xt_scales.shape == (200, 3)
    dw = fp8_gemm(dyt_fp8, dyt_scales, xt_fp8, xt_scales, torch.float32)
    reference = fp8_gemm_ref(dyt_fp8.cpu(), dyt_scales.cpu(), xt_fp8.cpu(), xt_scales.cpu(),
                             torch.float32)
    assert_fp8_close(dw.cpu(), reference)
    assert fp8_difference(dw.cpu(), (dy.t() @ x).cpu()) < 5e-3  # and close to the exact product


@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_fp8_gemm_propagates_nan_and_inf_like_the_reference(device):
    a = torch.randn(4, 256, device=device)
    a[1, 3] = float("nan")
    a_fp8, a_scales = quantize_act(a)
    b_fp8, b_scales = quantize_weight(torch.randn(130, 256, device=device))
    b_scales[1, 0] = float("inf")  # rows 128.. of B scaled by inf in the first K block
    out = fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    reference = fp8_gemm_ref(a_fp8.cpu(), a_scales.cpu(), b_fp8.cpu(), b_scales.cpu(),
                             torch.float32)
    assert_fp8_close(out.cpu(), reference)
    assert torch.isnan(out[1]).all()


def test_fp8_gemm_zero_sized_problems():
    a_fp8, a_scales = quantize_act(torch.randn(0, 256))
    b_fp8, b_scales = quantize_weight(torch.randn(8, 256))
    assert fp8_gemm(a_fp8, a_scales, b_fp8, b_scales).shape == (0, 8)
    a_fp8, a_scales = quantize_act(torch.randn(3, 0))
    b_fp8, b_scales = quantize_weight(torch.randn(8, 0))
    assert torch.equal(fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, torch.float32),
                       torch.zeros(3, 8))


# ------------------------------------------------------------------------------- registry


# opcheck's test_schema compares tensors with arithmetic that float8 lacks ("mul not implemented
# for Float8_e4m3fn"); the other checks run, and input immutability is asserted bitwise below.
FP8_OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck_without_mutation(op, args):
    snapshot = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    torch.library.opcheck(op, args, test_utils=FP8_OPCHECK_UTILS)
    op(*args)
    after = [a for a in args if isinstance(a, torch.Tensor)]
    for before, now in zip(snapshot, after):
        assert torch.equal(before.view(torch.uint8) if before.element_size() == 1 else before,
                           now.view(torch.uint8) if now.element_size() == 1 else now)


@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_opcheck_fp8_ops(device):
    x = torch.randn(3, 5, 200, device=device, dtype=torch.bfloat16)
    _opcheck_without_mutation(_ops.quantize_act.default, (x, 128, False))
    _opcheck_without_mutation(_ops.quantize_act.default, (x, 64, True))
    w = torch.randn(130, 200, device=device)
    _opcheck_without_mutation(_ops.quantize_weight.default, (w, 128, False))
    a_fp8, a_scales = quantize_act(x.reshape(15, 200))
    b_fp8, b_scales = quantize_weight(w)
    _opcheck_without_mutation(_ops.fp8_gemm.default,
                              (a_fp8, a_scales, b_fp8, b_scales, torch.bfloat16))


@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_torch_compile_fullgraph_fp8_linear_training_step(device):
    torch._dynamo.reset()
    layer = Fp8Linear(256, 160, bias=True, device=device)
    x = torch.randn(4, 9, 256, device=device, requires_grad=True)

    def loss_fn(x):
        return (layer(x).float() ** 2).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    grads = torch.autograd.grad(loss, (x, layer.weight, layer.bias))
    expected_loss = loss_fn(x)
    expected = torch.autograd.grad(expected_loss, (x, layer.weight, layer.bias))
    torch.testing.assert_close(loss, expected_loss)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------- Fp8Linear

# FP8 keeps 3 mantissa bits (relative step 2^-3 at worst, ~2^-5 on average): one quantised
# product has a cosine-style difference of a few 1e-4 against bf16; gradients pass through two
# quantised GEMMs, so their bound is looser.
FORWARD_BOUND, GRADIENT_BOUND = 2e-3, 5e-3


@pytest.mark.parametrize("fp8_backward", [True, False], ids=["fp8_bwd", "bf16_bwd"])
@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_fp8_linear_matches_bf16_linear(device, fp8_backward):
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 200, bias=True, device=device, dtype=torch.bfloat16)
    fp8 = Fp8Linear.from_linear(linear, fp8_backward=fp8_backward)
    assert fp8.weight is linear.weight
    x = torch.randn(3, 70, 384, device=device, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(3, 70, 200, device=device, dtype=torch.bfloat16)
    out = fp8(x)
    grads = torch.autograd.grad(out, (x, fp8.weight, fp8.bias), dy)
    expected = linear(x)
    expected_grads = torch.autograd.grad(expected, (x, linear.weight, linear.bias), dy)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert fp8_difference(out, expected) < FORWARD_BOUND
    for name, got, want in zip(("dx", "dw", "db"), grads, expected_grads):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert fp8_difference(got, want) < GRADIENT_BOUND, name


@pytest.mark.parametrize("device", GEMM_DEVICES)
def test_fp8_linear_trains_like_bf16(device):
    def train(make_layer):
        torch.manual_seed(1)
        teacher = torch.randn(64, 256, device=device) / 16
        model = make_layer()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for step in range(60):
            x = torch.randn(128, 256, device=device)
            loss = ((model(x).float() - x @ teacher.T) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    make = lambda: torch.nn.Linear(256, 64, device=device)
    torch.manual_seed(2)
    fp8_losses = train(lambda: Fp8Linear.from_linear(make()))
    torch.manual_seed(2)
    reference_losses = train(make)
    assert fp8_losses[-1] < 0.02 * fp8_losses[0], fp8_losses
    assert fp8_losses[-1] < 1.5 * reference_losses[-1] + 1e-3, (fp8_losses, reference_losses)


def test_fp8_linear_weight_cache_follows_updates():
    layer = Fp8Linear(128, 128)
    first = layer.quantized_weight()
    assert layer.quantized_weight() is first  # cached
    with torch.no_grad():
        layer.weight.mul_(2)
    second = layer.quantized_weight()
    assert second is not first
    torch.testing.assert_close(second[1], first[1] * 2)
    layer.weight.data.mul_(2)  # bypasses the version counter: documented, needs invalidation
    layer.invalidate_weight_cache()
    torch.testing.assert_close(layer.quantized_weight()[1], first[1] * 4)


def test_fp8_linear_module_surface():
    layer = Fp8Linear(256, 64, bias=True, scale_fmt="ue8m0", dtype=torch.bfloat16)
    assert "scale_fmt=ue8m0" in repr(layer) and layer.weight.dtype == torch.bfloat16
    assert set(layer.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must be in_features=256 \(got shape \(2, 100\)\)"):
        layer(torch.randn(2, 100, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"scale_fmt must be None or 'ue8m0' \(got 'e8m0'\)"):
        Fp8Linear(256, 64, scale_fmt="e8m0")


# ------------------------------------------------------------------------------- bad input


def _gemm_operands():
    a_fp8, a_scales = quantize_act(torch.randn(4, 256))
    b_fp8, b_scales = quantize_weight(torch.randn(130, 256))
    return dict(a=a_fp8, a_scales=a_scales, b=b_fp8, b_scales=b_scales)


@pytest.mark.parametrize("change,error,message", [
    (dict(a=torch.randn(4, 256)), TypeError, r"a must have dtype Float8_e4m3fn \(got Float\)"),
    (dict(b=torch.randn(130, 256).bfloat16()), TypeError,
     r"b must have dtype Float8_e4m3fn \(got BFloat16\)"),
    (dict(a_scales=torch.ones(4, 2, dtype=torch.float64)), TypeError,
     r"a_scales must have dtype Float \(got Double\)"),
    (dict(a_scales=torch.ones(4, 3)), ValueError,
     r"a_scales must have shape \[4, 2\] \(M, ceil\(K / 128\)\) \(got \[4, 3\]\)"),
    (dict(b_scales=torch.ones(3, 2)), ValueError,
     r"b_scales must have shape \[2, 2\] \(128x128 blocks\) or \[130, 2\] \(1x128 rows\) \(got \[3, 2\]\)"),
    (dict(b=torch.zeros(130, 200).to(torch.float8_e4m3fn)), ValueError,
     r"b.size\(1\) \(K, as in a\) must be 256 \(got 200"),
    (dict(a=torch.zeros(256, 4).to(torch.float8_e4m3fn).t()), RuntimeError,
     r"a must be contiguous \(row-major \(M, K\)\)"),
    (dict(a=torch.zeros(2, 4, 256).to(torch.float8_e4m3fn)), ValueError,
     r"a must have 2 dimensions \(M, K\)"),
], ids=["a_dtype", "b_dtype", "scale_dtype", "a_scale_shape", "b_scale_shape", "k_mismatch",
        "non_contiguous", "rank"])
def test_fp8_gemm_rejects_bad_input(change, error, message):
    operands = _gemm_operands()
    operands.update(change)
    with pytest.raises(error, match=message):
        fp8_gemm(**operands)


def test_fp8_gemm_rejects_bad_out_dtype():
    with pytest.raises(TypeError, match=r"out_dtype must be bfloat16, float16 or float32 \(got Int\)"):
        fp8_gemm(**_gemm_operands(), out_dtype=torch.int32)


@pytest.mark.parametrize("call,error,message", [
    (lambda: quantize_act(torch.ones(4, 128, dtype=torch.int32)), TypeError,
     r"x must have dtype float32, bfloat16 or float16 \(got Int\)"),
    (lambda: quantize_act(torch.ones(4, 128), group_size=100), ValueError,
     r"group_size must be a positive multiple of 16 up to 1024 \(got 100\)"),
    (lambda: quantize_act(torch.tensor(1.0)), ValueError, r"x must have at least 1 dimension"),
    (lambda: quantize_act(torch.ones(4, 128), scale_fmt="e4m3"), ValueError,
     r"scale_fmt must be None or 'ue8m0'"),
    (lambda: quantize_weight(torch.ones(2, 4, 128)), ValueError, r"w must have 2 dimensions \(N, K\)"),
    (lambda: quantize_weight(torch.ones(4, 128, dtype=torch.float64)), TypeError,
     r"w must have dtype float32, bfloat16 or float16 \(got Double\)"),
    (lambda: quantize_weight(torch.ones(4, 128), block_size=0), ValueError,
     r"block_size must be a positive multiple of 16"),
], ids=["act_dtype", "group_size", "act_rank", "scale_fmt", "weight_rank", "weight_dtype",
        "block_size"])
def test_quantizers_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_quantize_act_accepts_strided_input():
    x = torch.randn(300, 64).t()  # (64, 300), not contiguous
    payload, scales = quantize_act(x)
    ref_payload, ref_scales = quantize_act_ref(x)
    assert_same_fp8(payload, ref_payload)
    assert_same_scales(scales, ref_scales)
    assert math.isclose(scales.shape[-1], 3)
