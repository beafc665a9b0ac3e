"""flash_attn_func and its registered ops against the SPEC §1 reference (rules of SPEC §6)."""

import os

import pytest
import torch

import deepseek_attn
from deepseek_attn import FlashAttnFunction, flash_attn_func
from deepseek_attn.reference import attention_ref, merge_partials, visible_mask
from deepseek_attn.testing import assert_spec6_close, check_poison, poisoned

from conftest import (ATTENTION_DEVICES, CUDA_HEAD_DIMS, bshd_inputs, run_python,
                      requires_cuda_attention, skip_unsupported_dtype)

_ops = torch.ops.deepseek_attn


class Case:
    """One attention problem: shapes and options, with a readable test id."""

    def __init__(self, seqlen_q, seqlen_k=None, heads_q=2, heads_kv=None, head_dim=64,
                 head_dim_v=None, batch=1, causal=True, window=(-1, -1), softcap=0.0):
        self.batch, self.seqlen_q = batch, seqlen_q
        self.seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
        self.heads_q = heads_q
        self.heads_kv = heads_q if heads_kv is None else heads_kv
        self.head_dim = head_dim
        self.head_dim_v = head_dim if head_dim_v is None else head_dim_v
        self.causal, self.window, self.softcap = causal, window, softcap

    def __repr__(self):
        parts = [f"b{self.batch}", f"sq{self.seqlen_q}", f"sk{self.seqlen_k}",
                 f"h{self.heads_q}x{self.heads_kv}", f"d{self.head_dim}x{self.head_dim_v}"]
        parts.append("causal" if self.causal else "full")
        if self.window != (-1, -1):
            parts.append(f"win{self.window[0]}_{self.window[1]}")
        if self.softcap:
            parts.append(f"cap{self.softcap}")
        return "-".join(parts)

    def inputs(self, dtype, device, requires_grad=False, seed=0):
        return bshd_inputs(self.batch, self.seqlen_q, self.seqlen_k, self.heads_q, self.heads_kv,
                           self.head_dim, self.head_dim_v, dtype, device, requires_grad, seed)

    def kwargs(self):
        return dict(causal=self.causal, window_size=self.window, softcap=self.softcap)


CASES = [
    Case(1, batch=2),                                    # S = 1
    Case(17, head_dim=96, causal=False),                 # odd S, D = 96
    Case(113, heads_q=6, heads_kv=2, head_dim=128),      # odd S, GQA 3
    Case(1025, heads_q=2, heads_kv=1, head_dim=64),      # long odd S, MQA
    Case(113, 1025, head_dim=128),                       # Sq < Sk (decode-like)
    Case(300, 77, head_dim=64),                          # Sq > Sk: leading rows see no key
    Case(130, head_dim=192, head_dim_v=128),             # MLA prefill head dims
    Case(70, 90, head_dim=192, head_dim_v=128, causal=False),
    *[Case(65, heads_q=6, heads_kv=hkv, head_dim=64) for hkv in (1, 2, 3, 6)],  # every GQA ratio
    Case(257, window=(32, 0)),                           # causal sliding window
    Case(200, 150, window=(16, 8), causal=False),        # two-sided window
    Case(90, window=(-1, 5), causal=False),              # right window only
    Case(129, softcap=1.5, head_dim=128),                # soft-capping
    Case(100, 300, window=(40, 0), softcap=3.0, heads_q=4, heads_kv=2),
    Case(100, head_dim=256, causal=False),               # widest head dim with CUDA kernels
    Case(1, 3000, heads_q=8, heads_kv=2, head_dim=128),  # decode: split-KV on CUDA
    Case(4, 2500, batch=2, heads_q=4, heads_kv=1, head_dim=64, softcap=2.0),
]


