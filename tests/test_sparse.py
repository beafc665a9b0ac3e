"""Token-sparse attention (SPEC §4): `sparse_attn` over index lists against the same attention
as a dense masked formula (reference/core.py, duplicates weighted by their count) and against
flash_attn_func when the lists name every causal key: values and every gradient, GQA and MLA's
latent rows, -1 slots, duplicated indices and rows with no valid index."""

import pytest
import torch

import deepseek_attn
from deepseek_attn import sparse_attn
from deepseek_attn.reference import attention_core_ref
from deepseek_attn.testing import assert_spec6_close

from conftest import device_params

SPARSE_DEVICES = device_params("deepseek_attn::sparse_attn_bwd")


def sparse_inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, dim, dim_v, num_indices, dtype,
                  device="cpu", seed=0):
    """q, k, v (None for latent rows: dim_v < 0) and indices with -1 slots, a duplicated key
    (listed three times) and a row whose list is all -1."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seqlen_q, heads_q, dim, generator=generator).to(dtype)
    k = torch.randn(batch, seqlen_k, heads_kv, dim, generator=generator).to(dtype)
    v = (torch.randn(batch, seqlen_k, heads_kv, dim_v, generator=generator).to(dtype)
         if dim_v > 0 else None)
    indices = torch.randint(-1, seqlen_k, (batch, seqlen_q, heads_kv, num_indices),
                            generator=generator, dtype=torch.int32)
    indices[0, 0, 0] = -1
    indices[-1, -1, -1, :3] = seqlen_k // 2
    move = (lambda t: None if t is None else t.to(device))
    return move(q), move(k), move(v), indices.to(device)


def check_against_reference(q, k, v, indices, head_dim_v, factor_out=2, factor_grad=3):
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v) if t is not None]
    out, lse = sparse_attn(*inputs[:2], inputs[2] if v is not None else None, indices,
                           return_lse=True, head_dim_v=head_dim_v)
    cpu = [t.detach().cpu().requires_grad_() for t in inputs]
    exact_inputs = [t.detach().cpu().double().requires_grad_() for t in inputs]
    options = dict(indices=indices.cpu(), head_dim_v=head_dim_v)
    same, _ = attention_core_ref(*cpu[:2], cpu[2] if v is not None else None, **options,
                                 dtype=cpu[0].dtype)
    exact, exact_lse = attention_core_ref(*exact_inputs[:2],
                                          exact_inputs[2] if v is not None else None, **options)
    assert_spec6_close("out", out.cpu(), same, exact, factor=factor_out)
    torch.testing.assert_close(lse.cpu(), exact_lse, atol=1e-3, rtol=1e-4)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.dtype)
    ours = torch.autograd.grad(out, inputs, dout.to(out.device))
    pytorch = torch.autograd.grad(same, cpu, dout)
    exact_grads = torch.autograd.grad(exact, exact_inputs, dout.double())
    for name, a, b, c in zip("qkv", ours, pytorch, exact_grads):
        assert_spec6_close(f"d{name}", a.cpu(), b, c, factor=factor_grad)


@pytest.mark.parametrize("device", SPARSE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 17, 40, 4, 2, 64, 64, 24), (1, 9, 113, 6, 1, 128, 128, 50),
                                   (2, 5, 33, 2, 2, 192, 128, 7)],
                         ids=["gqa2", "mqa6", "dim192x128"])
def test_sparse_attn_matches_the_masked_dense_formula(device, dtype, shape):
    batch, seqlen_q, seqlen_k, heads_q, heads_kv, dim, dim_v, num = shape
    check_against_reference(*sparse_inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, dim,
                                           dim_v, num, dtype, device), head_dim_v=dim_v)


@pytest.mark.parametrize("device", SPARSE_DEVICES)
def test_sparse_attn_over_latent_rows(device):
    """MLA's case: Hkv = 1, k = [c_kv | k_pe] (576), values its first 512 columns, v=None."""
    q, k, _, indices = sparse_inputs(2, 6, 90, 16, 1, 576, -1, 40, torch.bfloat16, device)
    check_against_reference(q, k, None, indices, head_dim_v=512)


