"""The CPU tile plan (csrc/common/cpu_tiles.*): whatever tile GEMM and tile sizes the host probe
or the environment picks, CPU attention stays SPEC §6-correct forward and backward (bf16/fp16
tiles included, decode split across threads included), the plan is reported, and malformed
settings are clear errors."""

import os
import textwrap

import pytest
import torch

import deepseek_attn
from deepseek_attn.reference import attention_ref
from deepseek_attn.testing import assert_spec6_close

from conftest import bshd_inputs, run_python

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v, causal, window, softcap)
CASES = [
    (1, 1, 1500, 4, 1, 64, 64, True, (-1, -1), 0.0),     # decode, one kv head: split keys
    (2, 3, 700, 8, 2, 128, 128, True, (100, 0), 2.0),    # short decode, window, soft-cap
    (1, 77, 77, 6, 2, 96, 96, True, (-1, -1), 0.0),      # prefill, GQA 3, odd length
    (1, 65, 130, 2, 1, 192, 128, False, (20, 10), 0.0),  # MLA head dims, two-sided window
    (1, 33, 40, 2, 2, 63, 63, True, (-1, -1), 0.0),      # odd head dim: padded VNNI pairs
]
DTYPES = ("float32", "bfloat16", "float16")

# Runs every case under the environment's plan with 4 threads and saves outputs and gradients.
RUN_CASES = """
    import sys, torch, deepseek_attn
    from deepseek_attn._C import cpu_tile_plan
    sys.path.insert(0, TESTS_DIR)
    from conftest import bshd_inputs, run_python
    torch.set_num_threads(4)
    results = {"plan": cpu_tile_plan()}
    for dtype_name in DTYPES:
        for index, case in enumerate(CASES):
            b, sq, sk, hq, hkv, d, dv, causal, window, softcap = case
            q, k, v = bshd_inputs(b, sq, sk, hq, hkv, d, dv, getattr(torch, dtype_name), "cpu",
                                  True, index)
            out = deepseek_attn.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                                softcap=softcap)
            dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
            grads = torch.autograd.grad(out, (q, k, v), dout)
            results[(dtype_name, index)] = [out.detach(), *grads]
    torch.save(results, OUT_PATH)
"""

PLANS = {
    "blas": {"DEEPSEEK_ATTN_CPU_GEMM": "blas"},
    "fp32-brgemm": {"DEEPSEEK_ATTN_CPU_GEMM": "fp32"},
    "forced-brgemm": {"DEEPSEEK_ATTN_CPU_GEMM": "brgemm"},
    "small-tiles": {"DEEPSEEK_ATTN_CPU_TILES": "16x32"},
    "large-tiles": {"DEEPSEEK_ATTN_CPU_TILES": "128x512"},
}


def references(index, dtype):
    b, sq, sk, hq, hkv, d, dv, causal, window, softcap = CASES[index]
    q, k, v = bshd_inputs(b, sq, sk, hq, hkv, d, dv, dtype, "cpu", True, index)
    options = dict(causal=causal, window_size=window, softcap=softcap)
    same, _ = attention_ref(q, k, v, **options)
    inputs_64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    exact, _ = attention_ref(*inputs_64, **options)
    dout = torch.randn(same.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    same_grads = torch.autograd.grad(same, (q, k, v), dout)
    exact_grads = torch.autograd.grad(exact, inputs_64, dout.double())
    return [same.detach(), *same_grads], [exact.detach(), *exact_grads]


@pytest.mark.parametrize("plan", PLANS, ids=str)
def test_every_plan_gives_correct_attention(plan, tmp_path):
    path = tmp_path / "results.pt"
    code = (RUN_CASES.replace("TESTS_DIR", repr(os.path.dirname(__file__)))
            .replace("OUT_PATH", repr(str(path))))
    code = f"DTYPES = {DTYPES!r}\nCASES = {CASES!r}\n" + textwrap.dedent(code)
    run_python(code, PLANS[plan])
    results = torch.load(path)
    if plan == "blas":
        assert "fp32 tiles: BLAS" in results["plan"] and "bf16 tiles: fp32" in results["plan"]
    if plan == "fp32-brgemm":
        assert "bf16 tiles: fp32" in results["plan"] and "fp16 tiles: fp32" in results["plan"]
    if plan == "small-tiles":
        assert "16 query rows x 32 keys" in results["plan"]
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        for index in range(len(CASES)):
            ours = results[(dtype_name, index)]
            same, exact = references(index, dtype)
            for name, o, s, e, factor in zip(("out", "dq", "dk", "dv"), ours, same, exact,
                                             (2, 3, 3, 3)):
                assert o.dtype == dtype
                if dtype == torch.float32:
                    torch.testing.assert_close(o.double(), e, atol=1e-4, rtol=1e-4,
                                               msg=f"{name} of case {index}")
                else:
                    assert_spec6_close(f"{name} of case {index}", o, s, e, factor=factor)


def test_plan_is_reported_by_the_module_and_the_cli():
    plan = deepseek_attn._C.cpu_tile_plan()
    assert "fp32 tiles:" in plan and "bf16 tiles:" in plan and "keys per tile" in plan
    stdout = run_python("import runpy, sys; sys.argv = ['x', '--no-bench']; "
                        "runpy.run_module('deepseek_attn', run_name='__main__')")
    assert "CPU tiles: " in stdout


@pytest.mark.parametrize("variable, value, message", [
    ("DEEPSEEK_ATTN_CPU_GEMM", "mkl", "DEEPSEEK_ATTN_CPU_GEMM must be auto, blas, fp32 or brgemm"),
    ("DEEPSEEK_ATTN_CPU_TILES", "8x3", "DEEPSEEK_ATTN_CPU_TILES must be ROWSxKEYS"),
    ("DEEPSEEK_ATTN_CPU_TILES", "64", "DEEPSEEK_ATTN_CPU_TILES must be ROWSxKEYS"),
])
def test_malformed_settings_are_clear_errors(variable, value, message):
    code = """
        import torch, deepseek_attn
        x = torch.randn(1, 4, 1, 8)
        try:
            deepseek_attn.flash_attn_func(x, x, x)
        except RuntimeError as error:
            print("op:", error)
        try:
            deepseek_attn._C.cpu_tile_plan()
        except ValueError as error:
            print("plan:", error)
    """
    stdout = run_python(code, {variable: value})
    assert f"op: {message}" in stdout and f"plan: {message}" in stdout
