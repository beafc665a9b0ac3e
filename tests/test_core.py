"""The shared attention core (csrc/core/) forward: every KV source (dense, paged, latent bf16 and
FP8) with every key selection (window band, token lists, block lists) against the fp64
reference of deepseek_attn/reference/core.py, under the SPEC §6 rules. The emulated CUDA kernels
run the same cases (test_emulated_core.py)."""

import dataclasses

import pytest
import torch

from deepseek_attn.core import attention_core_fwd
from deepseek_attn.reference import attention_core_ref, quantize_latent_fp8_ref
from deepseek_attn.testing import assert_spec6_close, check_poison, poisoned

from conftest import device_params

CORE_DEVICES = device_params("deepseek_attn::attention_core_fwd")


@dataclasses.dataclass(frozen=True)
class CoreCase:
    """One forward problem. source: dense | paged | latent | latent_fp8 (latent ones paged, one
    kv head, 576/512); selection: band | tokens | blocks."""
    source: str
    selection: str
    batch: int = 2
    seqlen_q: int = 3
    seqlen_k: int = 77
    heads_q: int = 4
    heads_kv: int = 2
    head_dim: int = 64
    head_dim_v: int = 64
    page_size: int = 16
    causal: bool = False
    window: tuple = (-1, -1)
    num_indices: int = 12
    index_block_size: int = 1
    softcap: float = 0.0

    @property
    def latent(self):
        return self.source.startswith("latent")

    @property
    def paged(self):
        return self.source != "dense"

    def __str__(self):
        return (f"{self.source}-{self.selection}-b{self.batch}-q{self.seqlen_q}-k{self.seqlen_k}"
                f"-h{self.heads_q}x{self.heads_kv}-d{self.head_dim}x{self.head_dim_v}"
                f"-p{self.page_size}-c{int(self.causal)}-w{self.window[0]}_{self.window[1]}"
                f"-n{self.num_indices}x{self.index_block_size}-cap{self.softcap}")


def latent_case(selection, **kwargs):
    base = dict(heads_q=8, heads_kv=1, head_dim=576, head_dim_v=512, page_size=64,
                seqlen_q=2, seqlen_k=150, causal=True)
    base.update(kwargs)
    return CoreCase("latent", selection, **base), CoreCase("latent_fp8", selection, **base)


CORE_CASES = [
    CoreCase("dense", "band", causal=True, seqlen_q=37, seqlen_k=53),
    CoreCase("paged", "band", causal=True, seqlen_q=1, heads_q=8, heads_kv=2),
    CoreCase("paged", "band", causal=True, seqlen_q=5, page_size=64, seqlen_k=200),
    CoreCase("paged", "band", window=(20, 3), seqlen_q=9, head_dim=128, head_dim_v=128),
    CoreCase("paged", "band", seqlen_q=4, page_size=1, seqlen_k=9, softcap=4.0),
    *latent_case("band"),
    CoreCase("dense", "tokens", seqlen_q=7),
    CoreCase("dense", "tokens", seqlen_q=5, causal=True, num_indices=40, head_dim=128,
             head_dim_v=128, heads_q=8, heads_kv=1),
    CoreCase("paged", "tokens", seqlen_q=4, num_indices=300),
    *latent_case("tokens", num_indices=40, causal=False),
    CoreCase("dense", "blocks", causal=True, seqlen_q=20, seqlen_k=100, num_indices=3,
             index_block_size=16),
    CoreCase("dense", "blocks", causal=True, seqlen_q=6, seqlen_k=130, num_indices=2,
             index_block_size=64, head_dim=128, head_dim_v=128),
    CoreCase("paged", "blocks", causal=True, seqlen_q=3, seqlen_k=90, num_indices=4,
             index_block_size=32),
    *latent_case("blocks", num_indices=2, index_block_size=64),
]


