"""The Native Sparse Attention reference of reference/nsa.py (SPEC §5), in fp64 on the CPU:

- its selection, window and compression attention and its block choice against fla-core's
  plain-PyTorch NSA (`fla.ops.nsa.naive`), fed our queries, keys, values and block indices;
- its RoPE against transformers' Llama rotary embedding;
- selection covering every block, and a window covering the sequence, against torch's sdpa;
- the selection-score mapping, the block-choice rules (forced blocks, ties, −1 padding) and the
  compression MLP against hand-worked cases;
- the whole layer on odd lengths and every GQA ratio (gates, gradients, config forms).
"""

import math
import types

import pytest
import torch

import deepseek_attn
from deepseek_attn.reference import (attention_ref, nsa_attention_ref, nsa_branches_ref,
                                     nsa_compress_ref, nsa_compression_attention_ref,
                                     nsa_num_compressed, nsa_rope_ref, nsa_select_blocks_ref,
                                     nsa_selection_attention_ref, nsa_selection_scores_ref,
                                     nsa_window_attention_ref, rope_rotate_half_ref)
from deepseek_attn.reference.nsa import nsa_config_ref

F64 = torch.float64


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


def tiny_config(**overrides):
    """A small NSA config; blocks of 16/8/16 so that short sequences hold several blocks."""
    config = dict(dim=32, n_heads=4, n_kv_heads=2, head_dim=16, v_head_dim=8,
                  compress_block=16, compress_stride=8, select_block=16, select_n=3, window=20,
                  init_blocks=1, local_blocks=2, rope_theta=10000.0, softmax_scale=16 ** -0.5,
                  compress_hidden=24)
    config.update(overrides)
    return config


def random_params(config, seed=0):
    """fp64 weights with the module's state-dict names, scaled by fan-in^-0.5."""
    c = nsa_config_ref(config)
    dim, heads, heads_kv = c["dim"], c["n_heads"], c["n_kv_heads"]
    head_dim, v_head_dim, block = c["head_dim"], c["v_head_dim"], c["compress_block"]
    hidden = c["compress_hidden"]
    shapes = {"wq.weight": (heads * head_dim, dim), "wk.weight": (3 * heads_kv * head_dim, dim),
              "wv.weight": (3 * heads_kv * v_head_dim, dim), "gate.weight": (3 * heads, dim),
              "gate.bias": (3 * heads,), "wo.weight": (dim, heads * v_head_dim)}
    for prefix, width in (("compress_k", head_dim), ("compress_v", v_head_dim)):
        shapes.update({f"{prefix}.pe": (block, width),
                       f"{prefix}.fc1.weight": (hidden, block * width),
                       f"{prefix}.fc1.bias": (hidden,), f"{prefix}.fc2.weight": (width, hidden),
                       f"{prefix}.fc2.bias": (width,)})
    return {name: randn(*shape, seed=seed + i, scale=shape[-1] ** -0.5)
            for i, (name, shape) in enumerate(sorted(shapes.items()))}


def run_layer(seqlen, batch=2, seed=0, **overrides):
    config = tiny_config(**overrides)
    params = random_params(config, seed)
    x = randn(batch, seqlen, config["dim"], seed=seed + 100)
    return config, params, x, nsa_branches_ref(x, params, config)


