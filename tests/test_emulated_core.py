"""The core's CUDA forward kernels (csrc/core/kernels/sm80/core_fwd.cuh) executed on the CPU
emulator: the cases of test_core.py (every KV source with every key selection) against the same
fp64 reference and SPEC §6 rules, on the A100-, L40- and H100-like emulated devices."""

import pytest
import torch

from deepseek_attn.testing import poisoned

from test_core import CORE_CASES, CoreCase, check_core_forward, latent_case, make_core_inputs
from test_emulated_kernels import sm80, sm89, sm90  # noqa: F401  (session fixtures)


def emulated_core(module, sm_count=108):
    """attention_core_fwd's Python signature over the emulated module."""
    def run(q, k, v, block_table=None, cache_seqlens=None, indices=None, index_block_size=1,
            head_dim_v=-1, causal=False, window_size=(-1, -1), softcap=0.0):
        return module.attention_core_fwd(q, k, v, block_table, cache_seqlens, indices,
                                         index_block_size, head_dim_v, q.shape[-1] ** -0.5, causal,
                                         window_size[0], window_size[1], softcap, sm_count)
    return run


@pytest.mark.parametrize("case", CORE_CASES, ids=str)
def test_emulated_sm80_core_forward(sm80, case):
    check_core_forward(emulated_core(sm80), case, torch.bfloat16, "cpu")


@pytest.mark.parametrize("case", [CORE_CASES[3], CoreCase("paged", "blocks", causal=True,
                                                          num_indices=3, index_block_size=16)],
                         ids=str)
def test_emulated_sm80_core_forward_fp16(sm80, case):
    check_core_forward(emulated_core(sm80), case, torch.float16, "cpu")


@pytest.mark.parametrize("case", [*latent_case("band"), CoreCase("paged", "blocks", causal=True,
                                                                 head_dim=192, head_dim_v=128,
                                                                 num_indices=3,
                                                                 index_block_size=16)], ids=str)
def test_emulated_sm89_and_sm90_core_forward(sm89, sm90, case):
    """The latent tile fits sm89's 99 KiB of shared memory; sm90 runs the sm80 core kernel."""
    for module in (sm89, sm90):
        check_core_forward(emulated_core(module, sm_count=132), case, torch.bfloat16, "cpu")


@pytest.mark.parametrize("case, dtype, error, message", [
    (CoreCase("dense", "tokens", head_dim=96, head_dim_v=96), torch.bfloat16, ValueError,
     r"index lists over separate K/V rows take head dims 64/64, 128/128, 192/128 on CUDA "
     r"\(got 96/96\)"),
    (latent_case("band")[0], torch.float16, TypeError,
     r"q must be bfloat16 to read a latent cache on CUDA \(got Half\)"),
    (CoreCase("paged", "band", head_dim=80, head_dim_v=80), torch.bfloat16, ValueError,
     r"head dims \(q/k 80, v 80, separate v\) are not supported by the CUDA core"),
], ids=["lists_head_dim", "latent_fp16", "head_dim"])
def test_emulated_core_rejects_what_cuda_does_not_build(sm80, case, dtype, error, message):
    q, k, v, kwargs = make_core_inputs(case, dtype, "cpu")
    with pytest.raises(error, match=message):
        emulated_core(sm80)(q, k, v, **kwargs)


def test_emulated_core_split_kv_matches_one_split(sm80):
    case = latent_case("band", batch=1, seqlen_q=1, seqlen_k=300)[1]
    q, k, v, kwargs = make_core_inputs(case, torch.bfloat16, "cpu")
    assert sm80.core_num_splits(q, k, v, kwargs["block_table"], -1, 108) > 1
    split = emulated_core(sm80, 108)(q, k, v, **kwargs)
    whole = emulated_core(sm80, 1)(q, k, v, **kwargs)
    torch.testing.assert_close(split[0], whole[0], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(split[1], whole[1], atol=1e-5, rtol=1e-5)


def test_emulated_core_skips_out_of_range_indices(sm80):
    """SPEC §0: CUDA skips out-of-range list entries like -1 slots (CPU raises)."""
    case = CoreCase("paged", "tokens", num_indices=6)
    q, k, v, kwargs = make_core_inputs(case, torch.bfloat16, "cpu")
    run = emulated_core(sm80)
    expected = run(q, k, v, **kwargs)
    wild = kwargs["indices"].clone()
    wild[..., -1] = -1
    padded = run(q, k, v, **dict(kwargs, indices=wild))
    wild[..., -1] = 10_000  # past every sequence: skipped like -1
    out, lse = run(q, k, v, **dict(kwargs, indices=wild))
    torch.testing.assert_close(out, padded[0], atol=0, rtol=0)
    assert not torch.equal(padded[0], expected[0]), "the dropped slots must have mattered"


@pytest.mark.parametrize("case", [CORE_CASES[2], CORE_CASES[10], CORE_CASES[6],
                                  latent_case("tokens", num_indices=20)[1]], ids=str)
def test_emulated_core_poisoned_inputs(sm80, case):
    """Inputs as views inside NaN: the emulator's bounds checks and the NaN both catch reads of
    unselected memory; nothing around out and lse is written."""
    q, k, v, kwargs = make_core_inputs(case, torch.bfloat16, "cpu")
    run = emulated_core(sm80, sm_count=1)
    expected_out, expected_lse = run(q, k, v, **kwargs)
    views = {name: poisoned(value) if torch.is_tensor(value) else value
             for name, value in kwargs.items()}
    q_view = poisoned(q)
    k_view = poisoned(k) if k.is_floating_point() else k
    out, lse = run(q_view, k_view, poisoned(v) if v is not None else None, **views)
    torch.testing.assert_close(out, expected_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, expected_lse, atol=0, rtol=0)


def test_emulated_core_checks_indices_when_asked():
    """DEEPSEEK_ATTN_CHECK_INDICES=1 (read once per process) turns CUDA's skipping of
    out-of-range entries into the CPU's error."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "from emulation.build import build_module\n"
        "from test_core import CoreCase, make_core_inputs\n"
        "from test_emulated_core import emulated_core\n"
        "q, k, v, kwargs = make_core_inputs(CoreCase('paged', 'tokens', num_indices=4), "
        "torch.bfloat16, 'cpu')\n"
        "kwargs['indices'][0, 0, 0, 0] = 999\n"
        "try:\n"
        "    emulated_core(build_module(80))(q, k, v, **kwargs)\n"
        "except ValueError as error:\n"
        "    print(error)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                            text=True, env=dict(os.environ, DEEPSEEK_ATTN_CHECK_INDICES="1"),
                            timeout=600)
    assert "indices[0, 0, 0, 0] = 999 is out of range" in result.stdout, result.stderr[-2000:]
