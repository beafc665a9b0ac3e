"""mla_decode's CUDA path (the core's latent kernels) on the CPU emulator: the cases of
test_mla.py against the same fp64 reference, on the A100- and H100-like emulated devices."""

import pytest
import torch

from deepseek_attn.mla import mla_decode_core_args
from deepseek_attn.reference import mla_decode_ref
from deepseek_attn.testing import assert_spec6_close

from test_emulated_kernels import sm80, sm90  # noqa: F401  (session fixtures)
from test_mla import shuffled_paged_cache


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16_cache", "fp8_cache"])
@pytest.mark.parametrize("seqlen_q, causal", [(1, False), (2, True)])
@pytest.mark.parametrize("arch", [80, 90])
def test_emulated_mla_decode_matches_reference(sm80, sm90, arch, fp8, seqlen_q, causal):
    """Uneven lengths (1, 64, 200) over shuffled 64-token pages; 132 SMs split the long one."""
    generator = torch.Generator().manual_seed(0)
    cache = shuffled_paged_cache([1, 64, 200], 64, fp8, generator)
    q = (torch.randn(3, seqlen_q, 16, 576, generator=generator) * 0.3).to(torch.bfloat16)
    module = sm80 if arch == 80 else sm90
    args = mla_decode_core_args(q, cache.kv_cache, cache.block_table, cache.cache_seqlens,
                                causal=causal, is_fp8_kvcache=fp8)
    out, lse = module.attention_core_fwd(*args, 132)
    reference_args = (q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    exact_out, exact_lse = mla_decode_ref(*reference_args, causal=causal)
    same_out, _ = mla_decode_ref(*reference_args, causal=causal, dtype=torch.bfloat16)
    assert_spec6_close("out", out, same_out, exact_out, factor=2)
    torch.testing.assert_close(lse, exact_lse, atol=2e-3, rtol=1e-3)


def check_balanced_decode(module, fp8, sm_count):
    """mla_decode over lengths 0, 1, 300, 17, 64 (16-key pages) on `sm_count` emulated SMs
    against the fp64 reference; returns the (splits, balanced) plan it ran."""
    generator = torch.Generator().manual_seed(1)
    cache = shuffled_paged_cache([0, 1, 300, 17, 64], 16, fp8, generator)
    q = (torch.randn(5, 1, 16, 576, generator=generator) * 0.3).to(torch.bfloat16)
    args = mla_decode_core_args(q, cache.kv_cache, cache.block_table, cache.cache_seqlens,
                                causal=True, is_fp8_kvcache=fp8)
    plan = module.core_split_plan(q, args[1], cache.block_table, cache.cache_seqlens, args[7],
                                  True, sm_count)
    out, lse = module.attention_core_fwd(*args, sm_count)
    reference_args = (q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    exact_out, exact_lse = mla_decode_ref(*reference_args, causal=True)
    same_out, _ = mla_decode_ref(*reference_args, causal=True, dtype=torch.bfloat16)
    assert_spec6_close("out", out, same_out, exact_out, factor=2)
    torch.testing.assert_close(lse, exact_lse, atol=2e-3, rtol=1e-3)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isneginf(lse[0]).all()
    return plan


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16_cache", "fp8_cache"])
@pytest.mark.parametrize("sm_count, parts", [(1, 1), (2, 4), (5, 10), (132, 95)])
def test_emulated_mla_decode_balanced_schedule(sm80, fp8, sm_count, parts):
    """The 26 key blocks shared by `parts` parts laid over the sequences end to end: pieces
    cross sequence ends, part ends fall inside sequences, and the empty sequence gets 0 and
    -inf. One SM: no split (the row tile fills it); 132 SMs: as many parts as the cache could
    hold blocks (5 x 19, the host does not read the lengths), most of them empty."""
    assert check_balanced_decode(sm80, fp8, sm_count) == (parts, parts > 1)


# --- The fused latent epilogue (mla/kernels/norm_rope.cuh) --------------------------------------

from test_mla import NORM_ROPE_SHAPES, norm_rope_inputs  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("groups, dim, norm_dim, rope_dim", NORM_ROPE_SHAPES)
def test_emulated_norm_rope_matches_cpu(sm80, dtype, groups, dim, norm_dim, rope_dim):
    """Forward and backward kernels against the CPU op (the same fp32 formula; sums differ only
    in order), 41 rows so the last CTA is partial."""
    x, weight, cos, sin = norm_rope_inputs(41 // groups, groups, dim, norm_dim, rope_dim, dtype)
    y, rstd = sm80.mla_norm_rope(x, weight, cos, sin, 1e-6, None, None)
    y_cpu, rstd_cpu = torch.ops.deepseek_attn.mla_norm_rope(x, weight, cos, sin, 1e-6)
    ulp = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(y.float(), y_cpu.float(), atol=ulp * 4, rtol=ulp)
    torch.testing.assert_close(rstd, rstd_cpu, atol=0, rtol=1e-6)
    dy = torch.randn(x.shape).to(dtype)
    dx, dweight = sm80.mla_norm_rope_bwd(dy, x, weight, rstd, cos, sin)
    dx_cpu, dweight_cpu = torch.ops.deepseek_attn.mla_norm_rope_bwd(dy, x, weight, rstd, cos, sin)
    torch.testing.assert_close(dx.float(), dx_cpu.float(), atol=ulp * 4, rtol=ulp)
    torch.testing.assert_close(dweight.float(), dweight_cpu.float(), atol=ulp * 16, rtol=ulp * 4)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16_cache", "fp8_cache"])
def test_emulated_norm_rope_cache_write_matches_cpu(sm80, fp8):
    """The cache rows the kernel writes are the CPU op's, byte for byte where the y rows agree
    (FP8: the same quantisation of the same bf16 values); slot -1 and out-of-range slots (skipped
    on CUDA) leave every other row untouched."""
    x, weight, cos, sin = norm_rope_inputs(5, 1, 576, 512, 64, torch.bfloat16)
    rows = torch.randn(8, 656 if fp8 else 576).to(torch.uint8 if fp8 else torch.bfloat16)
    cache = rows.view(torch.float8_e4m3fn) if fp8 else rows
    cache_cpu = cache.clone()
    y, _ = sm80.mla_norm_rope(x, weight, cos, sin, 1e-6, cache, torch.tensor([6, 0, -1, 3, 8]))
    y_cpu, _ = torch.ops.deepseek_attn.mla_norm_rope(x, weight, cos, sin, 1e-6, cache_cpu,
                                                     torch.tensor([6, 0, -1, 3, -1]))
    same_rows = [slot for token, slot in ((0, 6), (1, 0), (3, 3))
                 if torch.equal(y[token], y_cpu[token])]
    assert len(same_rows) >= 2  # bf16 rounding of sums in another order rarely differs
    untouched = [1, 2, 4, 5, 7]
    assert torch.equal(cache.view(torch.uint8)[same_rows + untouched],
                       cache_cpu.view(torch.uint8)[same_rows + untouched])


def test_emulated_norm_rope_fp8_rows_are_the_spec3_quantisation_of_y(sm80):
    from test_emulated_mutations import run_norm_rope_fp8_cache_write

    run_norm_rope_fp8_cache_write(sm80)
