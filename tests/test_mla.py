"""MLA (SPEC §3): the latent KV cache and absorbed decode (`mla_decode`, FlashMLA's
conventions) against the one-sequence-at-a-time fp64 reference of reference/mla.py."""

import pytest
import torch

import deepseek_attn
from deepseek_attn import MLAKVCache, mla_decode
from deepseek_attn.reference import mla_decode_ref
from deepseek_attn.testing import assert_spec6_close

from conftest import device_params

MLA_DEVICES = device_params("deepseek_attn::attention_core_fwd")


def shuffled_paged_cache(lengths, page_size, fp8, generator, dtype=torch.bfloat16):
    """A cache whose pages are handed out in random order, filled through MLAKVCache.append one
    sequence-length at a time (the rows are random latent values)."""
    batch, longest = len(lengths), max(lengths)
    c_kv = torch.randn(batch, longest, 512, generator=generator)
    k_pe = torch.randn(batch, longest, 64, generator=generator)
    cache = MLAKVCache(batch, max(longest, 1), page_size=page_size, dtype=dtype, fp8=fp8)
    if page_size is not None:
        order = torch.randperm(cache.kv_cache.shape[0], generator=generator).int()
        cache.block_table = order[cache.block_table.flatten().long()].view_as(cache.block_table)
    cache.append(c_kv, k_pe)
    cache.cache_seqlens = torch.tensor(lengths, dtype=torch.int32)  # uneven lengths
    return cache


def to_device(cache, device):
    for name in ("kv_cache", "block_table", "cache_seqlens"):
        setattr(cache, name, getattr(cache, name).to(device))
    return cache


