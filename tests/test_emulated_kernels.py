"""The CUDA kernels executed on the CPU emulator (csrc/emulation/), every check on, against the
same references and SPEC §6 tolerances as the CUDA tests. The kernels, launch code (grid sizes,
split-KV heuristic, shared-memory sizes) and torch-facing preparation are the real ones: only the
device is emulated. `pytest -k emulated` runs this file with the layout and mutation tests.
"""

import os

import pytest
import torch

from deepseek_attn.reference import fp8_gemm_ref, quantize_act_ref, quantize_weight_ref
from deepseek_attn.testing import assert_spec6_close, check_poison, poisoned

from conftest import CUDA_HEAD_DIMS
from test_attention import CASES, HOPPER_CASES, Case, reference_pair
from test_fp8 import assert_fp8_close, assert_same_fp8, assert_same_scales

A100_SMS = 108


def _build(arch):
    from emulation.build import build_module

    try:
        return build_module(arch)
    except (OSError, RuntimeError) as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"the emulated extension could not be built here: {error}")


@pytest.fixture(scope="session")
def sm80():
    return _build(80)


@pytest.fixture(scope="session")
def sm89():
    return _build(89)


@pytest.fixture(scope="session")
def sm90():
    return _build(90)


@pytest.fixture(params=[0, 7], ids=["in_order", "shuffled"])
def schedule(request, sm80, sm89, sm90):
    """Runs a test with the threads in index order, then in a shuffled order between barriers."""
    for module in (sm80, sm89, sm90):
        module.set_schedule_seed(request.param)
    yield request.param
    for module in (sm80, sm89, sm90):
        module.set_schedule_seed(0)


def emulated_forward(module, case, q, k, v, sm_count=A100_SMS):
    window_left, window_right = case.window
    return module.flash_attn_fwd(q, k, v, case.head_dim ** -0.5, case.causal, window_left,
                                 window_right, case.softcap, sm_count)


def emulated_backward(module, case, dout, q, k, v, out, lse, deterministic):
    window_left, window_right = case.window
    return module.flash_attn_bwd(dout, q, k, v, out, lse, case.head_dim ** -0.5, case.causal,
                                 window_left, window_right, case.softcap, deterministic)


def check_forward_and_backward(module, case, dtype, deterministic):
    """The emulated forward, then backward, against the SPEC §6 rules (as the CUDA tests do)."""
    q, k, v = case.inputs(dtype, "cpu", requires_grad=True)
    out, lse = emulated_forward(module, case, q.detach(), k.detach(), v.detach())
    (out_pt, _), (out_64, lse_64), inputs_64 = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    torch.testing.assert_close(lse.double(), lse_64.double(), atol=1e-3, rtol=1e-4)
    dout = torch.randn_like(out)
    grads_pt = torch.autograd.grad(out_pt, (q, k, v), dout)
    grads_64 = torch.autograd.grad(out_64, inputs_64, dout.double())
    grads = emulated_backward(module, case, dout, q.detach(), k.detach(), v.detach(), out, lse,
                              deterministic)
    for name, ours, same, exact in zip(("dq", "dk", "dv"), grads, grads_pt, grads_64):
        assert_spec6_close(f"{name} (deterministic={deterministic})", ours, same, exact, factor=3)


# The CUDA tests' cases minus the two longest (minutes under the emulator), plus tails for the
# 32-key tiles of the wide heads and every head-dim instantiation in both dtypes below.
EMULATED_CASES = [case for case in CASES if case.seqlen_q * case.seqlen_k < 1_000_000] + [
    Case(1, 700, heads_q=4, heads_kv=1, head_dim=256),        # split-KV with 32-key tiles
    Case(45, 77, heads_q=3, heads_kv=1, head_dim=96, window=(20, 3)),
]


@pytest.mark.parametrize("case", EMULATED_CASES, ids=repr)
def test_emulated_sm80_attention_forward_and_backward(sm80, case):
    for deterministic in (False, True):  # the atomic dQ and the deterministic dQ kernel
        check_forward_and_backward(sm80, case, torch.bfloat16, deterministic)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dims", CUDA_HEAD_DIMS, ids=lambda d: f"d{d[0]}x{d[1]}")
def test_emulated_sm80_every_instantiation(sm80, head_dims, dtype, schedule):
    case = Case(75, 90, heads_q=4, heads_kv=2, head_dim=head_dims[0], head_dim_v=head_dims[1],
                window=(50, 3), causal=False, softcap=2.0)
    check_forward_and_backward(sm80, case, dtype, deterministic=schedule == 0)


