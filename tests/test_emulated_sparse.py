"""The sparse family's CUDA kernels on the CPU emulator. The lightning indexer
(kernels/indexer.cuh):
logits against the CPU op on the same inputs (bf16, fp16, FP8; index head dims 64 and 128; head
counts that pad to whole mma tiles; causal rows that see nothing, per-sequence key counts), and
top-k exactly equal to a stable sort of the kernel's own logits, through many buffer merges,
with ties from integer-valued inputs, up to DeepSeek's topk = 2048; the logits' backward against
the CPU one. sparse_attn's backward
(kernels/sparse_bwd.cuh) with the core's forward, against the fp64 formula, over token lists
and (block_sparse_attn) block lists; nn.NativeSparseAttention on the emulated kernels against
the CPU ops."""

import pytest
import torch

from deepseek_attn import sparse
from deepseek_attn.reference import indexer_logits_ref, indexer_topk_ref

from test_emulated_kernels import sm80, sm90  # noqa: F401  (session fixtures)
from test_block_sparse import block_inputs, check_block_sparse
from test_emulated_mla_module import on_emulated_cuda
from test_sparse import check_against_reference, sparse_inputs
from test_sparse_indexer import assert_logits_close, indexer_inputs


def device_operands(q, k, w, dtype):
    """(q, k, weights with q's scales folded in, k_scale) as the ops pass them to the kernels."""
    if dtype != torch.float8_e4m3fn:
        return q.to(dtype), k.to(dtype), w, None
    q_fp8, q_scale = sparse.quantize_indexer_fp8(q)
    k_fp8, k_scale = sparse.quantize_indexer_fp8(k)
    return q_fp8, k_fp8, (w * q_scale).contiguous(), k_scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn],
                         ids=["bf16", "fp16", "fp8"])
@pytest.mark.parametrize("heads, dim", [(20, 64), (3, 128)])
def test_emulated_indexer_logits_match_cpu(sm80, heads, dim, dtype):
    """Sq = 7 > the second sequence's 5 keys: its first rows see nothing (-inf everywhere)."""
    q, k, w = indexer_inputs(2, 7, 150, heads, dim)
    args = device_operands(q, k, w, dtype)
    seqlens = torch.tensor([150, 5], dtype=torch.int32)
    for causal in (True, False):
        got = sm80.indexer_logits(*args, seqlens, dim ** -0.5, causal)
        want = torch.ops.deepseek_attn.indexer_logits(*args, seqlens, dim ** -0.5, causal)
        assert_logits_close(got, want, atol=1e-4)
        assert torch.isneginf(got[1, :2] if causal else got[1, :, 5:]).all()


def test_emulated_indexer_logits_128_heads_on_sm90(sm90):
    """DeepSeek's largest shape class: 128 heads (8 mma tiles over 4 warps), d = 128."""
    q, k, w = indexer_inputs(1, 2, 70, 128, 128)
    args = device_operands(q, k, w, torch.bfloat16)
    got = sm90.indexer_logits(*args, None, 128 ** -0.5, True)
    want = torch.ops.deepseek_attn.indexer_logits(*args, None, 128 ** -0.5, True)
    assert_logits_close(got, want, atol=1e-4)


@pytest.mark.parametrize("topk", [1, 50, 100, 300])
def test_emulated_indexer_topk_equals_sorted_logits(sm80, topk):
    """700 keys in 11 blocks: the buffer (capacity 64 to 512) merges again and again."""
    q, k, w = indexer_inputs(2, 3, 700, 4, 64)
    args = device_operands(q, k, w, torch.bfloat16)
    seqlens = torch.tensor([700, 333], dtype=torch.int32)
    for causal in (True, False):
        got = sm80.indexer_topk(*args, seqlens, topk, 0.125, causal)
        logits = sm80.indexer_logits(*args, seqlens, 0.125, causal)
        assert torch.equal(got, indexer_topk_ref(logits, topk))


def test_emulated_indexer_topk_ties_and_fp8(sm80):
    """Integer-valued inputs are exact in bf16 and e4m3 (scale 1): the kernel's order equals the
    fp64 formula's under the tie rule, many keys tying at the k-th place."""
    q, k, w = indexer_inputs(1, 2, 400, 2, 64, integer=True)
    ref = indexer_topk_ref(indexer_logits_ref(q.double(), k.double(), w.double(),
                                              softmax_scale=0.125), 70)
    ones_q, ones_k = torch.ones(1, 2, 2), torch.ones(1, 400)
    for args in [(q.bfloat16(), k.bfloat16(), w, None),
                 (q.to(torch.float8_e4m3fn), k.to(torch.float8_e4m3fn), w * ones_q, ones_k)]:
        assert torch.equal(sm80.indexer_topk(*args, None, 70, 0.125, True), ref)


