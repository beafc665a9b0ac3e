"""The lightning indexer (SPEC §4): `indexer_logits` against its formula (reference/sparse.py)
in every dtype, causal or not, with per-sequence key counts, FP8 with scales; its gradients
(gradcheck, and against autograd through the formula); `indexer_topk` equal to a stable sort of
the logits, exactly, including ties from integer-valued inputs; streaming memory that does not
grow with Sk; the chunked KL training loss against its naive formula; opcheck, torch.compile
and bad inputs."""

import os
import subprocess
import sys

import pytest
import torch

import deepseek_attn
from deepseek_attn import sparse
from deepseek_attn.reference import (hadamard_ref, indexer_kl_loss_ref, indexer_logits_fp8_ref,
                                     indexer_logits_ref, indexer_topk_ref)

from conftest import device_params

INDEXER_DEVICES = device_params("deepseek_attn::indexer_topk")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (batch, Sq, Sk, heads, dim): decode-like, Sq > Sk (rows that see no key), odd sizes, several
# key chunks of the CPU path (256 keys) and token tiles (8 tokens).
SHAPES = [(1, 1, 1, 1, 16), (2, 9, 5, 3, 8), (2, 17, 113, 4, 32), (1, 20, 600, 5, 64)]


def indexer_inputs(batch, seqlen_q, seqlen_k, heads, dim, dtype=torch.float32, seed=0,
                   integer=False):
    """q, k, weights; integer=True draws small integers so that scores tie."""
    generator = torch.Generator().manual_seed(seed)
    if integer:
        def draw(*shape, low=-2, high=3):
            return torch.randint(low, high, shape, generator=generator).float()
        q, k, w = draw(batch, seqlen_q, heads, dim), draw(batch, seqlen_k, dim), draw(
            batch, seqlen_q, heads, low=0)
    else:
        q = torch.randn(batch, seqlen_q, heads, dim, generator=generator)
        k = torch.randn(batch, seqlen_k, dim, generator=generator)
        w = torch.randn(batch, seqlen_q, heads, generator=generator)
    return q.to(dtype), k.to(dtype), w.to(torch.float64 if dtype == torch.float64 else torch.float32)


def logits_ref_with_lengths(q, k, weights, causal, seqlens_k, **kwargs):
    """indexer_logits_ref per sequence over its first seqlens_k[b] keys, -inf past them."""
    rows = []
    for b in range(q.shape[0]):
        keys = k.shape[1] if seqlens_k is None else int(seqlens_k[b])
        row = indexer_logits_ref(q[b:b + 1], k[b:b + 1, :keys], weights[b:b + 1], causal,
                                 **kwargs)
        rows.append(torch.nn.functional.pad(row, (0, k.shape[1] - keys), value=float("-inf")))
    return torch.cat(rows)