def make_core_inputs(case, dtype, device, seed=0):
    """(q, kwargs of attention_core_fwd): random pages in shuffled order, sequence lengths from
    0 to seqlen_k, index lists with -1 slots and duplicates."""
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator)
    batch, heads_kv = case.batch, case.heads_kv
    q = randn(batch, case.seqlen_q, case.heads_q, case.head_dim)
    if case.latent:
        q = q * 0.3  # 576-wide dot products: keep the softmax away from one-hot
    kwargs = dict(causal=case.causal, window_size=case.window, softcap=case.softcap)
    lengths = torch.tensor([case.seqlen_k] + [case.seqlen_k * (b % 3) // 3
                                              for b in range(1, batch)], dtype=torch.int32)
    if case.paged:
        page = case.page_size
        max_pages = -(-case.seqlen_k // page)
        num_pages = batch * max_pages + 3
        shape = (num_pages, page, heads_kv)
        table = torch.randperm(num_pages, generator=generator)[:batch * max_pages]
        table = table.view(batch, max_pages).int()
        for b in range(batch):  # slots past a sequence's end hold -1, as in serving caches
            table[b, -(-int(lengths[b]) // page):] = -1
        kwargs.update(block_table=table, cache_seqlens=lengths)
    else:
        shape = (batch, case.seqlen_k, heads_kv)
        kwargs.update(cache_seqlens=lengths) if batch > 1 else None
    if case.latent:
        rows = randn(*shape, case.head_dim)
        k = quantize_latent_fp8_ref(rows) if case.source == "latent_fp8" else rows.to(dtype)
        kwargs.update(head_dim_v=case.head_dim_v)
        v = None
    else:
        k, v = randn(*shape, case.head_dim).to(dtype), randn(*shape, case.head_dim_v).to(dtype)
    if case.selection != "band":
        units = torch.clamp(lengths // case.index_block_size, min=1)
        idx = torch.stack([torch.randint(-1, int(units[b]), (case.seqlen_q, heads_kv,
                                                             case.num_indices),
                                         generator=generator) for b in range(batch)])
        idx[:, :, :, 1] = idx[:, :, :, 0]  # a duplicate in every list
        for b in range(batch):
            if lengths[b] < case.index_block_size:
                idx[b] = -1  # nothing to select in an empty (or short) sequence
        kwargs.update(indices=idx.int(), index_block_size=case.index_block_size)
    kwargs = {name: value.to(device) if torch.is_tensor(value) else value
              for name, value in kwargs.items()}
    return q.to(device, dtype), k.to(device), (v.to(device) if v is not None else None), kwargs


def check_core_forward(run, case, dtype, device):
    """run(q, k, v, **kwargs) -> (out, lse), against the fp64 reference (SPEC §6)."""
    q, k, v, kwargs = make_core_inputs(case, dtype, device)
    out, lse = run(q, k, v, **kwargs)
    cpu = {name: value.cpu() if torch.is_tensor(value) else value for name, value in kwargs.items()}
    q_cpu, k_cpu, v_cpu = q.cpu(), k.cpu(), (v.cpu() if v is not None else None)
    exact_out, exact_lse = attention_core_ref(q_cpu, k_cpu, v_cpu, **cpu)
    assert out.dtype == dtype and out.shape == exact_out.shape
    assert torch.equal(torch.isinf(lse.cpu()), torch.isinf(exact_lse)), "empty rows differ"
    finite = torch.isfinite(exact_lse)
    torch.testing.assert_close(lse.cpu()[finite], exact_lse[finite], atol=2e-3, rtol=1e-3)
    if dtype == torch.float32:
        torch.testing.assert_close(out.cpu().double(), exact_out, atol=1e-4, rtol=1e-4)
    else:
        same_out, _ = attention_core_ref(q_cpu, k_cpu, v_cpu, **cpu, dtype=dtype)
        assert_spec6_close("out", out.cpu(), same_out, exact_out, factor=2)
    assert torch.all(out.cpu()[~finite.transpose(1, 2)] == 0), "empty rows must output 0"


@pytest.mark.parametrize("device", CORE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CORE_CASES, ids=str)
def test_core_forward_matches_reference(device, dtype, case):
    if device == "cuda" and dtype == torch.float32:
        pytest.skip("CUDA core kernels take bf16/fp16")
    check_core_forward(attention_core_fwd, case, dtype, device)


@pytest.mark.parametrize("device", CORE_DEVICES)
def test_core_dense_band_matches_flash_attn(device):
    """flash_attn_fwd is the core over a dense source and the band: the same numbers."""
    import deepseek_attn

    q, k, v, _ = make_core_inputs(CoreCase("dense", "band", batch=1, causal=True), torch.bfloat16,
                                  device)
    out, lse = attention_core_fwd(q, k, v, causal=True)
    flash_out, flash_lse = deepseek_attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)[:2]
    torch.testing.assert_close(out, flash_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, flash_lse, atol=0, rtol=0)


@pytest.mark.parametrize("device", CORE_DEVICES)
def test_core_all_empty_lists_give_zero_rows(device):
    case = CoreCase("paged", "tokens", num_indices=5)
    q, k, v, kwargs = make_core_inputs(case, torch.bfloat16, device)
    kwargs["indices"] = torch.full_like(kwargs["indices"], -1)
    out, lse = attention_core_fwd(q, k, v, **kwargs)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))


@pytest.mark.parametrize("device", CORE_DEVICES)
@pytest.mark.parametrize("case", [CORE_CASES[2], CORE_CASES[10], CORE_CASES[6]], ids=str)
def test_core_poisoned_inputs(device, case):
    """Every input as a view inside NaN: nothing outside the selected keys is read, nothing
    outside out/lse is written."""
    q, k, v, kwargs = make_core_inputs(case, torch.bfloat16, device)
    expected = attention_core_fwd(q, k, v, **kwargs)
    views = {name: poisoned(value) if torch.is_tensor(value) and value.is_floating_point()
             else value for name, value in kwargs.items()}
    out, lse = attention_core_fwd(poisoned(q), poisoned(k) if k.is_floating_point() else k,
                                  poisoned(v) if v is not None else None, **views)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected[0], atol=0, rtol=0)