def test_emulated_indexer_topk_2048(sm80):
    """topk = 2048 (a 4096-slot bitonic merge) over 2100 keys: one decode token of a long
    sequence; the row keeps its 2048 best of 2100."""
    q, k, w = indexer_inputs(1, 1, 2100, 1, 64)
    args = device_operands(q, k, w, torch.bfloat16)
    got = sm80.indexer_topk(*args, None, 2048, 0.125, True)
    assert torch.equal(got, indexer_topk_ref(sm80.indexer_logits(*args, None, 0.125, True), 2048))


@pytest.mark.parametrize("shape, dtype", [
    ((2, 17, 40, 4, 2, 64, 64, 24), torch.bfloat16),
    ((1, 9, 113, 6, 1, 128, 128, 50), torch.float16),
    ((2, 5, 33, 10, 2, 192, 128, 7), torch.bfloat16),
    ((1, 4, 90, 16, 1, 576, -1, 40), torch.bfloat16),
], ids=["gqa2-d64", "mqa6-d128", "gqa5-d192x128", "latent"])
def test_emulated_sparse_attn_forward_and_backward(sm80, shape, dtype):
    """sparse_attn through the emulated core forward and backward kernels against the fp64
    formula (SPEC §6): -1 slots, a key listed three times, a row listing nothing. dQ of K/V rows
    runs on tensor cores (5 heads of a 64-row tile, the other warps idle), of latent rows SIMT
    (16 heads: two 8-head tiles); dK/dV of token lists SIMT."""
    with on_emulated_cuda(sm80):
        launches = sm80.counters()["launches"]
        check_against_reference(*sparse_inputs(*shape, dtype),
                                head_dim_v=512 if shape[6] < 0 else shape[6])
        assert sm80.counters()["launches"] - launches == 3  # forward, dq, dk/dv


@pytest.mark.parametrize("case", [
    (2, 7, 150, 20, 64, torch.bfloat16, True, [150, 5]),
    (1, 5, 70, 3, 128, torch.float16, False, None),
    (2, 9, 130, 64, 64, torch.bfloat16, True, [100, 130]),
], ids=["bf16-causal-seqlens", "fp16-full-rows", "64-heads"])
def test_emulated_indexer_backward_matches_cpu(sm80, case):
    """The dq/dweights and dk kernels against the CPU backward on the same 16-bit inputs: they
    round dz to 16 bits for the tensor cores (as flash attention rounds P), the CPU does not."""
    batch, seqlen_q, seqlen_k, heads, dim, dtype, causal, lengths = case
    q, k, w = indexer_inputs(batch, seqlen_q, seqlen_k, heads, dim, dtype=dtype)
    seqlens = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    dlogits = torch.randn(batch, seqlen_q, seqlen_k)
    args = (dlogits, q, k, w, seqlens, dim ** -0.5, causal)
    got = sm80.indexer_logits_bwd(*args)
    want = torch.ops.deepseek_attn.indexer_logits_bwd(*args)
    for name, ours, cpu, tolerance in zip(("dq", "dk", "dweights"), got, want,
                                          (1e-2, 1e-2, 1e-5)):
        assert ours.dtype == cpu.dtype, name
        error = (ours.float() - cpu.float()).abs().max() / cpu.float().abs().max()
        assert error <= tolerance, (name, error.item())


@pytest.mark.parametrize("shape, dtype", [
    ((2, 37, 150, 4, 2, 64, 64, 3, 16), torch.bfloat16),
    ((1, 20, 130, 16, 1, 128, 128, 2, 64), torch.float16),
    ((1, 33, 129, 4, 2, 192, 128, 2, 128), torch.bfloat16),
], ids=["gqa2-d64-block16", "gqa16-d128-block64", "d192x128-block128"])
def test_emulated_block_sparse_attn_forward_and_backward(sm80, shape, dtype):
    """block_sparse_attn on the emulated core (block lists, causal inside the blocks) and the
    emulated backward walking the same block lists (dQ per row, dK/dV on tensor cores over the
    inverse index; blocks of 16 put 4 blocks in one CTA, of 128 one block in 2 CTAs, 192/128
    takes a dV and a dK pass), against the fp64 formula."""
    *sizes, block = shape
    with on_emulated_cuda(sm80):
        launches = sm80.counters()["launches"]
        check_block_sparse(*block_inputs(*sizes, block, dtype), block, causal=True)
        wide = sizes[5] + sizes[6] > 256
        assert sm80.counters()["launches"] - launches == (4 if wide else 3)  # fwd, dq, dk/dv
        assert "block_bwd_dkdv_kernel" in sm80.last_kernel_name()