@pytest.mark.parametrize("device", MLA_DEVICES)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16_cache", "fp8_cache"])
@pytest.mark.parametrize("seqlen_q", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("page_size", [64, None], ids=["paged64", "contiguous"])
def test_mla_decode_matches_reference(device, fp8, seqlen_q, causal, page_size):
    generator = torch.Generator().manual_seed(0)
    cache = to_device(shuffled_paged_cache([1, 64, 200], page_size, fp8, generator), device)
    q = (torch.randn(3, seqlen_q, 16, 576, generator=generator) * 0.3).to(device, torch.bfloat16)
    out, lse = mla_decode(q, cache.kv_cache, cache.block_table if page_size else None,
                          cache.cache_seqlens, causal=causal, is_fp8_kvcache=fp8)
    assert out.shape == (3, seqlen_q, 16, 512) and lse.shape == (3, 16, seqlen_q)
    args = (q.cpu(), cache.kv_cache.cpu(), cache.block_table.cpu() if page_size else None,
            cache.cache_seqlens.cpu())
    exact_out, exact_lse = mla_decode_ref(*args, causal=causal)
    same_out, _ = mla_decode_ref(*args, causal=causal, dtype=torch.bfloat16)
    assert_spec6_close("out", out.cpu(), same_out, exact_out, factor=2)
    finite = torch.isfinite(exact_lse)
    assert torch.equal(finite, torch.isfinite(lse.cpu()))
    torch.testing.assert_close(lse.cpu()[finite], exact_lse[finite], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("device", MLA_DEVICES)
def test_mla_fp8_cache_within_the_fp8_rule_of_the_bf16_cache(device):
    """SPEC §6 FP8 rule: 1 - 2·Σ(a·r)/Σ(a² + r²) <= 1e-3 between the two caches' outputs."""
    outputs = []
    for fp8 in (False, True):
        generator = torch.Generator().manual_seed(1)
        cache = to_device(shuffled_paged_cache([300, 77], 64, fp8, generator), device)
        q = torch.randn(2, 1, 16, 576, generator=torch.Generator().manual_seed(3)) * 0.3
        q = q.to(device, torch.bfloat16)
        outputs.append(cache.decode(q)[0].double().cpu())
    a, r = outputs
    assert 1 - 2 * (a * r).sum() / (a * a + r * r).sum() <= 1e-3


@pytest.mark.parametrize("device", MLA_DEVICES)
def test_mla_paged_equals_contiguous(device):
    results = []
    for page_size in (16, None):
        generator = torch.Generator().manual_seed(2)
        cache = to_device(shuffled_paged_cache([50, 90], page_size, False, generator), device)
        q = torch.randn(2, 2, 8, 576, generator=torch.Generator().manual_seed(3)) * 0.3
        q = q.to(device, torch.bfloat16)
        results.append(cache.decode(q))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=0, rtol=0)


def test_mla_cache_bytes_per_token():
    assert MLAKVCache(1, 64).bytes_per_token == 1152
    assert MLAKVCache(1, 64, fp8=True).bytes_per_token == 656
    assert MLAKVCache(1, 64, fp8=True).kv_cache.dtype == torch.float8_e4m3fn


def test_mla_cache_fp8_rows_follow_spec3():
    """The appended FP8 row is SPEC §3's layout: e4m3 values times power-of-two scales give the
    latent back within e4m3 precision, and k_pe is its bf16 rounding."""
    from deepseek_attn.reference import dequantize_latent_fp8_ref

    cache = MLAKVCache(1, 4, page_size=None, fp8=True)
    c_kv, k_pe = torch.randn(1, 3, 512), torch.randn(1, 3, 64)
    cache.append(c_kv, k_pe)
    rows = cache.kv_cache.view(torch.uint8)[0, :3, 0]
    scales = rows[:, 512:528].contiguous().view(torch.float32)
    assert torch.equal(torch.log2(scales), torch.log2(scales).round())
    values = dequantize_latent_fp8_ref(rows)
    torch.testing.assert_close(values[:, 512:], k_pe[0].bfloat16().float(), atol=0, rtol=0)
    torch.testing.assert_close(values[:, :512], c_kv[0], atol=0.07 * c_kv.abs().max(), rtol=0.07)


def test_mla_full_cache_raises_and_changes_nothing():
    cache = MLAKVCache(2, 10, page_size=4)
    cache.append(torch.randn(2, 8, 512), torch.randn(2, 8, 64))
    before = (cache.kv_cache.clone(), cache.cache_seqlens.clone())
    with pytest.raises(ValueError, match=r"the cache is full: a sequence holds 8 of 10 tokens"):
        cache.append(torch.randn(2, 3, 512), torch.randn(2, 3, 64))
    assert torch.equal(cache.kv_cache, before[0]) and torch.equal(cache.cache_seqlens, before[1])


@pytest.mark.parametrize("call, message", [
    (lambda c, q: mla_decode(q, c.kv_cache, c.block_table, c.cache_seqlens, is_fp8_kvcache=True),
     r"is_fp8_kvcache=True needs 656-byte rows"),
    (lambda c, q: mla_decode(q, c.kv_cache.view(torch.uint8)[..., :656].contiguous().view(
        torch.float8_e4m3fn), c.block_table, c.cache_seqlens),
     r"pass is_fp8_kvcache=True"),
    (lambda c, q: mla_decode(q[..., :512], c.kv_cache, c.block_table, c.cache_seqlens),
     r"q must be \(batch, seqlen_q, heads, 576\)"),
    (lambda c, q: mla_decode(q, c.kv_cache[..., :500], c.block_table, c.cache_seqlens),
     r"kv_cache rows must hold 576 values"),
    (lambda c, q: mla_decode(q, c.kv_cache, c.block_table + 100, c.cache_seqlens),
     r"block_table\[0, 0\] must be a page of k"),
    (lambda c, q: c.append(torch.randn(2, 1, 512), torch.randn(2, 1, 32)),
     r"k_pe must be \(2, 1, 64\)"),
], ids=["fp8_flag_on_bf16", "fp8_bytes_without_flag", "q_dim", "row_dim", "page_out_of_range",
        "k_pe_dim"])
def test_mla_rejects_bad_inputs(call, message):
    cache = MLAKVCache(2, 8, page_size=4)
    cache.append(torch.randn(2, 3, 512), torch.randn(2, 3, 64))
    with pytest.raises(ValueError, match=message):
        call(cache, torch.randn(2, 1, 4, 576, dtype=torch.bfloat16))


def test_mla_decode_compiles():
    cache = MLAKVCache(2, 64, page_size=16)
    cache.append(torch.randn(2, 20, 512), torch.randn(2, 20, 64))
    q = torch.randn(2, 1, 4, 576, dtype=torch.bfloat16)
    compiled = torch.compile(deepseek_attn.mla_decode, fullgraph=True, backend="aot_eager")
    expected = mla_decode(q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    actual = compiled(q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    torch.testing.assert_close(actual[0], expected[0], atol=0, rtol=0)
