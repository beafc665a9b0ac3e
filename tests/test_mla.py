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
     r"q must be \(batch, seqlen_q, heads, 500\), one value per value of a cache row"),
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


@pytest.mark.parametrize("change, message", [
    (dict(q_dtype=torch.float16), r"k must have the same dtype as q \(got BFloat16 and Half\)"),
    (dict(table_dtype=torch.int64), r"block_table must have dtype Int \(got Long\)"),
    (dict(lengths_dtype=torch.float32), r"cache_seqlens must have dtype Int \(got Float\)"),
], ids=["q_dtype", "block_table_dtype", "cache_seqlens_dtype"])
def test_mla_decode_rejects_wrong_dtypes(change, message):
    cache = MLAKVCache(2, 8, page_size=4)
    cache.append(torch.randn(2, 3, 512), torch.randn(2, 3, 64))
    q = torch.randn(2, 1, 4, 576).to(change.get("q_dtype", torch.bfloat16))
    with pytest.raises(TypeError, match=message):
        mla_decode(q, cache.kv_cache, cache.block_table.to(change.get("table_dtype", torch.int32)),
                   cache.cache_seqlens.to(change.get("lengths_dtype", torch.int32)))


def test_mla_decode_compiles():
    cache = MLAKVCache(2, 64, page_size=16)
    cache.append(torch.randn(2, 20, 512), torch.randn(2, 20, 64))
    q = torch.randn(2, 1, 4, 576, dtype=torch.bfloat16)
    compiled = torch.compile(deepseek_attn.mla_decode, fullgraph=True, backend="aot_eager")
    expected = mla_decode(q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    actual = compiled(q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    torch.testing.assert_close(actual[0], expected[0], atol=0, rtol=0)


# --- The fused latent epilogue: mla_norm_rope (RMSNorm, interleaved RoPE, cache write) ---------

NORM_ROPE_DEVICES = device_params("deepseek_attn::mla_norm_rope")
# (groups, dim, norm_dim, rope_dim): the latent [c_kv | k_pe], the per-head query (RoPE on the
# last 64), the compressed query (norm only), and odd sizes.
NORM_ROPE_SHAPES = [(1, 576, 512, 64), (3, 192, 0, 64), (1, 96, 96, 0), (2, 37, 17, 10)]


def norm_rope_inputs(tokens, groups, dim, norm_dim, rope_dim, dtype, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, groups, dim, generator=generator).to(dtype).to(device)
    weight = (1 + 0.2 * torch.randn(norm_dim, generator=generator)).to(dtype).to(device)
    angles = torch.rand(tokens, rope_dim // 2, generator=generator, dtype=torch.float64) * 50
    table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    cos, sin = (angles.cos().to(table_dtype).to(device), angles.sin().to(table_dtype).to(device))
    return (x, weight if norm_dim else None, cos if rope_dim else None,
            sin if rope_dim else None)


def norm_rope_ref(x, weight, cos, sin, eps=1e-6):
    """SPEC §3 in fp64 through reference/mla.py's RMSNorm and a rope on explicit angles."""
    from deepseek_attn.reference import rms_norm_ref

    x = x.double()
    norm_dim = 0 if weight is None else weight.shape[0]
    pairs = 0 if cos is None else cos.shape[-1]
    normed, copied, rope = x.split([norm_dim, x.shape[-1] - norm_dim - 2 * pairs, 2 * pairs], -1)
    if norm_dim:
        normed = rms_norm_ref(normed, weight.double(), eps)
    if pairs:
        even, odd = rope.unflatten(-1, (pairs, 2)).unbind(-1)
        c, s = cos.double()[:, None], sin.double()[:, None]
        rope = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)
    return torch.cat([normed, copied, rope], dim=-1)


@pytest.mark.parametrize("device", NORM_ROPE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("groups, dim, norm_dim, rope_dim", NORM_ROPE_SHAPES)
def test_norm_rope_matches_reference(device, dtype, groups, dim, norm_dim, rope_dim):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("fp64 runs on CPU only")
    x, weight, cos, sin = norm_rope_inputs(7, groups, dim, norm_dim, rope_dim, dtype, device)
    y, rstd = torch.ops.deepseek_attn.mla_norm_rope(x, weight, cos, sin, 1e-6)
    exact = norm_rope_ref(x.cpu(), None if weight is None else weight.cpu(),
                          None if cos is None else cos.cpu(), None if sin is None else sin.cpu())
    assert y.dtype == dtype and rstd.shape == (7, groups)
    # One rounding of an fp32 value (fp64: the formula's own rounding).
    tolerance = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3,
                 torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(y.cpu().double(), exact, atol=tolerance * 4, rtol=tolerance)
    if norm_dim:
        expected_rstd = x.cpu().double()[..., :norm_dim].pow(2).mean(-1).add(1e-6).rsqrt()
        torch.testing.assert_close(rstd.cpu().double(), expected_rstd, rtol=1e-6, atol=0)


@pytest.mark.parametrize("groups, dim, norm_dim, rope_dim", NORM_ROPE_SHAPES)
def test_norm_rope_gradcheck(groups, dim, norm_dim, rope_dim):
    from deepseek_attn.mla import MlaNormRopeFunction

    x, weight, cos, sin = norm_rope_inputs(3, groups, dim, norm_dim, rope_dim, torch.float64)
    x.requires_grad_(True)
    if weight is not None:
        weight.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w: MlaNormRopeFunction.apply(x, w, cos, sin, 1e-6, None, None)[0],
        (x, weight), atol=1e-8)


@pytest.mark.parametrize("device", NORM_ROPE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_rope_backward_matches_autograd_of_the_reference(device, dtype):
    from deepseek_attn.mla import mla_norm_rope

    x, weight, cos, sin = norm_rope_inputs(9, 1, 576, 512, 64, dtype, device)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    dy = torch.randn(x.shape, dtype=dtype, device=device)
    torch.autograd.backward(mla_norm_rope(x, weight, cos, sin), dy)
    x_ref = x.detach().cpu().double().requires_grad_(True)
    w_ref = weight.detach().cpu().double().requires_grad_(True)
    torch.autograd.backward(norm_rope_ref(x_ref, w_ref, cos.cpu(), sin.cpu()), dy.cpu().double())
    tolerance = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad.cpu().double(), x_ref.grad, atol=tolerance, rtol=tolerance)
    # The weight gradient sums over 9 tokens, rounded once.
    torch.testing.assert_close(weight.grad.cpu().double(), w_ref.grad, atol=tolerance * 4,
                               rtol=tolerance)


@pytest.mark.parametrize("device", NORM_ROPE_DEVICES)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16_cache", "fp8_cache"])
def test_norm_rope_writes_its_rows_into_the_cache(device, fp8):
    """Each token's y row lands in its slot (FP8: SPEC §3's quantisation of that row); slot -1
    writes nothing and every other row stays as it was."""
    from deepseek_attn.reference.core import quantize_latent_fp8_ref

    x, weight, cos, sin = norm_rope_inputs(5, 1, 576, 512, 64, torch.bfloat16, device)
    rows = torch.randn(8, 656 if fp8 else 576).to(torch.uint8 if fp8 else torch.bfloat16)
    cache = (rows.view(torch.float8_e4m3fn) if fp8 else rows).to(device)
    before = cache.clone()
    slots = torch.tensor([6, 0, -1, 3, 7], device=device)
    y, _ = torch.ops.deepseek_attn.mla_norm_rope(x, weight, cos, sin, 1e-6, cache, slots)
    expected = before.clone()
    written = y[[0, 1, 3, 4], 0]
    if fp8:
        expected.view(torch.uint8)[[6, 0, 3, 7]] = quantize_latent_fp8_ref(written.cpu()).to(device)
    else:
        expected[[6, 0, 3, 7]] = written
    assert torch.equal(cache.view(torch.uint8), expected.view(torch.uint8))


def test_norm_rope_opcheck():
    x, weight, cos, sin = norm_rope_inputs(4, 1, 576, 512, 64, torch.float32)
    cache, slots = torch.zeros(6, 576), torch.tensor([1, 5, -1, 0])
    torch.library.opcheck(torch.ops.deepseek_attn.mla_norm_rope,
                          (x, weight, cos, sin, 1e-6, cache, slots))
    torch.library.opcheck(torch.ops.deepseek_attn.mla_norm_rope, (x, None, cos, sin, 1e-6))
    y, rstd = torch.ops.deepseek_attn.mla_norm_rope(x, weight, cos, sin, 1e-6)
    torch.library.opcheck(torch.ops.deepseek_attn.mla_norm_rope_bwd,
                          (torch.randn_like(y), x, weight, rstd, cos, sin))


def test_norm_rope_compiles():
    from deepseek_attn.mla import mla_norm_rope

    x, weight, cos, sin = norm_rope_inputs(4, 2, 192, 0, 64, torch.float32)
    compiled = torch.compile(mla_norm_rope, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, None, cos, sin), mla_norm_rope(x, None, cos, sin),
                               atol=0, rtol=0)


def _norm_rope_call(x=None, weight="default", cos="default", sin="default", cache=None,
                    slots=None):
    x0, w0, c0, s0 = norm_rope_inputs(3, 1, 576, 512, 64, torch.float32)
    pick = lambda given, default: default if isinstance(given, str) else given  # noqa: E731
    return torch.ops.deepseek_attn.mla_norm_rope(
        x0 if x is None else x, pick(weight, w0), pick(cos, c0), pick(sin, s0), 1e-6, cache, slots)


@pytest.mark.parametrize("call, error, message", [
    (lambda: _norm_rope_call(x=torch.randn(3, 576)), ValueError,
     r"x must have 3 dimensions \(tokens, groups, dim\)"),
    (lambda: _norm_rope_call(x=torch.randn(3, 1, 576, dtype=torch.bfloat16)), TypeError,
     r"norm_weight must have the same dtype as x"),
    (lambda: _norm_rope_call(sin=None), ValueError, r"rope_cos and rope_sin must be given together"),
    (lambda: _norm_rope_call(cos=torch.zeros(3, 32, dtype=torch.float64)), TypeError,
     r"rope_cos must have dtype Float"),
    (lambda: _norm_rope_call(cos=torch.zeros(4, 32), sin=torch.zeros(4, 32)), ValueError,
     r"rope_cos.size\(0\) \(tokens, as x.size\(0\)\) must be 3"),
    (lambda: _norm_rope_call(weight=torch.ones(540)), ValueError,
     r"the normalised columns \(540\) and the rotated ones \(64\) must fit"),
    (lambda: _norm_rope_call(cache=torch.zeros(4, 576)), ValueError,
     r"cache and cache_slots must be given together"),
    (lambda: _norm_rope_call(cache=torch.zeros(4, 576), slots=torch.tensor([0, 1, 4])),
     ValueError, r"cache_slots\[2\] must be -1 \(skip\) or a row of the cache in \[0, 4\)"),
    (lambda: _norm_rope_call(cache=torch.zeros(4, 576), slots=torch.tensor([0, 1, 2],
                                                                           dtype=torch.int32)),
     TypeError, r"cache_slots must have dtype Long"),
    (lambda: _norm_rope_call(cache=torch.zeros(4, 576, dtype=torch.bfloat16),
                             slots=torch.tensor([0, 1, 2])), TypeError,
     r"cache must have the same dtype as x"),
    (lambda: _norm_rope_call(cache=torch.zeros(4, 600, dtype=torch.uint8),
                             slots=torch.tensor([0, 1, 2])), ValueError,
     r"an FP8 cache holds SPEC §3 rows of 656 bytes"),
    (lambda: _norm_rope_call(x=torch.randn(3, 2, 576), cache=torch.zeros(4, 576),
                             slots=torch.tensor([0, 1, 2])), ValueError,
     r"a cache takes one row per token"),
], ids=["x_rank", "weight_dtype", "sin_missing", "cos_dtype", "cos_tokens", "too_wide",
        "slots_missing", "slot_out_of_range", "slots_dtype", "cache_dtype", "fp8_row", "groups"])
def test_norm_rope_rejects_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