def test_core_opcheck():
    case = CoreCase("paged", "tokens")
    q, k, v, kwargs = make_core_inputs(case, torch.float32, "cpu")
    args = (q, k, v, kwargs["block_table"], kwargs["cache_seqlens"], kwargs["indices"], 1, -1,
            0.125, False, -1, -1, 0.0)
    torch.library.opcheck(torch.ops.deepseek_attn.attention_core_fwd, args,
                          test_utils=("test_schema", "test_faketensor"))


def _call_with(case, **changes):
    q, k, v, kwargs = make_core_inputs(case, torch.float32, "cpu")
    inputs = dict(q=q, k=k, v=v, **kwargs)
    inputs.update(changes)
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    return lambda: attention_core_fwd(q, k, v, **inputs)


PAGED_TOKENS = CoreCase("paged", "tokens", num_indices=4)
LATENT_FP8 = latent_case("tokens")[1]


@pytest.mark.parametrize("make_call, error, message", [
    (lambda: _call_with(PAGED_TOKENS, indices=torch.full((2, 3, 2, 4), 500, dtype=torch.int32)),
     ValueError, r"indices\[0, 0, 0, 0\] = 500 is out of range: sequence 0 has 77 keys"),
    (lambda: _call_with(PAGED_TOKENS, indices=torch.full((2, 3, 2, 4), -2, dtype=torch.int32)),
     ValueError, r"-1 marks an empty slot"),
    (lambda: _call_with(PAGED_TOKENS, indices=torch.zeros((2, 3, 1, 4), dtype=torch.int32)),
     ValueError, r"indices.size\(2\) \(heads_kv, as in k\) must be 2"),
    (lambda: _call_with(PAGED_TOKENS, indices=torch.zeros((2, 3, 2, 4), dtype=torch.int64)),
     TypeError, r"indices must have dtype Int"),
    (lambda: _call_with(PAGED_TOKENS, index_block_size=0), ValueError,
     r"index_block_size must be >= 1"),
    (lambda: _call_with(PAGED_TOKENS, block_table=torch.full((2, 5), 99, dtype=torch.int32)),
     ValueError, r"block_table\[0, 0\] must be a page of k in \[0, 13\)"),
    (lambda: _call_with(PAGED_TOKENS, block_table=torch.zeros((3, 5), dtype=torch.int32)),
     ValueError, r"block_table.size\(0\) \(batch, as in q\) must be 2"),
    (lambda: _call_with(PAGED_TOKENS, cache_seqlens=torch.tensor([81, 0], dtype=torch.int32)),
     ValueError, r"cache_seqlens\[0\] must be in \[0, 80\]"),
    (lambda: _call_with(PAGED_TOKENS, cache_seqlens=torch.tensor([1, 2, 3], dtype=torch.int32)),
     ValueError, r"cache_seqlens.size\(0\) \(batch, as in q\) must be 2"),
    (lambda: _call_with(PAGED_TOKENS, v=torch.zeros(13, 16, 2, 64, dtype=torch.bfloat16)),
     TypeError, r"v must have the same dtype as q"),
    (lambda: _call_with(PAGED_TOKENS, v=torch.zeros(13, 8, 2, 64)),
     ValueError, r"v.size\(1\) \(as in k\) must be 16"),
    (lambda: _call_with(PAGED_TOKENS, v=None), ValueError,
     r"head_dim_v must be in \[1, 64\] when v is None"),
    (lambda: _call_with(PAGED_TOKENS, head_dim_v=32), ValueError,
     r"head_dim_v must be -1 or v's head dim 64"),
    (lambda: _call_with(LATENT_FP8, k=torch.zeros(5, 64, 1, 600, dtype=torch.uint8)),
     ValueError, r"k.size\(3\) \(bytes of an FP8 latent row, SPEC §3\) must be 656"),
    (lambda: _call_with(LATENT_FP8, q=torch.zeros(2, 2, 8, 512)), ValueError,
     r"q head_dim must be 576 to read the FP8 latent cache"),
    (lambda: _call_with(LATENT_FP8, head_dim_v=256), ValueError,
     r"head_dim_v must be -1 or 512 with the FP8 latent cache"),
    (lambda: _call_with(LATENT_FP8, v=torch.zeros(5, 64, 1, 512)), ValueError,
     r"v must be None with the FP8 latent cache"),
    (lambda: _call_with(LATENT_FP8, k=torch.zeros(5, 64, 2, 656, dtype=torch.uint8)),
     ValueError, r"k.size\(2\) \(heads_kv: the latent cache has one head\) must be 1"),
    (lambda: _call_with(PAGED_TOKENS, q=torch.zeros(2, 3, 3, 64)), ValueError,
     r"the number of query heads \(3\) must be a multiple"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_core_rejects_bad_inputs(make_call, error, message):
    with pytest.raises(error, match=message):
        make_call()()
