"""The command-line tools run: `python -m deepseek_attn` and the attention benchmark script."""

import json
import os
import subprocess
import sys

import pytest
import torch

import deepseek_attn
from deepseek_attn.testing import check_poison, poisoned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tools must run the same deepseek_attn these tests import, installed or built in place.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(deepseek_attn.__file__)))


def run(args, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_main_command_reports_build_self_checks_and_benchmarks():
    output = run(["-m", "deepseek_attn", "--seqlen", "256"])
    assert "deepseek_attn 0.1.0" in output and "CPU threads" in output
    for op in ("deepseek_attn::flash_attn_fwd", "deepseek_attn::flash_attn_bwd",
               "deepseek_attn::quantize_act", "deepseek_attn::quantize_weight",
               "deepseek_attn::fp8_gemm"):
        assert any(line.startswith(op) and line.rstrip().endswith("pass")
                   for line in output.splitlines()), output
    assert "short benchmark" in output and "speed-up vs SDPA" in output


def test_attention_benchmark_writes_json_and_plot(tmp_path, monkeypatch):
    """The CPU sweep in an ISA-limited run (as a user limits it): per-case records with both
    times, the ratio, GFLOP/s and roofline fractions, the same-run roofline, goal lines."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    path = tmp_path / "bench.json"
    output = run([os.path.join("benchmarks", "bench_attention.py"), "--device", "cpu", "--quick",
                  "--seqlens", "128", "--dtypes", "float32", "--decode-lengths", "256",
                  "--out", str(path)])
    assert "x vs sdpa" in output and "roofline (this run)" in output and "goal: " in output
    payload = json.loads(path.read_text())
    assert {"device", "torch", "cuda", "commit", "date", "results", "isa", "roofline", "plan",
            "cases", "goals"} <= payload.keys()
    isa = payload["isa"]
    if isa["hardware"] in ("avx512", "avx512bf16", "amx"):  # the run says it was limited
        assert isa["effective"] == "avx2" and isa["limited"] and "ISA-limited" in isa["note"]
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import harness

    name = os.path.basename(harness.results_path(None, torch.device("cpu"), "attention",
                                                 isa=isa["effective"]))
    assert name.endswith(f"-{isa['effective']}-{torch.get_num_threads()}t-attention.json")
    roofline = payload["roofline"]
    assert roofline["gemm"]["float32"]["gflops"] > 0 and roofline["gemm"]["bfloat16"]["gflops"] > 0
    assert roofline["memory"]["read_gbps"] > 0 and "x.sum()" in roofline["memory"]["read_method"]
    impls = {(r["impl"], r["mode"]) for r in payload["results"]}
    assert impls == {("deepseek_attn", "fwd"), ("deepseek_attn", "fwd+bwd"), ("sdpa", "fwd"),
                     ("sdpa", "fwd+bwd")}
    for result in payload["results"]:
        assert result["error"] is None and result["ms"] > 0 and result["tflops"] > 0
        assert result["dtype"] == "float32" and result["repeats"] >= 3
    cases = payload["cases"]
    prefill = [c for c in cases if c["kind"] == "prefill"]
    decode = [c for c in cases if c["kind"] == "decode"]
    assert {(c["H"] == c["Hkv"], c["D"], c["causal"], c["mode"]) for c in prefill} == {
        (mha, d, causal, mode) for mha in (True, False) for d in (64, 128)
        for causal in (True, False) for mode in ("fwd", "fwd+bwd")}
    assert all(c["S"] == 128 for c in prefill) and {c["B"] for c in decode} == {1, 2}
    for case in cases:
        assert case["ours_ms"] > 0 and case["sdpa_ms"] > 0
        assert abs(case["ratio"] - case["sdpa_ms"] / case["ours_ms"]) < 1e-9
        assert case["ours_gflops"] > 0 and case["sdpa_gflops"] > 0
        assert case["ours_fraction_of_gemm"] > 0 and case["ours_repeats"] >= 3
    for case in decode:
        assert case["Sq"] == 1 and case["S"] == 256 and case["kv_bytes"] > 0
        assert case["ours_gbps"] > 0 and case["ours_fraction_of_read_bw"] > 0
    goals = {g["id"]: g for g in payload["goals"]}
    assert goals["fp32_fwd_vs_sdpa"]["met"] in (True, False)
    assert goals["fp32_fwd_of_gemm"]["value"] > 0 and goals["fp32_decode_of_read_bw"]["value"] > 0
    native_bf16 = isa["effective"] in ("avx512bf16", "amx")
    assert goals["bf16_fwd_bwd_vs_sdpa"]["target"] == (1.3 if native_bf16 else 2.0)
    assert goals["bf16_fwd_of_gemm"]["met"] is None  # bf16 not run
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_fp8_benchmark_writes_json_and_plot(tmp_path):
    path = tmp_path / "fp8.json"
    output = run([os.path.join("benchmarks", "bench_fp8.py"), "--quick", "--out", str(path)])
    assert "x vs torch.matmul-fp32" in output and "of copy" in output
    payload = json.loads(path.read_text())
    ops = {(r["op"], r["impl"]) for r in payload["results"]}
    assert {("fp8_gemm", "deepseek_attn"), ("fp8_gemm", "torch.matmul-fp32"),
            ("fp8_gemm", "torch.matmul-bf16"), ("quantize_act", "deepseek_attn"),
            ("quantize_weight", "deepseek_attn"), ("copy", "device-copy")} <= ops
    assert "goal: CPU: quantize_act >= 0.5x copy bandwidth" in output
    assert payload["checks"]["64x576x7168"]["difference_vs_reference"] < 1e-3
    assert (tmp_path / "fp8.png").stat().st_size > 0



def test_nsa_benchmark_writes_json_and_plot(tmp_path):
    path = tmp_path / "nsa.json"
    output = run([os.path.join("benchmarks", "bench_nsa.py"), "--quick", "--device", "cpu",
                  "--out", str(path)])
    assert "x vs flash" in output and "goal: CPU" in output
    payload = json.loads(path.read_text())
    ran = {(r["impl"], r["mode"]) for r in payload["results"] if r["error"] is None}
    kernels = {(impl, mode) for impl in ("deepseek_attn", "flash_attn_func-dense", "sdpa-dense")
               for mode in ("fwd", "fwd+bwd")}
    modules = {(impl, "fwd+bwd") for impl in ("NativeSparseAttention",
                                              "DenseAttention-flash_attn_func",
                                              "DenseAttention-sdpa")}
    assert kernels | modules | {("flex_attention", "fwd")} <= ran
    assert payload["per_seqlen"]["256"]["flex_max_abs_diff"] < 3e-2
    assert (tmp_path / "nsa.png").stat().st_size > 0

def test_hopper_gate_reads_the_setup_py_arch_list():
    """setup.py defines the arch list as TORCH_CUDA_ARCH_LIST spells it ("8.0;9.0a"); the gate
    must read sm_90a in it (CMake's "80;90a" spelling is checked by ctest's device_arch)."""
    from deepseek_attn import _C

    archs = [arch.strip() for arch in _C.cuda_archs.replace(" ", ";").split(";")]
    names_sm90a = any(arch.startswith(("9.0a", "90a")) for arch in archs)
    assert bool(_C.hopper_kernels_built) == names_sm90a, _C.cuda_archs


def test_set_hopper_kernels_returns_the_previous_setting():
    previous = deepseek_attn.set_hopper_kernels(False)
    try:
        assert deepseek_attn.set_hopper_kernels(False) is False
        assert deepseek_attn.set_hopper_kernels(True) is False
        assert deepseek_attn.set_hopper_kernels(True) is True
    finally:
        deepseek_attn.set_hopper_kernels(previous)


@pytest.mark.parametrize("contiguous", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_poisoned_views_hold_the_values_and_catch_stray_accesses(dtype, contiguous):
    t = torch.randn(3, 5, 8).to(dtype)
    view = poisoned(t, contiguous=contiguous)
    assert view.shape == t.shape and view.dtype == dtype
    assert torch.equal(view.view(torch.uint8), t.view(torch.uint8))
    assert view.is_contiguous() == contiguous
    check_poison(view)
    root = view._base.reshape(-1)
    past_the_end = view.storage_offset() + view.numel() if contiguous else view.storage_offset() + 8
    assert root[past_the_end].float().isnan()  # a read past the view sees NaN
    root[past_the_end] = torch.zeros((), dtype=torch.float32).to(dtype)  # a stray write ...
    with pytest.raises(AssertionError, match="1 elements around a \\(3, 5, 8\\) tensor"):
        check_poison(view)  # ... is caught


def test_generated_instantiations_match_their_table():
    """csrc/instantiations.py writes the .cu instantiations, head_dims.h and the README cell:
    none may drift from its table (run the script after editing the table)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "csrc", "instantiations.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