def causal_sdpa(q, k, v, scale):
    """Full causal attention from torch's sdpa in fp64, GQA expanded by hand."""
    group = q.shape[2] // k.shape[2]
    k, v = (t.repeat_interleave(group, dim=2).transpose(1, 2) for t in (k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k, v,
                                                           is_causal=True, scale=scale)
    return out.transpose(1, 2)


GQA = [(4, 4), (4, 2), (4, 1)]  # (n_heads, n_kv_heads): ratios 1, 2, 4
LENGTHS = [1, 17, 113, 200]


# ---------------------------------------------------------------------------------------------
# Against fla-core's naive NSA

@pytest.fixture
def fla_naive(monkeypatch):
    """fla.ops.nsa.naive with its two GPU-only dependencies replaced for a CPU run:
    mean_pooling (Triton; naive_nsa computes its pooled keys even when g_cmp is None and then
    never uses them) and flash_attn_func (flash-attn, for the window branch) by deepseek_attn's
    CPU drop-in for flash-attn 2's flash_attn_func."""
    naive = pytest.importorskip("fla.ops.nsa.naive")

    def unused_mean_pooling(x, chunk_size, cu_seqlens=None):
        return torch.stack([part.mean(1) for part in x.split(chunk_size, dim=1)], dim=1)

    monkeypatch.setattr(naive, "mean_pooling", unused_mean_pooling)
    monkeypatch.setattr(naive, "flash_attn_func", deepseek_attn.flash_attn_func)
    return naive


def fla_block_indices(block_indices):
    """Ours (B, S, Hkv, n) int32 as fla wants them: int64, each row ascending, −1 at the end."""
    spill = torch.iinfo(torch.int32).max
    ordered = block_indices.long().masked_fill(block_indices < 0, spill).sort(-1).values
    return ordered.masked_fill(ordered == spill, -1)


@pytest.mark.parametrize("heads,heads_kv,seqlen", [(16, 1, 83), (32, 2, 50)])
def test_selection_and_window_match_fla_naive_nsa(fla_naive, heads, heads_kv, seqlen):
    # naive_nsa needs a GQA group of at least 16 heads; its window branch calls flash-attn with
    # window_size=(w − 1, 0), i.e. keys t − w < s ≤ t, and no scale, i.e. D^-0.5 (our default).
    config, _, _, branches = run_layer(seqlen, batch=1, n_heads=heads, n_kv_heads=heads_kv,
                                       head_dim=8, v_head_dim=8, softmax_scale=None,
                                       select_block=32, compress_block=16, compress_stride=8,
                                       select_n=4, window=37)
    q, k, v, gates = branches["q"], branches["k"], branches["v"], branches["gates"]
    indices = fla_block_indices(branches["block_indices"])
    assert (branches["block_indices"] >= 0).sum(-1).max() <= config["select_n"]
    selected = fla_naive.naive_nsa(q, k[:, :, 1], v[:, :, 1], g_slc=gates[..., 1],
                                   block_indices=indices, block_counts=config["select_n"],
                                   block_size=config["select_block"], window_size=0)
    # naive_nsa_selection computes in fp32
    torch.testing.assert_close(selected, gates[..., 1, None] * branches["o_slc"],
                               rtol=1e-5, atol=1e-5)
    # g_slc = 0 keeps only the window branch, run over the window's keys and values
    window = fla_naive.naive_nsa(q, k[:, :, 2], v[:, :, 2], g_slc=torch.zeros_like(gates[..., 1]),
                                 g_swa=gates[..., 2], block_indices=indices,
                                 block_counts=config["select_n"],
                                 block_size=config["select_block"], window_size=config["window"])
    torch.testing.assert_close(window, gates[..., 2, None] * branches["o_win"],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,heads_kv", GQA)
@pytest.mark.parametrize("seqlen,blocks", [(1, (16, 8, 16, 3)), (17, (16, 8, 16, 3)),
                                           (113, (16, 8, 16, 3)), (200, (32, 16, 64, 2))])
def test_selection_branch_matches_fla_naive_selection(fla_naive, heads, heads_kv, seqlen, blocks):
    block, stride, select_block, select_n = blocks
    _, _, _, branches = run_layer(seqlen, batch=1, n_heads=heads, n_kv_heads=heads_kv,
                                  compress_block=block, compress_stride=stride,
                                  select_block=select_block, select_n=select_n)
    q, k, v = branches["q"], branches["k"][:, :, 1], branches["v"][:, :, 1]
    expected = fla_naive.naive_nsa_selection(q, k, v, fla_block_indices(branches["block_indices"]),
                                             block_size=select_block, scale=16 ** -0.5)
    torch.testing.assert_close(branches["o_slc"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,heads_kv", GQA)
@pytest.mark.parametrize("seqlen", [17, 113])
def test_compression_attention_matches_fla_when_stride_is_block(fla_naive, heads, heads_kv,
                                                                seqlen):
    # fla compresses non-overlapping blocks (stride = block): block c is seen once
    # (c + 1)·l − 1 ≤ t, our i·d + l − 1 ≤ t with d = l.
    _, _, _, branches = run_layer(seqlen, n_heads=heads, n_kv_heads=heads_kv, compress_block=8,
                                  compress_stride=8, select_block=16)
    expected, lse = fla_naive.naive_nsa_compression(branches["q"], branches["k_cmp"],
                                                    branches["v_cmp"], block_size=8,
                                                    scale=16 ** -0.5)
    torch.testing.assert_close(branches["o_cmp"], expected, rtol=1e-5, atol=1e-5)
    assert torch.isinf(lse[:, :7]).all() and (branches["o_cmp"][:, :7] == 0).all()


@pytest.mark.parametrize("heads,heads_kv", GQA)
@pytest.mark.parametrize("seqlen", [17, 113])
def test_block_choice_matches_fla_topk_when_blocks_coincide(fla_naive, heads, heads_kv, seqlen):
    # With l = d = l', p_slc[j] = p_cmp[j]; fla forces block 0 and the query's own and previous
    # blocks (our init_blocks=1, local_blocks=2), ranks by the group's mean probability (same
    # order as our sum) and needs a compressed key for the partial last block too: it is never
    # visible to the compression softmax, so its value does not matter.
    config, _, _, branches = run_layer(seqlen, n_heads=heads, n_kv_heads=heads_kv,
                                       compress_block=16, compress_stride=16, select_block=16,
                                       select_n=4)
    k_cmp = branches["k_cmp"]
    missing = -(-seqlen // 16) - k_cmp.shape[1]
    k_cmp = torch.cat([k_cmp, k_cmp.new_zeros(k_cmp.shape[0], missing, *k_cmp.shape[2:])], 1)
    expected = fla_naive.naive_nsa_topk(branches["q"], k_cmp, block_counts=4, block_size=16,
                                        scale=16 ** -0.5)
    assert torch.equal(fla_block_indices(branches["block_indices"]), fla_block_indices(expected))


# ---------------------------------------------------------------------------------------------
# RoPE

def test_rope_matches_transformers_llama_rotary_embedding():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import (LlamaRotaryEmbedding,
                                                          apply_rotary_pos_emb)
    seqlen, head_dim, theta = 40, 16, 500.0
    hf_config = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta})
    q, k = randn(2, seqlen, 4, head_dim, seed=1), randn(2, seqlen, 2, head_dim, seed=2)
    positions = torch.arange(seqlen).expand(2, -1)
    cos, sin = LlamaRotaryEmbedding(hf_config)(q, positions)  # fp32 frequencies
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    torch.testing.assert_close(nsa_rope_ref(q, theta), hf_q, rtol=0, atol=1e-5)
    torch.testing.assert_close(nsa_rope_ref(k, theta), hf_k, rtol=0, atol=1e-5)


def test_rope_matches_the_indexer_rotate_half_and_keeps_relative_positions():
    x = randn(2, 29, 3, 2, 8, seed=3)  # (B, S, branch, Hkv, D) like the keys
    inv_freq = 10000.0 ** (-torch.arange(0, 8, 2, dtype=F64) / 8)
    positions = torch.arange(29).expand(2, -1)
    expected = rope_rotate_half_ref(x.flatten(2, 3), positions, inv_freq).unflatten(2, (3, 2))
    torch.testing.assert_close(nsa_rope_ref(x, 10000.0), expected, rtol=1e-12, atol=1e-12)
    # the same vector at every position: dot products depend only on the distance
    same = randn(1, 1, 1, 8, seed=4).expand(1, 29, 1, 8)
    rotated = nsa_rope_ref(same, 10000.0)[0, :, 0]
    dots = rotated @ rotated.T
    for distance in (0, 1, 5):
        diagonal = dots.diagonal(distance)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal))


def test_rope_off_leaves_queries_and_keys_unrotated():
    config, params, x, branches = run_layer(17, rope_theta=None)
    torch.testing.assert_close(branches["q"].flatten(2), x @ params["wq.weight"].T)
    torch.testing.assert_close(branches["k"].flatten(2), x @ params["wk.weight"].T)
    _, _, _, rotated = run_layer(17, rope_theta=10000.0)
    torch.testing.assert_close(rotated["v"], branches["v"])  # values are never rotated
    torch.testing.assert_close(rotated["q"][:, :1], branches["q"][:, :1])  # position 0
    assert not torch.allclose(rotated["q"][:, 1:], branches["q"][:, 1:])


# ---------------------------------------------------------------------------------------------
# Branches that cover everything are causal attention

@pytest.mark.parametrize("heads,heads_kv", GQA)
@pytest.mark.parametrize("seqlen", LENGTHS)
def test_selection_of_every_block_is_causal_attention(heads, heads_kv, seqlen):
    _, _, _, branches = run_layer(seqlen, n_heads=heads, n_kv_heads=heads_kv, select_n=13,
                                  init_blocks=1, local_blocks=1)
    assert (branches["block_indices"] >= 0).sum(-1).max() == -(-seqlen // 16)
    expected = causal_sdpa(branches["q"], branches["k"][:, :, 1], branches["v"][:, :, 1],
                           16 ** -0.5)
    torch.testing.assert_close(branches["o_slc"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("heads,heads_kv", GQA)
@pytest.mark.parametrize("seqlen", LENGTHS)
def test_window_covering_the_sequence_is_causal_attention(heads, heads_kv, seqlen):
    _, _, _, branches = run_layer(seqlen, n_heads=heads, n_kv_heads=heads_kv, window=seqlen)
    expected = causal_sdpa(branches["q"], branches["k"][:, :, 2], branches["v"][:, :, 2],
                           16 ** -0.5)
    torch.testing.assert_close(branches["o_win"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [1, 5, 64])
def test_window_is_flash_attention_window_minus_one(window):
    q, k, v = randn(2, 113, 4, 16, seed=1), randn(2, 113, 2, 16, seed=2), randn(2, 113, 2, 8)
    expected, _ = attention_ref(q, k, v, softmax_scale=0.3, causal=True,
                                window_size=(window - 1, 0))
    torch.testing.assert_close(nsa_window_attention_ref(q, k, v, window, 0.3), expected,
                               rtol=1e-12, atol=1e-12)
    if window == 1:  # each query sees only its own key
        torch.testing.assert_close(nsa_window_attention_ref(q, k, v, 1),
                                   v.repeat_interleave(2, dim=2))


# ---------------------------------------------------------------------------------------------
# Selection scores and the block choice

@pytest.mark.parametrize("blocks,weights", [((32, 16, 64), [1, 2, 2, 2, 1]),
                                            ((16, 16, 64), [1, 1, 1, 1]),
                                            ((32, 16, 32), [1, 2, 1]),
                                            ((16, 16, 16), [1])])
def test_selection_scores_give_the_formula_multiplicities(blocks, weights):
    # p_slc[j] = Σ_{m < l'/d} Σ_{n < l/d} p_cmp[(l'/d)·j − m − n]: a one-hot at compressed
    # block i counts weights[(l'/d)·j − i] times in block j (0 outside the list).
    block, stride, select_block = blocks
    seqlen = 256
    count = nsa_num_compressed(seqlen, block, stride)
    ratio = select_block // stride
    for i in range(count):
        p_cmp = torch.zeros(1, seqlen, 1, count, dtype=F64)
        p_cmp[..., i] = 1.0
        scores = nsa_selection_scores_ref(p_cmp, 1, block, stride, select_block)
        assert scores.shape == (1, seqlen, 1, seqlen // select_block)
        for j in range(seqlen // select_block):
            offset = ratio * j - i
            expected = weights[offset] if 0 <= offset < len(weights) else 0
            assert (scores[..., j] == expected).all(), (i, j)


def test_selection_scores_sum_over_each_group():
    p_cmp = randn(2, 70, 6, nsa_num_compressed(70, 32, 16), seed=5).abs()
    per_head = nsa_selection_scores_ref(p_cmp, 6, 32, 16, 64)  # one head per group
    grouped = nsa_selection_scores_ref(p_cmp, 2, 32, 16, 64)
    torch.testing.assert_close(grouped, per_head.unflatten(2, (2, 3)).sum(3))
    with pytest.raises(ValueError, match="compress_stride must divide"):
        nsa_selection_scores_ref(p_cmp, 2, 32, 24, 64)


def test_block_choice_by_hand():
    # l' = 16, n = 4, init 1, local 2; row t = 90 sits in block 5 and sees blocks 0..5.
    scores = torch.tensor([0.0, 0.5, 0.9, 0.5, 0.7, 0.1, 9.0], dtype=F64)
    scores = scores.expand(1, 100, 1, 7)
    picked = nsa_select_blocks_ref(scores, select_n=4, select_block=16)
    assert picked.dtype == torch.int32 and picked.shape == (1, 100, 1, 4)
    # forced 0, 4, 5 first (lower first), then the best other: 2 (block 6 is in the future)
    assert picked[0, 90, 0].tolist() == [0, 4, 5, 2]
    # t = 40 (block 2, forced 0, 1, 2): then 3? no, 3 is unseen; only three blocks visible
    assert picked[0, 40, 0].tolist() == [0, 1, 2, -1]
    assert picked[0, 0, 0].tolist() == [0, -1, -1, -1]  # early rows are padded with -1
    assert picked[0, 16, 0].tolist() == [0, 1, -1, -1]
    # t = 99 (block 6 visible, forced 0, 5, 6), then 2 beats 4 and the tied 1 and 3
    assert picked[0, 99, 0].tolist() == [0, 5, 6, 2]


def test_block_choice_ties_go_to_the_lower_block():
    scores = torch.full((1, 160, 2, 10), 0.25, dtype=F64)
    picked = nsa_select_blocks_ref(scores, select_n=5, select_block=16, init_blocks=1,
                                   local_blocks=1)
    assert picked[0, 159, 0].tolist() == [0, 9, 1, 2, 3]
    scores[0, :, 1, 7] = 0.5  # kv head 1 prefers block 7, the rest still tie
    picked = nsa_select_blocks_ref(scores, select_n=5, select_block=16, init_blocks=1,
                                   local_blocks=1)
    assert picked[0, 159, 1].tolist() == [0, 9, 7, 1, 2]
    assert picked[0, 159, 0].tolist() == [0, 9, 1, 2, 3]


@pytest.mark.parametrize("init_blocks,local_blocks", [(1, 2), (2, 1), (0, 0), (3, 3)])
def test_forced_blocks_come_first_and_the_rest_by_score(init_blocks, local_blocks):
    scores = randn(2, 150, 2, 10, seed=6)
    select_block, select_n = 16, 7
    picked = nsa_select_blocks_ref(scores, select_n, select_block, init_blocks, local_blocks)
    for b in range(2):
        for t in range(150):
            own = t // select_block
            forced = [j for j in range(own + 1)
                      if j < init_blocks or own - local_blocks < j <= own]
            for h in range(2):
                row = [j for j in picked[b, t, h].tolist() if j >= 0]
                assert picked[b, t, h].tolist() == row + [-1] * (select_n - len(row))
                assert len(row) == min(select_n, own + 1) == len(set(row))
                assert row[:len(forced)] == forced[:select_n]
                rest = row[len(forced):]
                others = sorted((j for j in range(own + 1) if j not in forced),
                                key=lambda j: -scores[b, t, h, j].item())
                assert rest == others[:len(rest)]


def test_block_choice_agrees_with_deepseek_attn_block_select():
    scores = randn(2, 200, 2, 4, seed=7)
    for init_blocks, local_blocks, select_n in [(1, 2, 3), (1, 1, 2), (0, 1, 4)]:
        ours = nsa_select_blocks_ref(scores, select_n, 64, init_blocks, local_blocks)
        theirs = deepseek_attn.block_select(scores, select_n, block_size=64, seqlen_k=200,
                                            init_blocks=init_blocks, local_blocks=local_blocks)
        assert torch.equal(ours, theirs)


def test_selection_attention_skips_padding_and_masks_inside_blocks():
    q, k, v = randn(1, 40, 2, 8, seed=1), randn(1, 40, 1, 8, seed=2), randn(1, 40, 1, 4, seed=3)
    only_block_1 = torch.tensor([1, -1], dtype=torch.int32).expand(1, 40, 1, 2)
    out = nsa_selection_attention_ref(q, k, v, only_block_1, select_block=16)
    assert (out[:, :16] == 0).all()  # block 1 starts at key 16: nothing visible before
    expected, _ = attention_ref(q[:, 16:32], k[:, 16:32], v[:, 16:32], causal=True)
    torch.testing.assert_close(out[:, 16:32], expected)
    expected, _ = attention_ref(q[:, 32:], k[:, 16:32], v[:, 16:32])
    torch.testing.assert_close(out[:, 32:], expected)


# ---------------------------------------------------------------------------------------------
# Compression

@pytest.mark.parametrize("seqlen,count", [(1, 0), (31, 0), (32, 1), (47, 1), (48, 2), (113, 6)])
def test_number_of_compressed_blocks(seqlen, count):
    assert nsa_num_compressed(seqlen, 32, 16) == count


@pytest.mark.parametrize("seqlen", [1, 15])
def test_short_sequences_have_no_compressed_blocks(seqlen):
    _, _, _, branches = run_layer(seqlen)  # compress_block = 16
    assert branches["k_cmp"].shape == (2, 0, 2, 16) and branches["v_cmp"].shape == (2, 0, 2, 8)
    assert branches["p_cmp"].shape == (2, seqlen, 4, 0)
    assert (branches["o_cmp"] == 0).all()
    assert torch.isfinite(branches["out"]).all()


def test_compressed_block_by_hand():
    config, params, _, branches = run_layer(113, compress_block=16, compress_stride=8)
    keys, values = branches["k"][:, :, 0], branches["v"][:, :, 0]

    def compress(block, prefix):  # one block (l, W): + pe, flatten key by key, MLP, exact GELU
        flat = (block + params[f"{prefix}.pe"]).reshape(-1)
        hidden = params[f"{prefix}.fc1.weight"] @ flat + params[f"{prefix}.fc1.bias"]
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
        return params[f"{prefix}.fc2.weight"] @ hidden + params[f"{prefix}.fc2.bias"]

    assert branches["k_cmp"].shape[1] == (113 - 16) // 8 + 1
    for b, i, h in [(0, 0, 0), (1, 3, 1), (0, 12, 1)]:
        torch.testing.assert_close(branches["k_cmp"][b, i, h],
                                   compress(keys[b, 8 * i:8 * i + 16, h], "compress_k"))
        torch.testing.assert_close(branches["v_cmp"][b, i, h],
                                   compress(values[b, 8 * i:8 * i + 16, h], "compress_v"))


def test_compression_attention_by_loop():
    q, k_cmp, v_cmp = randn(2, 70, 4, 8, seed=1), randn(2, 7, 2, 8, seed=2), randn(2, 7, 2, 4)
    out, probs = nsa_compression_attention_ref(q, k_cmp, v_cmp, 32, 16, softmax_scale=0.5)
    for b, t, h in [(0, 30, 0), (0, 31, 1), (1, 47, 2), (1, 69, 3)]:
        seen = [i for i in range(7) if i * 16 + 31 <= t]
        expected_probs = torch.zeros(7, dtype=F64)
        if seen:
            logits = torch.stack([0.5 * q[b, t, h] @ k_cmp[b, i, h // 2] for i in seen])
            expected_probs[seen] = logits.softmax(0)
        torch.testing.assert_close(probs[b, t, h], expected_probs)
        torch.testing.assert_close(out[b, t, h], expected_probs @ v_cmp[b, :, h // 2])
    assert (out[:, :31] == 0).all() and (probs[:, :31] == 0).all()
    torch.testing.assert_close(probs[:, 31:].sum(-1), torch.ones(2, 39, 4, dtype=F64))


def test_compress_mlp_is_shared_by_the_kv_heads():
    config = tiny_config()
    params = random_params(config)
    mlp = {name[len("compress_k."):]: value for name, value in params.items()
           if name.startswith("compress_k.")}
    keys = randn(1, 40, 1, 16, seed=8)
    both = nsa_compress_ref(torch.cat([keys, keys], dim=2), mlp, 16, 8)
    torch.testing.assert_close(both[:, :, 0], both[:, :, 1])
    torch.testing.assert_close(both[:, :, :1], nsa_compress_ref(keys, mlp, 16, 8))


# ---------------------------------------------------------------------------------------------
# The whole layer

@pytest.mark.parametrize("heads,heads_kv", GQA)
@pytest.mark.parametrize("seqlen", LENGTHS)
def test_layer_is_the_gated_sum_of_its_branches(heads, heads_kv, seqlen):
    config, params, x, branches = run_layer(seqlen, n_heads=heads, n_kv_heads=heads_kv)
    out = nsa_attention_ref(x, params, config)
    assert out.shape == (2, seqlen, 32) and out.dtype == F64 and torch.isfinite(out).all()
    torch.testing.assert_close(out, branches["out"], rtol=0, atol=0)
    gates = torch.sigmoid(x @ params["gate.weight"].T + params["gate.bias"])
    gates = gates.view(2, seqlen, heads, 3)
    mixed = (gates[..., 0:1] * branches["o_cmp"] + gates[..., 1:2] * branches["o_slc"]
             + gates[..., 2:3] * branches["o_win"])
    torch.testing.assert_close(out, mixed.reshape(2, seqlen, -1) @ params["wo.weight"].T)
    indices = branches["block_indices"]
    assert indices.dtype == torch.int32 and indices.shape == (2, seqlen, heads_kv, 3)
    own_block = (torch.arange(seqlen) // 16).view(1, -1, 1, 1)  # always listed, once
    assert ((indices == own_block).sum(-1) == 1).all()


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_gates_are_laid_out_heads_then_branches(branch):
    config, params, x, _ = run_layer(40)
    params = dict(params, **{"gate.weight": torch.zeros_like(params["gate.weight"])})
    bias = torch.full((4, 3), -60.0, dtype=F64)
    bias[:, branch] = 60.0  # this branch's gate is 1, the others' e^-60
    params["gate.bias"] = bias.flatten()
    out, branches = nsa_attention_ref(x, params, config, return_branches=True)
    chosen = branches[("o_cmp", "o_slc", "o_win")[branch]]
    torch.testing.assert_close(out, chosen.flatten(2) @ params["wo.weight"].T)


def test_branches_use_their_own_keys_and_values():
    config, params, x, branches = run_layer(113)
    scale = config["softmax_scale"]
    q, k, v = branches["q"], branches["k"], branches["v"]
    torch.testing.assert_close(branches["o_win"],
                               nsa_window_attention_ref(q, k[:, :, 2], v[:, :, 2], 20, scale))
    torch.testing.assert_close(branches["o_slc"], nsa_selection_attention_ref(
        q, k[:, :, 1], v[:, :, 1], branches["block_indices"], 16, scale))
    assert not torch.allclose(branches["o_win"], nsa_window_attention_ref(
        q, k[:, :, 1], v[:, :, 1], 20, scale))


def test_config_as_namespace_and_defaults():
    config, params, x, branches = run_layer(17)
    out = nsa_attention_ref(x, params, types.SimpleNamespace(**config))
    torch.testing.assert_close(out, branches["out"], rtol=0, atol=0)
    defaults = nsa_config_ref(dict(dim=8, n_heads=2, n_kv_heads=1, head_dim=16, v_head_dim=8))
    assert (defaults["compress_block"], defaults["compress_stride"], defaults["select_block"],
            defaults["select_n"], defaults["window"], defaults["init_blocks"],
            defaults["local_blocks"]) == (32, 16, 64, 16, 512, 1, 2)
    assert defaults["softmax_scale"] == 0.25 and defaults["rope_theta"] is None
    with pytest.raises(ValueError, match="n_heads must be a multiple of n_kv_heads"):
        nsa_config_ref(dict(dim=8, n_heads=3, n_kv_heads=2, head_dim=16, v_head_dim=8))


def test_fp32_run_is_close_to_fp64():
    config, params, x, branches = run_layer(113)
    out = nsa_attention_ref(x.float(), {k: v.float() for k, v in params.items()}, config,
                            dtype=torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), branches["out"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seqlen", [1, 17, 40])
def test_gradients_are_finite_and_reach_every_parameter(seqlen):
    # Short rows see one key per softmax (S = 1: every branch; S = 17: the single compressed
    # block), whose weight is 1 whatever the key: those keys get no gradient, values do.
    config = tiny_config()
    params = {k: v.requires_grad_() for k, v in random_params(config).items()}
    x = randn(2, seqlen, 32, seed=9).requires_grad_()
    nsa_attention_ref(x, params, config).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, value in params.items():
        if value.grad is None:  # no compressed block: the MLPs are not used at all
            assert seqlen < 16 and name.startswith("compress_"), name
            continue
        assert torch.isfinite(value.grad).all(), name
        if seqlen == 40 or name in ("wv.weight", "wo.weight", "gate.weight", "gate.bias"):
            assert value.grad.abs().sum() > 0, name