def reference_pair(case, q, k, v):
    """(same-dtype reference, fp64 reference) of out and lse, plus their inputs."""
    same = attention_ref(q, k, v, causal=case.causal, window_size=case.window,
                         softcap=case.softcap)
    q64, k64, v64 = (t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v))
    exact = attention_ref(q64, k64, v64, causal=case.causal, window_size=case.window,
                          softcap=case.softcap)
    return same, exact, (q64, k64, v64)


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_forward_and_backward_match_reference(device, dtype, case):
    skip_unsupported_dtype(device, dtype)
    q, k, v = case.inputs(dtype, device, requires_grad=True)
    out, lse, probs = flash_attn_func(q, k, v, return_attn_probs=True, **case.kwargs())
    assert probs is None
    assert out.shape == (case.batch, case.seqlen_q, case.heads_q, case.head_dim_v)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert lse.shape == (case.batch, case.heads_q, case.seqlen_q)

    (out_pt, lse_pt), (out_64, lse_64), inputs_64 = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    torch.testing.assert_close(lse.double(), lse_64.double(), atol=1e-3, rtol=1e-4)

    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    grads_pt = torch.autograd.grad(out_pt, (q, k, v), dout)
    grads_64 = torch.autograd.grad(out_64, inputs_64, dout.double())
    for name, ours, same, exact in zip(("dq", "dk", "dv"), grads, grads_pt, grads_64):
        assert ours.dtype == dtype
        assert_spec6_close(name, ours, same, exact, factor=3)