def test_emulated_nsa_module_matches_cpu(sm80):
    """nn.NativeSparseAttention (bf16, head dim 64, GQA 4) on the emulated kernels: flash_attn
    for the compression (folded query heads) and window branches, the core over block lists and
    the block-list backward for selection; output and every parameter gradient against the same
    module on the CPU ops."""
    from deepseek_attn.nn import NativeSparseAttention
    from test_mla_module import fp8_rule_difference

    torch.manual_seed(0)
    module = NativeSparseAttention(64, 8, 2, 64, compress_block=32, compress_stride=16,
                                   select_block=32, select_n=3, window=48,
                                   compress_hidden=64, dtype=torch.bfloat16)
    x = torch.randn(1, 150, 64, dtype=torch.bfloat16)

    def run():
        module.zero_grad()
        out = module(x)
        out.float().square().sum().backward()
        return out.detach(), [p.grad.clone() for p in module.parameters()]

    out_cpu, grads_cpu = run()
    with on_emulated_cuda(sm80):
        launches = sm80.counters()["launches"]
        out, grads = run()
        # Forward: compression, selection, window; backward: their three (two kernels each).
        assert sm80.counters()["launches"] - launches >= 9
    assert fp8_rule_difference(out, out_cpu) <= 1e-4
    for (name, _), ours, cpu in zip(module.named_parameters(), grads, grads_cpu):
        if name == "compress_k.fc2.bias":  # shifts every compressed key alike: exactly 0, noise
            assert ours.abs().max() < 1e-3 * grads[0].abs().max()
            continue
        assert fp8_rule_difference(ours, cpu) <= 1e-3, name


@pytest.mark.parametrize("block", [8, 48])
def test_emulated_block_sparse_bwd_of_other_block_sizes_matches_cpu(sm80, block):
    """Blocks that neither divide nor span the tensor-core kernel's 64 keys (the op takes any
    size; the Python API only 16-128) take the SIMT kernels; against the CPU op."""
    q, k, v, indices = block_inputs(2, 37, 150, 4, 2, 64, 64, 3, block, torch.bfloat16)
    out, lse = torch.ops.deepseek_attn.attention_core_fwd(q, k, v, None, None, indices, block,
                                                          -1, 0.125, True, -1, -1, 0.0)
    dout = torch.randn_like(out)
    args = (dout, q, k, v, out, lse, indices, block, True, 0.125)
    got = sm80.block_sparse_attn_bwd(*args)
    assert "sparse_bwd_dkv_kernel" in sm80.last_kernel_name()
    for name, ours, cpu in zip(("dq", "dk", "dv"), got,
                               torch.ops.deepseek_attn.block_sparse_attn_bwd(*args)):
        error = (ours.float() - cpu.float()).abs().max() / cpu.float().abs().max()
        assert error <= 1e-2, (name, error.item())


@pytest.mark.parametrize("num", [3, 100, 300], ids=["many-tokens", "two-tokens", "one-token"])
def test_emulated_block_lists_of_several_tokens_share_a_tile(sm80, num):
    """Block lists of several tokens share one query tile (the union of their lists, each row
    masked to its own token's): neighbours listing the same blocks, a block one token lists twice
    and its neighbour once, a token listing nothing; 256 entries a tile at most (n = 300 falls
    back to one token a tile). Values and gradients against the fp64 formula."""
    batch, seqlen, heads, heads_kv, block = 1, 40, 4, 2, 16
    q, k, v, _ = block_inputs(batch, seqlen, seqlen, heads, heads_kv, 64, 64, 1, block,
                              torch.bfloat16)
    generator = torch.Generator().manual_seed(5)
    indices = torch.randint(-1, 3, (batch, seqlen, heads_kv, num), generator=generator,
                            dtype=torch.int32)
    indices[0, 10, 0, :2] = 1  # token 10 lists block 1 twice, token 11 once
    indices[0, 11, 0, :2] = torch.tensor([1, -1])
    indices[0, 12] = -1
    with on_emulated_cuda(sm80):
        check_block_sparse(q, k, v, indices, block, causal=True)