@pytest.mark.parametrize("case", [Case(1, 3000, heads_q=8, heads_kv=2, head_dim=128),
                                  Case(3, 500, batch=2, heads_q=2, heads_kv=1, head_dim=192,
                                       head_dim_v=128)], ids=repr)
def test_emulated_sm80_split_kv_matches_one_split(sm80, case):
    q, k, v = case.inputs(torch.float16, "cpu")
    assert sm80.num_splits(q, k, v, case.causal, A100_SMS) > 1, "the case must split on an A100"
    assert sm80.num_splits(q, k, v, case.causal, 1) == 1
    split_out, split_lse = emulated_forward(sm80, case, q, k, v, A100_SMS)
    whole_out, whole_lse = emulated_forward(sm80, case, q, k, v, sm_count=1)
    torch.testing.assert_close(split_out, whole_out, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(split_lse, whole_lse, atol=1e-5, rtol=1e-5)


def test_emulated_sm80_deterministic_backward_is_bitwise_reproducible(sm80, schedule):
    case = Case(140, heads_q=4, heads_kv=2, head_dim=64)
    q, k, v = case.inputs(torch.bfloat16, "cpu")
    out, lse = emulated_forward(sm80, case, q, k, v)
    dout = torch.randn_like(out)
    first = emulated_backward(sm80, case, dout, q, k, v, out, lse, True)
    second = emulated_backward(sm80, case, dout, q, k, v, out, lse, True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def check_packed_qkv(forward, case, dtype):
    """q, k, v as views of one packed (B, S, 3, H, D) buffer: strided rows, one allocation."""
    packed = torch.randn(case.batch, case.seqlen_q, 3, case.heads_q, case.head_dim, dtype=dtype)
    q, k, v = packed.unbind(2)
    out, _ = forward(case, q, k, v)
    (out_pt, _), (out_64, _), _ = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)


def test_emulated_sm80_strided_and_packed_inputs(sm80):
    check_packed_qkv(lambda *inputs: emulated_forward(sm80, *inputs),
                     Case(97, batch=2, heads_q=4, head_dim=64), torch.bfloat16)


@pytest.mark.parametrize("arch", [80, 90], ids=["sm80", "sm90"])
def test_emulated_poisoned_inputs(sm80, sm90, arch):
    """q, k, v (and dout) as aligned views inside NaN-filled buffers, which the kernels read in
    place: a read past a tile's rows brings NaN into the results."""
    module = sm80 if arch == 80 else sm90
    case = Case(77, 150, heads_q=4, heads_kv=2, head_dim=64 if arch == 80 else 128)
    q, k, v = case.inputs(torch.bfloat16, "cpu")
    views = [poisoned(t) for t in (q, k, v)]
    out, lse = emulated_forward(module, case, *views, sm_count=1)
    assert module.last_kernel_name().startswith("core_fwd_kernel<" if arch == 80
                                                else "flash_fwd_hopper_kernel<")
    (out_pt, _), (out_64, _), _ = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    if arch == 80:
        dout = poisoned(torch.randn_like(out))
        grads = emulated_backward(module, case, dout, *views, out, lse, deterministic=False)
        assert not any(g.isnan().any() for g in grads)
        views.append(dout)
    for view in views:
        check_poison(view)


def test_emulated_attention_rejects_batches_past_the_grid_limit(sm80):
    q = torch.zeros(65536, 1, 1, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"q\.shape\[0\] \(batch\) must be at most 65535 on CUDA "
                                         r"\(got 65536\)"):
        sm80.flash_attn_fwd(q, q, q, 0.125, True, -1, 0, 0.0, 108)


def test_emulated_attention_rejects_fp32(sm80):
    q, k, v = Case(8).inputs(torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=r"takes bfloat16 or float16 \(got Float\)"):
        emulated_forward(sm80, Case(8), q, k, v)


# ------------------------------------------------------------------------------- FP8


@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32_scale", "ue8m0"])
@pytest.mark.parametrize("shape", [(1,), (129,), (3, 300), (2, 3, 130), (4, 1024)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_emulated_quantize_act_is_bit_exact(sm80, dtype, shape, ue8m0):
    x = (torch.randn(shape) * torch.logspace(-3, 3, shape[-1])).to(dtype)
    payload, scales = sm80.quantize_act(x, 128, ue8m0)
    ref_payload, ref_scales = quantize_act_ref(x, 128, ue8m0)
    assert_same_fp8(payload, ref_payload)
    assert_same_scales(scales, ref_scales)


@pytest.mark.parametrize("group_size", [16, 64, 256, 1024])
def test_emulated_quantize_act_other_group_sizes(sm80, group_size):
    x = torch.randn(7, 1333, dtype=torch.bfloat16)
    payload, scales = sm80.quantize_act(x, group_size, False)
    ref_payload, ref_scales = quantize_act_ref(x, group_size)
    assert_same_fp8(payload, ref_payload)
    assert_same_scales(scales, ref_scales)


@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32_scale", "ue8m0"])
@pytest.mark.parametrize("shape", [(1, 1), (129, 300), (17, 130), (256, 128)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_emulated_quantize_weight_is_bit_exact(sm80, dtype, shape, ue8m0):
    w = (torch.randn(shape) * 0.02).to(dtype)
    w[0, 0] = 3.0
    payload, scales = sm80.quantize_weight(w, 128, ue8m0)
    ref_payload, ref_scales = quantize_weight_ref(w, 128, ue8m0)
    assert_same_fp8(payload, ref_payload)
    assert_same_scales(scales, ref_scales)


# (130, 257, 640): five K blocks wrap the Hopper kernel's 4-stage ring; M and N end mid-tile.
# K = 144 and 130 (padded to 144): a last K block that TMA mostly zero-fills.
GEMM_SHAPES = [(1, 128, 128), (17, 257, 384), (130, 70, 200), (5, 33, 16), (130, 257, 640),
               (70, 100, 144), (33, 20, 130)]


@pytest.mark.parametrize("row_scaled_b", [False, True], ids=["block_b", "row_b"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=str)
@pytest.mark.parametrize("arch", [80, 89, 90], ids=["sm80_fp16_mma", "sm89_fp8_mma", "sm90_wgmma"])
def test_emulated_fp8_gemm_matches_dequantised_reference(sm80, sm89, sm90, arch, mnk, out_dtype,
                                                         row_scaled_b):
    module = {80: sm80, 89: sm89, 90: sm90}[arch]
    m, n, k = mnk
    a_fp8, a_scales = quantize_act_ref(torch.randn(m, k), 128)
    b = torch.randn(n, k) * 0.05
    b_fp8, b_scales = quantize_act_ref(b, 128) if row_scaled_b else quantize_weight_ref(b, 128)
    out = module.fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, out_dtype)
    reference = fp8_gemm_ref(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    expected_kernel = "fp8_gemm_hopper_kernel<" if arch == 90 else "fp8_gemm_kernel<"
    assert module.last_kernel_name().startswith(expected_kernel), module.last_kernel_name()
    assert out.shape == (m, n) and out.dtype == out_dtype
    assert_fp8_close(out.float(), reference)
    if out_dtype == torch.float32:  # exact e4m3 products: only fp32 summation order differs
        torch.testing.assert_close(out, reference, atol=1e-4 * reference.abs().max().item(),
                                   rtol=1e-4)


def test_emulated_fp8_gemm_propagates_nan_and_inf(sm89):
    a = torch.randn(4, 256)
    a[1, 3] = float("nan")
    a_fp8, a_scales = quantize_act_ref(a, 128)
    b_fp8, b_scales = quantize_weight_ref(torch.randn(130, 256), 128)
    b_scales[1, 0] = float("inf")
    out = sm89.fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    reference = fp8_gemm_ref(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    assert_fp8_close(out, reference)
    assert torch.isnan(out[1]).all()


def test_emulated_mma_throughput(sm80):
    """The issue's speed aim: >= 200k emulated mma.sync per second on one core. Measured (and
    printed) for bare mma.sync and for a whole attention forward with every check; asserted only
    at a tenth of the aim, so a slow CI host does not fail but a lost fast path does."""
    import time

    def rate(run):
        run()  # warm-up: fiber stacks, shadow memory
        before, start = sm80.counters()["mma"], time.perf_counter()
        run()
        return (sm80.counters()["mma"] - before) / (time.perf_counter() - start)

    data = torch.zeros(32)
    bare = rate(lambda: sm80.run_probe("mma_loop", data, 0))
    assert torch.all(data == 16 * 1024)  # ones times ones, summed over k = 16, 1024 times
    case = Case(128, heads_q=2, head_dim=128, causal=False)
    q, k, v = case.inputs(torch.bfloat16, "cpu")
    attention = rate(lambda: emulated_forward(sm80, case, q, k, v, sm_count=1))
    print(f"emulated mma.sync per second: {bare:,.0f} bare, {attention:,.0f} in the attention "
          f"forward (all checks on)")
    assert bare > 20_000 and attention > 20_000


# --- Hopper (sm90a): TMA, mbarrier ring, setmaxnreg, wgmma --------------------------------------

# The GPU tests' Hopper cases, plus tails in both sequences with GQA and batch 2, a two-sided
# window, and fewer keys than one tile (the K/V boxes arrive mostly as TMA zero fill).
EMULATED_HOPPER_CASES = HOPPER_CASES + [
    Case(77, 130, heads_q=4, heads_kv=2, head_dim=128, batch=2, causal=False),
    Case(200, 150, heads_q=2, heads_kv=1, head_dim=128, window=(16, 8), causal=False),
    Case(129, 40, head_dim=128, softcap=1.5),
    Case(127, 129, heads_q=3, heads_kv=1, head_dim=128),  # the audit's first-run lengths
    Case(1000, heads_q=1, head_dim=128, window=(200, 0)),
]


def hopper_forward(sm90, case, q, k, v):
    """The forward on the emulated H100, on one SM so the launch never splits KV (a split runs
    the sm80 kernels); asserts the Hopper kernel is what ran."""
    out, lse = emulated_forward(sm90, case, q, k, v, sm_count=1)
    assert sm90.last_kernel_name().startswith("flash_fwd_hopper_kernel<"), sm90.last_kernel_name()
    return out, lse


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", EMULATED_HOPPER_CASES, ids=repr)
def test_emulated_sm90_attention_forward_matches_reference_and_sm80_kernel(sm90, case, dtype):
    q, k, v = case.inputs(dtype, "cpu")
    out, lse = hopper_forward(sm90, case, q, k, v)
    (out_pt, _), (out_64, lse_64), _ = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    torch.testing.assert_close(lse.double(), lse_64.double(), atol=1e-3, rtol=1e-4)
    sm90.set_hopper_kernels_allowed(False)  # same module, the sm80 kernel
    try:
        out_sm80, lse_sm80 = emulated_forward(sm90, case, q, k, v, sm_count=1)
    finally:
        sm90.set_hopper_kernels_allowed(True)
    assert sm90.last_kernel_name().startswith("core_fwd_kernel<"), sm90.last_kernel_name()
    torch.testing.assert_close(out, out_sm80, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse, lse_sm80, atol=1e-3, rtol=1e-4)


def test_emulated_sm90_attention_forward_any_schedule(sm90, schedule):
    case = Case(200, 400, heads_q=4, heads_kv=2, head_dim=128, causal=False, softcap=2.0)
    q, k, v = case.inputs(torch.bfloat16, "cpu")
    out, lse = hopper_forward(sm90, case, q, k, v)
    (out_pt, _), (out_64, lse_64), _ = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    torch.testing.assert_close(lse.double(), lse_64.double(), atol=1e-3, rtol=1e-4)


def test_emulated_sm90_packed_qkv(sm90):
    """TMA maps with non-monotonic strides (the head stride is the smallest)."""
    check_packed_qkv(lambda *inputs: hopper_forward(sm90, *inputs),
                     Case(150, batch=2, heads_q=2, head_dim=128), torch.float16)


def test_emulated_sm90_launch_code_dispatch(sm90):
    """Split-KV decode and head dims other than 128 take the sm80 kernels on an H100."""
    decode = Case(1, 1500, heads_q=2, heads_kv=1, head_dim=128)
    assert sm90.num_splits(*decode.inputs(torch.bfloat16, "cpu"), True, 132) > 1
    emulated_forward(sm90, decode, *decode.inputs(torch.bfloat16, "cpu"), sm_count=132)
    assert sm90.last_kernel_name().startswith("split_kv_combine_kernel<")
    other_dim = Case(70, head_dim=64)
    emulated_forward(sm90, other_dim, *other_dim.inputs(torch.bfloat16, "cpu"), sm_count=1)
    assert sm90.last_kernel_name().startswith("core_fwd_kernel<64, 64,")
    counts = sm90.counters()
    assert counts["wgmma"] > 0 and counts["tma"] > 0