def assert_logits_close(out, ref, atol):
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite) and torch.isneginf(out[~finite]).all()
    torch.testing.assert_close(out[finite].double(), ref[finite].double(), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "seqlens_k"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full_rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_indexer_logits_matches_formula(shape, dtype, causal, lengths):
    """Against the fp64 formula on the same (rounded) inputs: only fp32 accumulation differs."""
    q, k, w = indexer_inputs(*shape, dtype=dtype)
    seqlens = (torch.arange(shape[0], dtype=torch.int32) * 3 + shape[2] // 2).clamp(max=shape[2])
    seqlens = seqlens if lengths else None
    out = sparse.indexer_logits(q, k, w, causal=causal, seqlens_k=seqlens)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == (shape[0], shape[1], shape[2])
    ref = logits_ref_with_lengths(q.double(), k.double(), w.double(), causal, seqlens)
    assert_logits_close(out, ref, atol=1e-12 if dtype == torch.float64 else 2e-5)


def test_indexer_logits_fp8_matches_dequantised_formula():
    """Hadamard-rotated, e4m3 with one scale per (token, head) / token: the dequantised formula;
    and SPEC §6's FP8 rule against the full-precision logits (rotation keeps dot products)."""
    q, k, w = indexer_inputs(2, 17, 113, 4, 64)
    q_fp8, q_scale = sparse.quantize_indexer_fp8(sparse.hadamard_rotate(q))
    k_fp8, k_scale = sparse.quantize_indexer_fp8(sparse.hadamard_rotate(k))
    assert q_fp8.dtype == torch.float8_e4m3fn and q_scale.shape == (2, 17, 4)
    assert k_scale.shape == (2, 113)
    out = sparse.indexer_logits(q_fp8, k_fp8, w, q_scale=q_scale, k_scale=k_scale)
    ref = indexer_logits_fp8_ref(q_fp8, q_scale, k_fp8, k_scale, w.double())
    assert_logits_close(out, ref, atol=2e-5)
    exact = indexer_logits_ref(q.double(), k.double(), w.double())
    finite = torch.isfinite(exact)
    a, r = out[finite].double(), exact[finite]
    assert 1 - 2 * (a * r).sum() / (a * a + r * r).sum() <= 1e-3


def test_hadamard_rotate_matches_reference():
    x = torch.randn(3, 5, 128)
    torch.testing.assert_close(sparse.hadamard_rotate(x), hadamard_ref(x.double()).float(),
                               atol=1e-5, rtol=1e-5)
    assert sparse.hadamard_rotate(x.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="power-of-two last dim \\(got 96\\)"):
        sparse.hadamard_rotate(torch.randn(2, 96))


def topk_of(logits, topk):
    return indexer_topk_ref(logits, topk)


@pytest.mark.parametrize("topk", [1, 7, 64, 700])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_indexer_topk_equals_sorted_logits(shape, dtype, topk):
    """Exactly the stable sort of the op's own logits (one arithmetic path), -1 padded."""
    q, k, w = indexer_inputs(*shape, dtype=dtype)
    seqlens = torch.full((shape[0],), shape[2], dtype=torch.int32)
    seqlens[-1] = (shape[2] + 1) // 2
    for causal in (True, False):
        got = sparse.indexer_topk(q, k, w, topk=topk, causal=causal, seqlens_k=seqlens)
        logits = sparse.indexer_logits(q, k, w, causal=causal, seqlens_k=seqlens)
        assert got.dtype == torch.int32 and got.shape == (shape[0], shape[1], topk)
        assert torch.equal(got, topk_of(logits, topk))


@pytest.mark.parametrize("topk", [3, 64, 300])
def test_indexer_topk_ties_go_to_the_lower_key(topk):
    """Integer-valued inputs make exact ties; the formula is then exact in fp32 too."""
    q, k, w = indexer_inputs(2, 40, 700, 2, 16, integer=True)
    got = sparse.indexer_topk(q, k, w, topk=topk, softmax_scale=0.25)
    ref = indexer_topk_ref(indexer_logits_ref(q.double(), k.double(), w.double(),
                                              softmax_scale=0.25), topk)
    assert torch.equal(got, ref)
    logits = indexer_logits_ref(q.double(), k.double(), w.double(), softmax_scale=0.25)
    assert (logits[..., 1:] == logits[..., :-1]).any()  # the case has ties


def test_indexer_topk_fp8():
    q, k, w = indexer_inputs(2, 9, 300, 4, 64)
    q_fp8, q_scale = sparse.quantize_indexer_fp8(q)
    k_fp8, k_scale = sparse.quantize_indexer_fp8(k)
    got = sparse.indexer_topk(q_fp8, k_fp8, w, topk=32, q_scale=q_scale, k_scale=k_scale)
    logits = sparse.indexer_logits(q_fp8, k_fp8, w, q_scale=q_scale, k_scale=k_scale)
    assert torch.equal(got, topk_of(logits, 32))


MEMORY_PROBE = """
import resource, sys, torch
from deepseek_attn import sparse
seqlen_k = int(sys.argv[1])
q, k, w = torch.randn(1, 1024, 1, 16), torch.randn(1, seqlen_k, 16), torch.randn(1, 1024, 1)
torch.set_num_threads(1)
sparse.indexer_topk(q, k[:, :256], w, topk=64)  # warm-up: libraries, thread pool
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sparse.indexer_topk(q, k, w, topk=64, causal=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_indexer_topk_memory_does_not_grow_with_seqlen_k():
    """Peak RSS growth (KiB) of a 1024-query top-k over 4k and 32k keys, each in a fresh
    process: the (Sq, Sk) fp32 logits would be 16 MiB and 128 MiB."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def growth(seqlen_k):
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(seqlen_k)],
                                capture_output=True, text=True, env=env, check=True)
        return int(result.stdout.split()[-1])

    small, large = growth(4096), growth(32768)
    assert large < small + 8 * 1024, (small, large)  # k itself grows by 1.8 MiB (fp32 copy)
    assert large < 128 * 1024 // 4, (small, large)


