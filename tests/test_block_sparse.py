"""Block-sparse attention (SPEC §5): `block_sparse_attn` against the same attention as a dense
masked formula (reference/core.py over block lists: duplicates weighted by their count, causal
inside the blocks) in values and every gradient, for GQA ratios 1/2/4/16, lengths that are not a
multiple of the block, -1 slots, duplicated blocks and rows that see nothing; against
flash_attn_func when the lists name every block and against fla-core's plain-PyTorch NSA selection
(a test extra); `block_select`'s forced blocks and tie rule; gradcheck, compile and bad inputs."""

import os
import subprocess
import sys

import pytest
import torch

import deepseek_attn
from deepseek_attn import block_select, block_sparse_attn
from deepseek_attn.reference import attention_core_ref
from deepseek_attn.testing import assert_spec6_close

from conftest import device_params

BLOCK_DEVICES = device_params("deepseek_attn::block_sparse_attn_bwd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def block_inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, dim, dim_v, num, block_size,
                 dtype, seed=0):
    """q, k, v and block lists with -1 slots, a block listed three times and an all -1 row."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seqlen_q, heads_q, dim, generator=generator).to(dtype)
    k = torch.randn(batch, seqlen_k, heads_kv, dim, generator=generator).to(dtype)
    v = torch.randn(batch, seqlen_k, heads_kv, dim_v, generator=generator).to(dtype)
    blocks = (seqlen_k + block_size - 1) // block_size
    indices = torch.randint(-1, blocks, (batch, seqlen_q, heads_kv, num), generator=generator,
                            dtype=torch.int32)
    indices[0, 0, 0] = -1
    indices[-1, -1, -1, :3] = blocks - 1
    return q, k, v, indices


def check_block_sparse(q, k, v, indices, block_size, causal, device="cpu"):
    inputs = [t.detach().to(device).requires_grad_() for t in (q, k, v)]
    out, lse = block_sparse_attn(*inputs, indices.to(device), block_size, causal, return_lse=True)
    same_inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    exact_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    options = dict(indices=indices, index_block_size=block_size, causal=causal)
    same, _ = attention_core_ref(*same_inputs, **options, dtype=q.dtype)
    exact, exact_lse = attention_core_ref(*exact_inputs, **options)
    assert_spec6_close("out", out.cpu(), same, exact, factor=2)
    torch.testing.assert_close(lse.cpu(), exact_lse, atol=1e-3, rtol=1e-4)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.dtype)
    ours = torch.autograd.grad(out, inputs, dout.to(device))
    pytorch = torch.autograd.grad(same, same_inputs, dout)
    exact_grads = torch.autograd.grad(exact, exact_inputs, dout.double())
    for name, a, b, c in zip("qkv", ours, pytorch, exact_grads):
        assert_spec6_close(f"d{name}", a.cpu(), b, c, factor=3)


# (B, Sq, Sk, Hq, Hkv, D, Dv, n, block): GQA 1/2/4/16; Sk not a multiple of the block; Sq > Sk
# (causal rows that see nothing); 192/128 head dims; lists naming fewer keys than K holds (the
# CPU forward gathers them instead of reading blocks in place).
SHAPES = [(2, 37, 150, 2, 2, 64, 64, 3, 16), (1, 70, 70, 8, 4, 64, 64, 4, 32),
          (2, 90, 33, 4, 1, 32, 32, 2, 16), (1, 20, 200, 16, 1, 64, 64, 2, 64),
          (1, 33, 129, 4, 2, 192, 128, 2, 128), (2, 2, 300, 4, 2, 64, 64, 2, 16)]


@pytest.mark.parametrize("device", BLOCK_DEVICES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_block_sparse_attn_matches_the_masked_dense_formula(shape, dtype, causal, device):
    *sizes, block = shape
    check_block_sparse(*block_inputs(*sizes, block, dtype), block, causal, device)


def test_block_sparse_attn_with_every_block_equals_flash_attn():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 70, h, 64, generator=generator, dtype=torch.float64)
               .requires_grad_() for h in (4, 2, 2))
    indices = torch.arange(5, dtype=torch.int32).flip(0).expand(1, 70, 2, 5).contiguous()
    out = block_sparse_attn(q, k, v, indices, block_size=16)
    dense = deepseek_attn.flash_attn_func(q, k, v, causal=True)
    torch.testing.assert_close(out, dense, atol=1e-12, rtol=0)
    dout = torch.randn_like(out)
    for ours, theirs in zip(torch.autograd.grad(out, (q, k, v), dout),
                            torch.autograd.grad(dense, (q, k, v), dout)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)  # fp32 LSE (SPEC §0)


def test_block_sparse_attn_gradcheck():
    q, k, v, indices = block_inputs(1, 9, 20, 2, 1, 8, 8, 3, 16, torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: block_sparse_attn(q, k, v, indices, block_size=16), inputs, atol=1e-5)


def test_block_sparse_attn_bwd_opcheck():
    q, k, v, indices = block_inputs(1, 9, 40, 4, 2, 16, 16, 3, 16, torch.float32)
    out, lse = block_sparse_attn(q, k, v, indices, block_size=16, return_lse=True)
    torch.library.opcheck(torch.ops.deepseek_attn.block_sparse_attn_bwd,
                          (torch.randn_like(out), q, k, v, out, lse, indices, 16, True, 0.25))


MEMORY_PROBE = """
import resource, sys, torch
from deepseek_attn import block_sparse_attn
seqlen, n, block = int(sys.argv[1]), 16, 128
torch.set_num_threads(1)
q, k, v = (torch.randn(1, seqlen, 1, 16, requires_grad=True) for _ in range(3))
own = torch.arange(seqlen, dtype=torch.int32) // block
indices = (own.view(1, -1, 1, 1) - torch.arange(n, dtype=torch.int32)).clamp(min=-1)
out = block_sparse_attn(q, k, v, indices.contiguous(), block_size=block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out.backward(torch.ones_like(out))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_block_sparse_attn_backward_does_not_expand_blocks_to_keys():
    """Peak RSS growth (KiB) of the backward over 16 blocks of 128 keys per query at 16k
    queries, in a fresh process: lists expanded to their keys would take 128 MiB (int32) and
    the inverse index over keys as much again; the block lists are 1 MiB."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "16384"], capture_output=True,
                            text=True, env=env, check=True)
    growth = int(result.stdout.split()[-1])
    assert growth < 48 * 1024, growth  # q, k, v, out, their gradients in fp32: 6 MiB


def test_block_sparse_attn_compiles():
    q, k, v, indices = block_inputs(1, 20, 40, 4, 2, 64, 64, 2, 16, torch.float32)
    inputs = [t.requires_grad_() for t in (q, k, v)]

    def loss(q, k, v):
        return block_sparse_attn(q, k, v, indices, block_size=16).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(*inputs), inputs)
    for ours, eager in zip(grads, torch.autograd.grad(loss(*inputs), inputs)):
        torch.testing.assert_close(ours, eager)


def test_block_select_forces_initial_and_local_blocks_and_breaks_ties_low():
    """64 keys in blocks of 16 for 5 queries (last keys 59..63: the own block is 3)."""
    scores = torch.tensor([[5.0, 1.0, 1.0, 0.0], [0.0, 7.0, 7.0, 7.0]]).view(1, 2, 1, 4)
    scores = scores.expand(1, 2, 1, 4).contiguous()
    picked = block_select(scores, 3, block_size=16, seqlen_k=64, init_blocks=1, local_blocks=1)
    # Forced: block 0 and the own block 3; then the best of the rest, ties to the lower block.
    assert picked[0, :, 0].tolist() == [[0, 3, 1], [0, 3, 1]]
    early = block_select(torch.zeros(1, 40, 1, 4), 4, block_size=16, seqlen_k=40)
    # Query 0 sees block 0 only; query 39 sees blocks 0-2; the rest is -1.
    assert early[0, 0, 0].tolist() == [0, -1, -1, -1]
    assert early[0, 39, 0].tolist() == [0, 1, 2, -1]
    assert early.dtype == torch.int32


BAD_INPUTS = [
    (lambda q, k, v, i: block_sparse_attn(q, k, v, i, block_size=48), ValueError,
     "block_size must be one of \\(16, 32, 64, 128\\) \\(got 48\\)"),
    (lambda q, k, v, i: block_sparse_attn(q, k, v, i[0]), ValueError,
     "block_indices must be \\(batch, seqlen_q, heads_kv, num_blocks\\)"),
    (lambda q, k, v, i: block_sparse_attn(q, k, v, i[..., :0]), ValueError,
     "num_blocks = 0"),
    (lambda q, k, v, i: block_sparse_attn(q, k, v, i + 5, block_size=16), ValueError,
     "is out of range"),
    (lambda q, k, v, i: block_sparse_attn(q, k, v, i.long(), block_size=16), TypeError,
     "indices must"),
    (lambda q, k, v, i: torch.ops.deepseek_attn.block_sparse_attn_bwd(
        q, q, k, v, q, torch.zeros(1, 2, 9), i, 0, True, 1.0), ValueError,
     "block_size must be >= 1 \\(got 0\\)"),
    (lambda q, k, v, i: torch.ops.deepseek_attn.block_sparse_attn_bwd(
        q, q, k, v, q, torch.zeros(1, 2, 9), i + 2, 16, True, 1.0), ValueError,
     "is out of range: sequence 0 has 40 keys in blocks of 16; -1 marks an empty slot"),
    (lambda q, k, v, i: block_select(torch.zeros(1, 2, 1, 4), 2), ValueError,
     "n must be positive and hold the 1 initial and 2 local blocks \\(got 2\\)"),
    (lambda q, k, v, i: block_select(torch.zeros(2, 4), 3), ValueError,
     "scores must be \\(batch, seqlen_q, heads_kv, num_blocks\\)"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_block_sparse_rejects_bad_inputs(call, error, message):
    q, k, v, indices = block_inputs(1, 9, 40, 2, 1, 16, 16, 2, 16, torch.float32)
    with pytest.raises(error, match=message):
        call(q, k, v, indices)


def test_block_sparse_attn_matches_fla_naive_selection():
    """Against fla-core's plain-PyTorch NSA selection branch (an independent implementation, on
    its own conventions: long block indices, causal as Sq == Sk, GQA by repetition), values and
    gradients; every row lists its own block, so none is empty (fla would give NaN there)."""
    naive = pytest.importorskip("fla.ops.nsa.naive")
    generator = torch.Generator().manual_seed(11)
    batch, seqlen, heads_q, heads_kv, dim, block = 2, 100, 16, 1, 64, 32
    q, k, v = (torch.randn(batch, seqlen, h, dim, generator=generator, dtype=torch.float64)
               .requires_grad_() for h in (heads_q, heads_kv, heads_kv))
    own = (torch.arange(seqlen) // block).view(1, seqlen, 1, 1).expand(batch, -1, heads_kv, 1)
    others = torch.randint(-1, 4, (batch, seqlen, heads_kv, 2), generator=generator)
    indices = torch.cat([own, torch.minimum(others, own)], dim=-1)  # -1, repeats, past blocks
    ours = block_sparse_attn(q, k, v, indices.int(), block_size=block)
    theirs = naive.naive_nsa_selection(q, k, v, indices.long(), block_size=block)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=1e-5, rtol=1e-5)
    dout = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), dout),
                    torch.autograd.grad(theirs, (q, k, v), dout)):
        torch.testing.assert_close(a, b.to(a.dtype), atol=1e-5, rtol=1e-5)
