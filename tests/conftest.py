"""Shared test fixtures: devices, input makers, the Hopper switch (the SPEC §6 rule and poisoned
inputs are in deepseek_attn.testing)."""

import contextlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import deepseek_attn
from deepseek_attn import _C


def _cuda_skip_reason(op_name):
    """Why CUDA variants of `op_name` cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    if not _C.with_cuda:
        return "deepseek_attn was built without CUDA sources"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(op_name, "CUDA"):
        return f"{op_name} has no CUDA kernel in this build"
    return None


def device_params(op_name):
    """['cpu', 'cuda'] as pytest params; 'cuda' is skipped with the reason when it cannot run."""
    reason = _cuda_skip_reason(op_name)
    cuda = pytest.param("cuda", marks=pytest.mark.skipif(reason is not None, reason=reason or ""))
    return ["cpu", cuda]


ATTENTION_DEVICES = device_params("deepseek_attn::flash_attn_fwd")
_ATTENTION_CUDA_SKIP = _cuda_skip_reason("deepseek_attn::flash_attn_fwd")
# For tests that only make sense on a GPU (graphs, device mixes, CUDA-only limits).
requires_cuda_attention = pytest.mark.skipif(_ATTENTION_CUDA_SKIP is not None,
                                             reason=_ATTENTION_CUDA_SKIP or "")

# Dtypes each device supports for attention (SPEC §0).
ATTENTION_DTYPES = {"cpu": [torch.float32, torch.bfloat16, torch.float16],
                    "cuda": [torch.bfloat16, torch.float16]}


def skip_unsupported_dtype(device, dtype):
    if dtype not in ATTENTION_DTYPES[device]:
        pytest.skip(f"{dtype} is not a supported attention dtype on {device}")


def bshd_inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v, dtype,
                device, requires_grad=False, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def make(*shape):
        t = torch.randn(*shape, generator=generator, dtype=torch.float32).to(device=device,
                                                                             dtype=dtype)
        return t.requires_grad_(requires_grad)

    q = make(batch, seqlen_q, heads_q, head_dim)
    k = make(batch, seqlen_k, heads_kv, head_dim)
    v = make(batch, seqlen_k, heads_kv, head_dim_v)
    return q, k, v


def _instantiation_table():
    """csrc/instantiations.py: the one table of compiled CUDA instantiations."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc",
                        "instantiations.py")
    spec = importlib.util.spec_from_file_location("deepseek_attn_instantiations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INSTANTIATIONS = _instantiation_table()
CUDA_HEAD_DIMS = INSTANTIATIONS.ATTENTION_HEAD_DIMS  # (Dqk, Dv) pairs with CUDA kernels


@pytest.fixture
def sm80_kernels_only():
    """A context manager: inside it the mma.sync kernels run on sm90 too (deepseek_attn's
    process-wide Hopper switch, restored on the way out)."""
    @contextlib.contextmanager
    def only_sm80():
        previous = deepseek_attn.set_hopper_kernels(False)
        try:
            yield
        finally:
            deepseek_attn.set_hopper_kernels(previous)
    return only_sm80


def run_python(code, env_overrides=None, timeout=600, args=()):
    """Runs `code` in a fresh interpreter (for settings read once per process) with `args` as
    sys.argv[1:]; its stdout."""
    env = dict(os.environ, **(env_overrides or {}))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                            capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    return (f"deepseek_attn {deepseek_attn.__version__}, built with CUDA: {bool(_C.with_cuda)} "
            f"(archs {_C.cuda_archs or '-'}); torch {torch.__version__}; "
            f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