def test_sparse_attn_with_every_causal_key_equals_flash_attn():
    """Lists naming every key j <= i (in shuffled order, -1 padded) give flash_attn_func's causal
    attention: values and gradients."""
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 30, h, 64, generator=generator, dtype=torch.float64)
               .requires_grad_() for h in (4, 2, 2))
    indices = torch.full((1, 30, 2, 30), -1, dtype=torch.int32)
    for i in range(30):
        for head in range(2):
            indices[0, i, head, :i + 1] = torch.randperm(i + 1, generator=generator).int()
    out = sparse_attn(q, k, v, indices)
    dense = deepseek_attn.flash_attn_func(q, k, v, causal=True)
    torch.testing.assert_close(out, dense, atol=1e-12, rtol=1e-12)
    dout = torch.randn_like(out)
    for ours, theirs in zip(torch.autograd.grad(out, (q, k, v), dout),
                            torch.autograd.grad(dense, (q, k, v), dout)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)  # P from the fp32 LSE


def test_sparse_attn_gradcheck():
    q, k, v, indices = sparse_inputs(1, 4, 12, 2, 1, 8, 8, 6, torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: sparse_attn(q, k, v, indices), inputs,
                                    atol=1e-5)


def test_sparse_attn_bwd_opcheck():
    q, k, v, indices = sparse_inputs(1, 4, 12, 2, 1, 16, 16, 6, torch.float32)
    out, lse = sparse_attn(q, k, v, indices, return_lse=True)
    torch.library.opcheck(torch.ops.deepseek_attn.sparse_attn_bwd,
                          (torch.randn_like(out), q, k, v, out, lse, indices, -1, 0.25))


def test_sparse_attn_compiles():
    q, k, v, indices = sparse_inputs(1, 5, 20, 4, 2, 64, 64, 8, torch.float32)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    compiled = torch.compile(sparse_attn, fullgraph=True, backend="aot_eager")
    out = compiled(*inputs, indices)
    torch.testing.assert_close(out, sparse_attn(*inputs, indices), atol=0, rtol=0)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


@pytest.mark.parametrize("change, error, message", [
    (dict(indices=lambda i: i.long()), TypeError, r"indices must have dtype Int"),
    (dict(indices=lambda i: i[..., :0]), ValueError, r"at least one slot per row"),
    (dict(indices=lambda i: i[0]), ValueError, r"indices must be \(batch, seqlen_q, heads_kv"),
    (dict(indices=lambda i: i.masked_fill(torch.ones_like(i, dtype=torch.bool), 12)),
     ValueError, r"indices\[0, 0, 0, 0\] = 12 is out of range: sequence 0 has 12 keys"),
], ids=["index_dtype", "no_slots", "index_rank", "index_out_of_range"])
def test_sparse_attn_rejects_bad_inputs(change, error, message):
    q, k, v, indices = sparse_inputs(1, 4, 12, 2, 1, 16, 16, 6, torch.float32)
    with pytest.raises(error, match=message):
        sparse_attn(q, k, v, change["indices"](indices))


def test_sparse_attn_bwd_rejects_out_of_range_indices_on_cpu():
    q, k, v, indices = sparse_inputs(1, 4, 12, 2, 1, 16, 16, 6, torch.float32)
    out, lse = sparse_attn(q, k, v, indices, return_lse=True)
    indices[0, 2, 0, 1] = 99
    with pytest.raises(ValueError, match=r"indices\[0, 2, 0, 1\] = 99 is out of range: sequence 0 "
                       r"has 12 keys; -1 marks an empty slot"):
        torch.ops.deepseek_attn.sparse_attn_bwd(torch.randn_like(out), q, k, v, out, lse,
                                                indices, -1, 0.25)