@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_rows_without_keys_are_zero_with_finite_gradients(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # Causal with Sq > Sk: the first Sq - Sk rows see nothing; a narrow window empties more.
    case = Case(40, 16, heads_q=4, heads_kv=2, causal=True)
    q, k, v = case.inputs(dtype, device, requires_grad=True)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    empty = ~visible_mask(40, 16, causal=True, device=device).any(dim=-1)
    assert empty.sum() == 24
    assert torch.equal(out[:, empty], torch.zeros_like(out[:, empty]))
    assert torch.isneginf(lse[:, :, empty]).all()
    assert torch.isfinite(lse[:, :, ~empty]).all()
    out.backward(torch.randn_like(out))
    for name, grad in (("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(grad).all(), f"{name} is not finite"
    assert torch.equal(q.grad[:, empty], torch.zeros_like(q.grad[:, empty]))


@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_window_that_hides_every_key_of_some_rows(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = Case(12, 4).inputs(dtype, device, requires_grad=True)
    # Row i sees keys i - 9 .. i - 8: rows 0..7 see nothing, row 8 one key, rows 9..11 two.
    out, lse, _ = flash_attn_func(q, k, v, window_size=(1, 0), return_attn_probs=True)
    ref_out, ref_lse = attention_ref(q.double(), k.double(), v.double(), window_size=(1, 0))
    torch.testing.assert_close(out.double(), ref_out, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-4, rtol=1e-4)
    assert torch.isneginf(lse[..., :8]).all() and torch.isfinite(lse[..., 8:]).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def strided_views(q, k, v):
    """The same values through non-contiguous BSHD views (only the last dim contiguous)."""
    qkv_packed = torch.stack([q, k, v], dim=2)  # (B, S, 3, H, D): q/k/v interleaved per token
    q_view, k_view, v_view = qkv_packed.unbind(dim=2)
    bhsd = q.transpose(1, 2).contiguous().transpose(1, 2)  # head-major storage, BSHD view
    return q_view, k_view, v_view, bhsd


@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_non_contiguous_inputs(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = Case(77, heads_q=4, heads_kv=4, head_dim=64).inputs(dtype, device)
    q_view, k_view, v_view, q_head_major = strided_views(q, k, v)
    assert not q_view.is_contiguous() and not q_head_major.is_contiguous()
    expected = flash_attn_func(q, k, v, causal=True)
    for args in ((q_view, k_view, v_view), (q_head_major, k, v)):
        leaves = [t.detach().requires_grad_() for t in args]
        out = flash_attn_func(*leaves, causal=True)
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
        out.sum().backward()
    # Gradients of strided inputs match those of contiguous ones.
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    flash_attn_func(*leaves, causal=True).sum().backward()
    strided = [t.detach().requires_grad_() for t in (q_view, k_view, v_view)]
    flash_attn_func(*strided, causal=True).sum().backward()
    for contiguous_leaf, strided_leaf in zip(leaves, strided):
        torch.testing.assert_close(strided_leaf.grad, contiguous_leaf.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", [Case(77, 130, heads_q=4, heads_kv=2, head_dim=64),
                                  Case(50, head_dim=128, window=(20, 0), softcap=2.0)], ids=repr)
@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_poisoned_inputs_are_never_read_or_written_past(device, case):
    """q, k, v and dout as views inside NaN-filled buffers: an out-of-bounds read shows up as NaN
    in the outputs or gradients, a stray write as a changed poison byte."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = case.inputs(dtype, device)
    plain = [t.detach().requires_grad_() for t in (q, k, v)]
    views = [poisoned(t).requires_grad_() for t in (q, k, v)]
    out = flash_attn_func(*plain, **case.kwargs())
    out_poisoned = flash_attn_func(*views, **case.kwargs())
    dout = torch.randn_like(out)
    dout_poisoned = poisoned(dout)
    out.backward(dout)
    out_poisoned.backward(dout_poisoned)
    torch.testing.assert_close(out_poisoned, out, atol=0, rtol=0)
    for name, view, leaf in zip("qkv", views, plain):
        assert not view.grad.isnan().any(), f"d{name} read poison"
        torch.testing.assert_close(view.grad, leaf.grad, atol=1e-6, rtol=1e-6)
    for view in (*views, dout_poisoned):
        check_poison(view)


@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_merge_of_two_key_halves_equals_full_attention(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    case = Case(33, 150, heads_q=4, heads_kv=2, head_dim=64, causal=False)
    q, k, v = case.inputs(dtype, device)
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    halves = [flash_attn_func(q, k[:, part], v[:, part], return_attn_probs=True)[:2]
              for part in (slice(0, 61), slice(61, None))]
    merged_out, merged_lse = merge_partials(*halves[0], *halves[1])
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(merged_lse, lse, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(merged_out, out, atol=tolerance, rtol=tolerance)


def test_merge_identity_keeps_the_empty_row_convention():
    out_a, lse_a = torch.zeros(1, 2, 1, 4), torch.full((1, 1, 2), float("-inf"))
    out_b, lse_b = torch.ones(1, 2, 1, 4), torch.tensor([[[0.5, float("-inf")]]])
    merged_out, merged_lse = merge_partials(out_a, lse_a, out_b, lse_b)
    assert torch.equal(merged_out[0, 0], torch.ones(1, 4))
    assert torch.equal(merged_out[0, 1], torch.zeros(1, 4))
    assert merged_lse[0, 0, 0] == 0.5 and torch.isneginf(merged_lse[0, 0, 1])


@pytest.mark.parametrize("options", [
    dict(causal=True), dict(causal=False), dict(causal=True, window_size=(3, 0)),
    dict(causal=False, window_size=(2, 1), softcap=0.8), dict(causal=True, softcap=2.0),
], ids=repr)
def test_gradcheck_fp64(options):
    q, k, v = bshd_inputs(1, 6, 9, 4, 2, 8, 5, torch.float64, "cpu", requires_grad=True)
    scale = 0.7

    def attention(q, k, v):
        return FlashAttnFunction.apply(q, k, v, scale, options.get("causal", False),
                                       options.get("window_size", (-1, -1)),
                                       options.get("softcap", 0.0), False)[0]

    assert torch.autograd.gradcheck(attention, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck is not None  # second order is not supported (by design)


@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_opcheck_forward_and_backward_ops(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = Case(37, 45, heads_q=4, heads_kv=2, head_dim=64).inputs(dtype, device,
                                                                      requires_grad=True)
    fwd_args = (q, k, v, 0.2, True, -1, -1, 0.0)
    torch.library.opcheck(_ops.flash_attn_fwd.default, fwd_args)
    torch.library.opcheck(_ops.flash_attn_fwd.default, (q, k, v, 0.2, False, 7, 3, 1.0))
    out, lse = _ops.flash_attn_fwd(*(t.detach() for t in (q, k, v)), 0.2, True, -1, -1, 0.0)
    bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, 0.2, True,
                -1, -1, 0.0, False)
    torch.library.opcheck(_ops.flash_attn_bwd.default, bwd_args)
    torch.library.opcheck(_ops.flash_attn_fwd.default, (q, k, v, 0.2, True, -1, -1, 0.0, True))


@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_raw_op_and_autograd_function_share_one_backward(device):
    """torch.ops.deepseek_attn.flash_attn_fwd is differentiable by itself, with `deterministic`
    reaching its backward, and gives FlashAttnFunction's gradients bit for bit."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    case = Case(40, 70, heads_q=4, heads_kv=2, head_dim=64)
    inputs = case.inputs(dtype, device)
    dout = torch.randn(1, 40, 4, 64, dtype=dtype, device=device)

    def grads(forward):
        leaves = [t.detach().requires_grad_() for t in inputs]
        forward(*leaves)[0].backward(dout)
        return [t.grad for t in leaves]

    through_op = grads(lambda q, k, v: _ops.flash_attn_fwd(q, k, v, 0.125, True, -1, -1, 0.0,
                                                           True))
    through_function = grads(lambda q, k, v: FlashAttnFunction.apply(q, k, v, 0.125, True,
                                                                     (-1, -1), 0.0, True))
    for a, b in zip(through_op, through_function):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(through_op, grads(
        lambda q, k, v: _ops.flash_attn_fwd(q, k, v, 0.125, True, -1, -1, 0.0, True))))


def test_fake_kernels_check_shapes_like_the_real_ones():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 8, 6, 64)
        k = torch.empty(1, 8, 4, 64)  # 6 heads over 4 KV heads
        with pytest.raises(RuntimeError, match="heads_q must be a multiple of heads_kv"):
            _ops.flash_attn_fwd(q, k, k, 0.125, True, -1, -1, 0.0)
        with pytest.raises(RuntimeError, match="q and k must have the same head_dim"):
            _ops.flash_attn_fwd(q, torch.empty(1, 8, 2, 32), torch.empty(1, 8, 2, 32), 0.125,
                                True, -1, -1, 0.0)
        out, lse = _ops.flash_attn_fwd(q, k[:, :, :2], k[:, :, :2], 0.125, True, -1, -1, 0.0)
        assert out.shape == (1, 8, 6, 64) and lse.shape == (1, 6, 8)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_torch_compile_fullgraph_forward_and_backward(device, backend):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    case = Case(50, 64, heads_q=4, heads_kv=2, head_dim=64)
    q, k, v = case.inputs(dtype, device, requires_grad=True)

    def block(q, k, v):
        out = flash_attn_func(q * 1.5, k, v, causal=True, window_size=(20, 0))
        return (out.float() ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    expected_loss = block(q, k, v)
    expected_grads = torch.autograd.grad(expected_loss, (q, k, v))
    torch.testing.assert_close(loss, expected_loss, atol=1e-4, rtol=1e-4)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", ATTENTION_DEVICES)
def test_deterministic_gradients_are_bitwise_identical(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = Case(300, heads_q=8, heads_kv=2, head_dim=64).inputs(dtype, device,
                                                                   requires_grad=True)
    dout = torch.randn(1, 300, 8, 64, dtype=dtype, device=device)
    runs = []
    for _ in range(2):
        out = flash_attn_func(q, k, v, causal=True, deterministic=True)
        runs.append(torch.autograd.grad(out, (q, k, v), dout))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@requires_cuda_attention
@pytest.mark.parametrize("head_dims", CUDA_HEAD_DIMS, ids=lambda d: f"d{d[0]}x{d[1]}")
def test_cuda_atomic_dq_matches_the_deterministic_path(head_dims):
    # The default backward adds dQ with fp32 atomics; deterministic=True runs a separate dQ
    # kernel. Both sum the same exact bf16 products, so only fp32 summation order differs.
    case = Case(333, heads_q=6, heads_kv=2, head_dim=head_dims[0], head_dim_v=head_dims[1])
    q, k, v = case.inputs(torch.bfloat16, "cuda", requires_grad=True)
    dout = torch.randn(1, 333, 6, head_dims[1], dtype=torch.bfloat16, device="cuda")
    grads = {}
    for deterministic in (False, True):
        out = flash_attn_func(q, k, v, causal=True, deterministic=deterministic)
        grads[deterministic] = torch.autograd.grad(out, (q, k, v), dout)
    for name, atomic, ordered in zip("qkv", grads[False], grads[True]):
        scale = ordered.float().abs().max().item()
        error = (atomic.float() - ordered.float()).abs().max().item()
        assert error <= 1e-2 * scale, f"d{name}: {error} vs max {scale}"


@requires_cuda_attention
@pytest.mark.parametrize("deterministic", [True, False])
def test_cuda_graph_capture_and_replay(deterministic):
    q, k, v = Case(300, heads_q=4, heads_kv=2, head_dim=128).inputs(torch.bfloat16, "cuda",
                                                                    requires_grad=True)
    dout = torch.randn(1, 300, 4, 128, dtype=torch.bfloat16, device="cuda")

    def step():
        out = flash_attn_func(q, k, v, causal=True, deterministic=deterministic)
        return (out, *torch.autograd.grad(out, (q, k, v), dout))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture (allocator pools, lazy module loading)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    expected = step()
    with torch.no_grad():
        for t in (q, k, v):
            t.mul_(1.0)  # same values: replay must reproduce the eager results exactly
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, expected):
        if deterministic:
            assert torch.equal(got, want)
        else:  # atomic dQ: the order of the fp32 additions may differ between runs
            torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


HOPPER_CASES = [
    Case(1, 1, head_dim=128),
    Case(113, heads_q=4, heads_kv=2, head_dim=128),
    Case(1025, heads_q=2, heads_kv=1, head_dim=128, batch=2),
    Case(300, 200, head_dim=128),                        # Sq > Sk: rows without keys
    Case(200, 700, head_dim=128, causal=False),
    Case(520, window=(100, 0), head_dim=128, softcap=2.0),
    Case(384, window=(64, 64), head_dim=128, causal=False),
]


@requires_cuda_attention
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the wgmma/TMA forward runs on sm90 only")
@pytest.mark.parametrize("case", HOPPER_CASES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_hopper_forward_matches_reference_and_sm80_kernel(case, dtype, sm80_kernels_only):
    q, k, v = case.inputs(dtype, "cuda")
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **case.kwargs())
    (out_pt, _), (out_64, lse_64), _ = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    torch.testing.assert_close(lse.double(), lse_64.double(), atol=1e-3, rtol=1e-4)
    with sm80_kernels_only():
        out_sm80, lse_sm80, _ = flash_attn_func(q, k, v, return_attn_probs=True, **case.kwargs())
    torch.testing.assert_close(out, out_sm80, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse, lse_sm80, atol=1e-3, rtol=1e-4)


@requires_cuda_attention
def test_long_sequence_matches_sdpa_on_cuda():
    seqlen = 16384
    q, k, v = Case(seqlen, heads_q=4, heads_kv=4, head_dim=128).inputs(torch.bfloat16, "cuda")
    out = flash_attn_func(q, k, v, causal=True)
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), is_causal=True).transpose(1, 2)
    assert (out.float() - expected.float()).abs().max().item() < 2e-2


@requires_cuda_attention
def test_cuda_rejects_head_dims_without_kernels():
    q, k, v = bshd_inputs(1, 8, 8, 2, 2, 80, 80, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match=r"head dims \(q/k 80, v 80\) are not supported on CUDA"):
        flash_attn_func(q, k, v)


def test_blas_fallback_for_cpu_tiles_matches():
    """DEEPSEEK_ATTN_CPU_GEMM=blas swaps the tile GEMM (brgemm -> BLAS); results must agree."""
    code = """
        import torch, deepseek_attn
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, 300, 4, 96, generator=g, requires_grad=True) for _ in range(3))
        out = deepseek_attn.flash_attn_func(q, k, v, causal=True, window_size=(100, 0))
        out.backward(torch.ones_like(out))
        torch.save([out.detach(), q.grad, k.grad, v.grad], OUT_PATH)
    """
    results = []
    for mode in ("blas", "auto"):
        path = os.path.join(os.environ.get("PYTEST_TMP", "/tmp"), f"dsa_gemm_{mode}_{os.getpid()}.pt")
        run_python(code.replace("OUT_PATH", repr(path)), {"DEEPSEEK_ATTN_CPU_GEMM": mode})
        results.append(torch.load(path))
        os.remove(path)
    for blas, auto in zip(*results):
        torch.testing.assert_close(blas, auto, atol=1e-5, rtol=1e-5)


def test_long_sequence_memory_is_linear_in_seqlen():
    """S = 16k fp32 forward+backward: an (S x S) score matrix alone would be 1 GiB."""
    code = """
        import resource, torch, deepseek_attn
        torch.set_num_threads(2)
        seqlen, heads, dim = 16384, 1, 64
        q, k, v = (torch.randn(1, seqlen, heads, dim, requires_grad=True) for _ in range(3))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = deepseek_attn.flash_attn_func(q, k, v, causal=True)
        out.backward(torch.ones_like(out))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
    """
    growth_mib = float(run_python(code).strip().splitlines()[-1])
    # Inputs, out and grads are 4 MiB each; the score matrix would be 1024 MiB.
    assert growth_mib < 160, f"peak memory grew by {growth_mib:.0f} MiB at S=16k"


# ---------------------------------------------------------------------------- input checks


def _good(dtype=torch.float32):
    return bshd_inputs(1, 8, 8, 4, 2, 16, 16, dtype, "cpu")


def _bad_inputs():
    q, k, v = _good()
    return [
        ("rank", (q[0], k, v), {}, ValueError, r"q must have 4 dimensions \(batch, seqlen_q"),
        ("rank_k", (q, k[0], v), {}, ValueError, r"k must have 4 dimensions"),
        ("dtype_mix", (q, k.bfloat16(), v), {}, TypeError,
         r"k must have the same dtype as q \(got BFloat16 and Float\)"),
        ("dtype_mix_v", (q, k, v.half()), {}, TypeError, r"v must have the same dtype as q"),
        ("unsupported_dtype", (q.int(), k.int(), v.int()), {}, TypeError,
         r"q must have dtype float32, bfloat16, float16 or float64 \(got Int\)"),
        ("head_dim_mismatch", (q, k[..., :8], v), {}, ValueError,
         r"k.size\(3\) \(head_dim, as in q\) must be 16 \(got 8"),
        ("heads_not_multiple", (q[:, :, :3], k, v), {}, ValueError,
         r"number of query heads \(3\) must be a multiple of the number of key/value heads \(2\)"),
        ("batch_mismatch", (q, torch.cat([k, k]), v), {}, ValueError,
         r"k.size\(0\) \(batch, as in q\) must be 1 \(got 2"),
        ("seqlen_v_mismatch", (q, k, v[:, :5]), {}, ValueError,
         r"v.size\(1\) \(seqlen_k, as in k\) must be 8 \(got 5"),
        ("heads_v_mismatch", (q, k, v[:, :, :1]), {}, ValueError,
         r"v.size\(2\) \(heads_kv, as in k\) must be 2 \(got 1"),
        ("last_dim_not_contiguous", (torch.randn(1, 8, 4, 32)[..., ::2], k, v), {}, RuntimeError,
         r"q must be contiguous in its last dimension \(got stride 2\)"),
        ("softcap", (q, k, v), dict(softcap=-1.0), ValueError, r"softcap must be >= 0"),
        ("scale", (q, k, v), dict(softmax_scale=-0.1), ValueError,
         r"softmax_scale must be a positive finite number"),
        ("window", (q, k, v), dict(window_size=(-2, 0)), ValueError,
         r"window_size entries must be >= -1"),
        ("window_shape", (q, k, v), dict(window_size=(3,)), ValueError,
         r"window_size must be a pair"),
        ("dropout", (q, k, v), dict(dropout_p=0.1), NotImplementedError,
         r"dropout_p must be 0.0"),
        ("alibi", (q, k, v), dict(alibi_slopes=torch.ones(4)), NotImplementedError,
         r"alibi_slopes is not supported"),
    ]


@pytest.mark.parametrize("name,args,kwargs,error,message", _bad_inputs(),
                         ids=[case[0] for case in _bad_inputs()])
def test_forward_rejects_bad_input(name, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        flash_attn_func(*args, **kwargs)


def test_fp64_is_cpu_only_and_cuda_rejects_it():
    q, k, v = _good(torch.float64)
    assert flash_attn_func(q, k, v).dtype == torch.float64
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to check the CUDA dtype message")
    with pytest.raises(TypeError, match=r"q must have dtype bfloat16 or float16 on cuda \(got Double\)"):
        flash_attn_func(*(t.cuda() for t in (q, k, v)))


@requires_cuda_attention
def test_device_mix_is_rejected():
    q, k, v = _good(torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"k must be on the same device as q \(got cpu and cuda:0\)"):
        flash_attn_func(q.cuda(), k, v.cuda())


def _bwd_args(**overrides):
    q, k, v = _good()
    out, lse = _ops.flash_attn_fwd(q, k, v, 0.25, True, -1, -1, 0.0)
    args = dict(dout=torch.randn_like(out), q=q, k=k, v=v, out=out, lse=lse)
    args.update(overrides)
    return (*args.values(), 0.25, True, -1, -1, 0.0, False)


@pytest.mark.parametrize("overrides,error,message", [
    (dict(lse=torch.zeros(1, 4, 8, dtype=torch.float64)), TypeError,
     r"softmax_lse must have dtype Float \(got Double\)"),
    (dict(lse=torch.zeros(1, 8, 4)), ValueError, r"softmax_lse must have shape \[1, 4, 8\]"),
    (dict(out=torch.zeros(1, 8, 4, 8)), ValueError,
     r"out must have shape \[1, 8, 4, 16\] \(batch, seqlen_q, heads_q, head_dim_v\)"),
    (dict(dout=torch.zeros(1, 8, 4, 15)), ValueError, r"dout must have shape \[1, 8, 4, 16\]"),
    (dict(dout=torch.zeros(1, 8, 4, 16, dtype=torch.bfloat16)), TypeError,
     r"dout must have the same dtype as q"),
    (dict(dout=torch.zeros(1, 8, 16, 4).transpose(-1, -2)), RuntimeError,
     r"dout must be contiguous in its last dimension"),
], ids=["lse_dtype", "lse_shape", "out_shape", "dout_shape", "dout_dtype", "dout_stride"])
def test_backward_rejects_bad_input(overrides, error, message):
    with pytest.raises(error, match=message):
        _ops.flash_attn_bwd(*_bwd_args(**overrides))


def test_bad_input_does_not_modify_caller_tensors():
    q, k, v = _good()
    snapshot = [t.clone() for t in (q, k, v)]
    with pytest.raises(ValueError):
        flash_attn_func(q, k, v, softcap=-1.0)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, (q, k, v)))


def test_empty_batch_and_zero_length_sequences():
    for batch, seqlen_q, seqlen_k in ((0, 8, 8), (1, 0, 8), (1, 8, 0)):
        q, k, v = bshd_inputs(batch, seqlen_q, seqlen_k, 2, 2, 16, 16, torch.float32, "cpu",
                              requires_grad=True)
        out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
        assert out.shape == (batch, seqlen_q, 2, 16)
        if out.numel():
            assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_public_api_surface():
    assert {"FlashAttnFunction", "flash_attn_func", "fp8_gemm", "nn"} <= set(deepseek_attn.__all__)
    assert isinstance(deepseek_attn.__version__, str)