@pytest.mark.parametrize("causal, lengths", [(True, False), (False, True)])
def test_indexer_logits_gradcheck(causal, lengths):
    q, k, w = (t.requires_grad_() for t in indexer_inputs(2, 5, 9, 3, 8, dtype=torch.float64))
    seqlens = torch.tensor([9, 6], dtype=torch.int32) if lengths else None

    def finite_logits(q, k, w):
        return sparse.indexer_logits(q, k, w, causal=causal, seqlens_k=seqlens).nan_to_num(
            neginf=0.0)

    assert torch.autograd.gradcheck(finite_logits, (q, k, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_indexer_logits_backward_matches_autograd_of_formula(dtype):
    """Several token tiles and key chunks: every gradient against autograd through the fp64
    formula (masked entries get an upstream gradient that must be ignored)."""
    q, k, w = indexer_inputs(2, 20, 600, 4, 32, dtype=dtype)
    grad = torch.randn(2, 20, 600)
    inputs = [t.clone().requires_grad_() for t in (q, k, w)]
    sparse.indexer_logits(*inputs).backward(grad)
    exact = [t.double().requires_grad_() for t in (q, k, w)]
    ref = indexer_logits_ref(*exact)
    ref.masked_fill(torch.isinf(ref), 0).backward(grad.double().masked_fill(torch.isinf(ref), 0))
    for name, got, want in zip("q k weights".split(), inputs, exact):
        assert got.grad.dtype == got.dtype, name
        scale = want.grad.abs().max().item()
        err = (got.grad.double() - want.grad).abs().max().item()
        assert err <= scale * (2e-2 if dtype == torch.bfloat16 else 1e-5), (name, err, scale)


def test_indexer_ops_pass_opcheck():
    q, k, w = indexer_inputs(2, 9, 40, 3, 16)
    seqlens = torch.tensor([40, 20], dtype=torch.int32)
    ops = torch.ops.deepseek_attn
    torch.library.opcheck(ops.indexer_logits.default, (q, k, w, None, seqlens, 0.25, True))
    torch.library.opcheck(ops.indexer_topk.default, (q, k, w, None, seqlens, 8, 0.25, True))
    grad = torch.randn(2, 9, 40)
    torch.library.opcheck(ops.indexer_logits_bwd.default, (grad, q, k, w, seqlens, 0.25, True))
    # (opcheck's schema test cannot perturb float8 tensors, so FP8 inputs are not opchecked.)


def test_indexer_compiles_fullgraph():
    q, k, w = indexer_inputs(1, 9, 40, 3, 16)

    def select(q, k, w):
        return sparse.indexer_topk(q, k, w, topk=8), sparse.indexer_logits(q, k, w).amax(-1)

    compiled = torch.compile(select, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(q, k, w), select(q, k, w)):
        assert torch.equal(got, want)


BAD_INPUTS = [
    (lambda q, k, w: sparse.indexer_topk(q, k, w, topk=0), ValueError,
     "topk must be positive \\(got 0\\)"),
    (lambda q, k, w: sparse.indexer_topk(q, k, w, topk=-3), ValueError,
     "topk must be positive \\(got -3\\)"),
    (lambda q, k, w: sparse.indexer_logits(q[0], k, w), ValueError, "q must have 4 dimensions"),
    (lambda q, k, w: sparse.indexer_logits(q, k[:, :, None], w), ValueError,
     "k must have 3 dimensions"),
    (lambda q, k, w: sparse.indexer_logits(q, k.double(), w), TypeError,
     "k must have the same dtype as q"),
    (lambda q, k, w: sparse.indexer_logits(q.int(), k.int(), w), TypeError,
     "q must be float32, bfloat16, float16 or float8_e4m3fn"),
    (lambda q, k, w: sparse.indexer_logits(q, k[:, :, :8], w), ValueError,
     "index_head_dim, as q"),
    (lambda q, k, w: sparse.indexer_logits(q, k[:1], w), ValueError, "batch, as q"),
    (lambda q, k, w: sparse.indexer_logits(q, k, w[:, :, :2]), ValueError,
     "weights must be \\(2, 9, 3\\)"),
    (lambda q, k, w: sparse.indexer_logits(q, k, w, k_scale=torch.ones(2, 40)), ValueError,
     "q_scale and k_scale go with float8_e4m3fn q and k"),
    (lambda q, k, w: sparse.indexer_topk(q, k, w, seqlens_k=torch.tensor([40, 41],
                                                                         dtype=torch.int32)),
     ValueError, "seqlens_k\\[1\\] = 41 is out of range: k holds 40 keys"),
    (lambda q, k, w: sparse.indexer_topk(q, k, w, seqlens_k=torch.tensor([40, 4])), TypeError,
     "seqlens_k must have dtype Int"),
    (lambda q, k, w: sparse.indexer_topk(q, k, w, seqlens_k=torch.tensor([4], dtype=torch.int32)),
     ValueError, "seqlens_k must be \\(2,\\)"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_indexer_rejects_bad_inputs(call, error, message):
    q, k, w = indexer_inputs(2, 9, 40, 3, 16)
    with pytest.raises(error, match=message):
        call(q, k, w)


def test_indexer_fp8_scales_are_checked():
    q, k, w = indexer_inputs(2, 9, 40, 3, 16)
    q_fp8, q_scale = sparse.quantize_indexer_fp8(q)
    k_fp8, k_scale = sparse.quantize_indexer_fp8(k)
    with pytest.raises(ValueError, match="q_scale and k_scale go with float8_e4m3fn"):
        sparse.indexer_topk(q_fp8, k_fp8, w, q_scale=q_scale)
    with pytest.raises(ValueError, match="k_scale must be \\(2, 40\\)"):
        sparse.indexer_topk(q_fp8, k_fp8, w, q_scale=q_scale, k_scale=k_scale[:, :3])
    with pytest.raises(TypeError, match="FP8 logits are not differentiable"):
        torch.ops.deepseek_attn.indexer_logits_bwd(torch.zeros(2, 9, 40), q_fp8, k_fp8, w, None,
                                                   0.25, True)


@pytest.mark.parametrize("device", INDEXER_DEVICES)
def test_indexer_on_device_matches_cpu(device):
    """bf16 and FP8 on the device against the CPU path (same inputs), logits and top-k."""
    q, k, w = indexer_inputs(2, 33, 300, 64, 128, dtype=torch.bfloat16)
    args = [t.to(device) for t in (q, k, w)]
    assert_logits_close(sparse.indexer_logits(*args).cpu(), sparse.indexer_logits(q, k, w),
                        atol=1e-3)
    got = sparse.indexer_topk(*args, topk=64)
    assert torch.equal(got.cpu(), topk_of(sparse.indexer_logits(*args).cpu(), 64))


def kl_inputs(seed=0, heads_kv=2):
    """Main attention q (2, 13, 4, 8), k (2, 17, heads_kv, 8) and indexer inputs (3 heads, d 8);
    Sq < Sk, so every row sees keys."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 13, 4, 8, generator=generator)
    k = torch.randn(2, 17, heads_kv, 8, generator=generator)
    index = indexer_inputs(2, 13, 17, 3, 8, seed=seed + 1)
    return q, k, [t.clone().requires_grad_() for t in index]


def distinct_indices(batch, seqlen_q, seqlen_k, count, seed=0):
    """(B, Sq, count) int32 without duplicates; some -1 slots and one row of only -1."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(seqlen_k, generator=generator)[:count]
            for _ in range(batch * seqlen_q)]
    indices = torch.stack(rows).view(batch, seqlen_q, count).int()
    indices[0, 3, 2] = -1
    indices[1, 0] = -1
    return indices


@pytest.mark.parametrize("heads_kv", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("sparse_stage", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("chunk_size", [None, 3, 1])
def test_indexer_kl_loss_matches_naive(chunk_size, sparse_stage, heads_kv):
    """The chunked loss and its gradients against reference/sparse.py's naive fp64 formula."""
    q, k, index = kl_inputs(heads_kv=heads_kv)
    indices = distinct_indices(2, 13, 17, 5) if sparse_stage else None
    loss = sparse.indexer_kl_loss(q, k, *index, indices=indices, chunk_size=chunk_size)
    grads = torch.autograd.grad(loss, index)
    exact = [t.detach().double().requires_grad_() for t in index]
    ref = indexer_kl_loss_ref(q.double(), k.double(), indexer_logits_ref(*exact), indices=indices)
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, torch.autograd.grad(ref, exact)):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    mean = sparse.indexer_kl_loss(q, k, *index, indices=indices, reduction="mean")
    torch.testing.assert_close(mean * 26, loss, atol=1e-5, rtol=1e-5)


def test_indexer_kl_loss_training_reduces_it():
    """A few Adam steps on the indexer's inputs bring its distribution toward the attention's."""
    q, k, index = kl_inputs(heads_kv=1)
    optimizer = torch.optim.Adam(index, lr=0.05)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = sparse.indexer_kl_loss(q, k, *index)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_indexer_kl_loss_rejects_bad_arguments():
    q, k, index = kl_inputs()
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean' \\(got 'max'\\)"):
        sparse.indexer_kl_loss(q, k, *index, reduction="max")
    with pytest.raises(ValueError, match="indices must be \\(2, 13, K\\)"):
        sparse.indexer_kl_loss(q, k, *index, indices=torch.zeros(2, 12, 4, dtype=torch.int32))
