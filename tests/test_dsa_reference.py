"""The DeepSeek Sparse Attention references of reference/sparse.py (SPEC §4): the Hadamard
rotation, the indexer's logits (full and FP8) and top-k against explicit formulas, the DSA layer
against Hugging Face transformers' DeepseekV32Attention on tiny random fp64 weights (outputs,
gradients and the selected indices), and the indexer's KL loss against a per-row loop."""

import math

import pytest
import torch

from deepseek_attn.reference import (dsa_attention_ref, dsa_indexer_ref, hadamard_ref,
                                     indexer_kl_loss_ref, indexer_logits_fp8_ref,
                                     indexer_logits_ref, indexer_topk_ref, mla_attention_ref,
                                     mla_compressed_query_ref, mla_inv_freq,
                                     quantize_indexer_fp8_ref, rope_rotate_half_ref)

from test_mla_reference import (HF_TO_DEEPSEEK, causal_additive_mask, deepseek_config_from_hf,
                                fp64_position_embeddings, random_mla_weights, relative_error,
                                run_in_fp64, tiny_config, yarn_rope_parameters)

F64 = torch.float64
INF = float("inf")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------------------------------------
# Hadamard rotation

@pytest.mark.parametrize("size", [1, 2, 16, 128])
def test_hadamard_is_orthonormal_and_keeps_dot_products(size):
    matrix = hadamard_ref(torch.eye(size, dtype=F64))
    torch.testing.assert_close(matrix @ matrix.T, torch.eye(size, dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(matrix.abs(), torch.full_like(matrix, size ** -0.5))
    x, y = randn(3, 5, size, seed=1), randn(3, 5, size, seed=2)
    torch.testing.assert_close((hadamard_ref(x) * hadamard_ref(y)).sum(-1), (x * y).sum(-1),
                               rtol=1e-12, atol=1e-12)


def test_hadamard_is_sylvesters():
    sylvester_4 = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]],
                               dtype=F64)
    assert torch.equal(hadamard_ref(torch.eye(4, dtype=F64)) * 2, sylvester_4)


@pytest.mark.parametrize("size", [0, 3, 12, 96])
def test_hadamard_rejects_other_sizes(size):
    with pytest.raises(ValueError, match=rf"last dim of x to be a power of two \(got {size}\)"):
        hadamard_ref(torch.zeros(2, size))


# ---------------------------------------------------------------------------------------------
# Indexer logits and top-k

def loop_indexer_logits(q, k, weights, causal, scale):
    """I[b, t, s] one entry at a time, −inf where the bottom-right causal mask hides s from t."""
    batch, seqlen_q, heads, _ = q.shape
    seqlen_k = k.shape[1]
    logits = torch.full((batch, seqlen_q, seqlen_k), -INF, dtype=F64)
    for b in range(batch):
        for t in range(seqlen_q):
            for s in range(seqlen_k):
                if causal and s > t + seqlen_k - seqlen_q:
                    continue
                logits[b, t, s] = scale * sum(float(weights[b, t, h])
                                              * max(0.0, float(q[b, t, h] @ k[b, s]))
                                              for h in range(heads))
    return logits


# (Sq, Sk): fewer queries than keys, more (the first rows then see no key), as many.
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(5, 9), (9, 5), (6, 6)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("softmax_scale", [None, 0.3])
def test_indexer_logits_match_loop(seqlen_q, seqlen_k, causal, softmax_scale):
    q, k = randn(2, seqlen_q, 3, 8, seed=1), randn(2, seqlen_k, 8, seed=2)
    weights = randn(2, seqlen_q, 3, seed=3)
    logits = indexer_logits_ref(q, k, weights, causal, softmax_scale)
    scale = 8 ** -0.5 if softmax_scale is None else softmax_scale
    assert logits.dtype == F64
    torch.testing.assert_close(logits, loop_indexer_logits(q, k, weights, causal, scale),
                               rtol=1e-13, atol=1e-13)
    assert indexer_logits_ref(q.float(), k.float(), weights.float(), causal).dtype == torch.float32


def test_indexer_fp8_is_the_dequantised_formula():
    q, k = 3 * randn(2, 5, 4, 16, seed=1), randn(2, 7, 16, seed=2)
    k[0, 3] = 0  # an all-zero row takes the 1e-4 amax floor
    weights = randn(2, 5, 4, seed=3)
    q_fp8, q_scale = quantize_indexer_fp8_ref(q)
    k_fp8, k_scale = quantize_indexer_fp8_ref(k)
    assert q_fp8.dtype == k_fp8.dtype == torch.float8_e4m3fn
    assert q_scale.shape == (2, 5, 4) and k_scale.shape == (2, 7)
    assert q_scale.dtype == k_scale.dtype == torch.float32
    torch.testing.assert_close(q_scale, q.float().abs().amax(-1).clamp(min=1e-4) / 448)
    assert k_scale[0, 3] == torch.tensor(1e-4, dtype=torch.float32) / 448
    assert torch.equal(q_fp8, (q.float() / q_scale[..., None]).to(torch.float8_e4m3fn))

    logits = indexer_logits_fp8_ref(q_fp8, q_scale, k_fp8, k_scale, weights)
    dequantised = indexer_logits_ref(q_fp8.double() * q_scale.double()[..., None],
                                     k_fp8.double() * k_scale.double()[..., None], weights)
    assert logits.dtype == torch.float32
    # fp32 dequantisation rounds value·scale once: a few fp32 ulps on the logits.
    torch.testing.assert_close(logits, dequantised.float(), rtol=1e-6, atol=1e-6)


def test_indexer_fp8_after_hadamard_stays_close():
    """SPEC §4's FP8 indexer (rotate, then e4m3) within SPEC §6's FP8 rule of the full-precision
    logits (the rotation keeps them: without e4m3 they would agree to rounding)."""
    q, k = randn(2, 9, 4, 64, seed=1), randn(2, 9, 64, seed=2)
    weights = randn(2, 9, 4, seed=3).abs()
    exact = indexer_logits_ref(q, k, weights)
    torch.testing.assert_close(indexer_logits_ref(hadamard_ref(q), hadamard_ref(k), weights), exact,
                               rtol=1e-12, atol=1e-12)
    rotated = indexer_logits_fp8_ref(*quantize_indexer_fp8_ref(hadamard_ref(q)),
                                     *quantize_indexer_fp8_ref(hadamard_ref(k)), weights).double()
    assert torch.equal(torch.isinf(rotated), torch.isinf(exact))
    finite = torch.isfinite(exact)
    a, r = rotated[finite], exact[finite]
    assert 1 - 2 * (a * r).sum() / (a * a + r * r).sum() <= 1e-3


def test_indexer_topk_ties_and_padding():
    logits = torch.tensor([[[3, 1, 3, -INF, 2, 3],
                            [-INF, 5, -INF, -INF, 5, -INF],
                            [-INF] * 6]], dtype=F64)
    indices = indexer_topk_ref(logits, 4)
    assert indices.dtype == torch.int32
    assert indices.tolist() == [[[0, 2, 5, 4], [1, 4, -1, -1], [-1] * 4]]
    assert indexer_topk_ref(logits, 8).tolist() == [[[0, 2, 5, 4, 1, -1, -1, -1],
                                                     [1, 4] + [-1] * 6, [-1] * 8]]


@pytest.mark.parametrize("topk", [1, 3, 7, 12])
def test_indexer_topk_matches_sorted_on_integer_logits(topk):
    """Many ties: the expected order sorts by (−logit, index)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (2, 6, 9), generator=generator).to(F64)
    logits = logits.masked_fill(torch.ones(6, 9, dtype=torch.bool).triu(4), -INF)  # bottom-right
    indices = indexer_topk_ref(logits, topk)
    for b in range(2):
        for t in range(6):
            finite = [s for s in range(9) if math.isfinite(logits[b, t, s])]
            ordered = sorted(finite, key=lambda s: (-logits[b, t, s].item(), s))[:topk]
            assert indices[b, t].tolist() == ordered + [-1] * (topk - len(ordered))


# ---------------------------------------------------------------------------------------------
# The DSA layer against transformers' DeepseekV32Attention

BATCH, SEQLEN = 2, 13
TINY_INDEXER = dict(index_n_heads=4, index_head_dim=16)
HF_TO_DEEPSEEK_DSA = {**HF_TO_DEEPSEEK, "indexer.wq_b.weight": "indexer.wq_b",
                      "indexer.wk.weight": "indexer.wk",
                      "indexer.k_norm.weight": "indexer.k_norm.weight",
                      "indexer.k_norm.bias": "indexer.k_norm.bias",
                      "indexer.weights_proj.weight": "indexer.weights_proj"}


def tiny_dsa_config(yarn, index_topk):
    """The reference config of the tiny DSA layer (it always compresses its queries)."""
    return {**tiny_config(q_lora=True, yarn=yarn), **TINY_INDEXER, "index_topk": index_topk}


def random_dsa_weights(config, seed=0):
    """random_mla_weights plus the indexer's: linears N(0, 0.3²), LayerNorm weight 1 + 0.1·N(0, 1)
    and bias 0.1·N(0, 1)."""
    generator = torch.Generator().manual_seed(seed + 1)
    heads, head_dim = config["index_n_heads"], config["index_head_dim"]

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=F64)

    return {**random_mla_weights(config, seed),
            "indexer.wq_b": 0.3 * normal(heads * head_dim, config["q_lora_rank"]),
            "indexer.wk": 0.3 * normal(head_dim, config["dim"]),
            "indexer.k_norm.weight": 1 + 0.1 * normal(head_dim),
            "indexer.k_norm.bias": 0.1 * normal(head_dim),
            "indexer.weights_proj": 0.3 * normal(heads, config["dim"])}


def hf_dsa_attention(config, weights):
    """(DeepseekV32Attention in fp64, eval, eager, holding a copy of `weights`; its
    DeepseekV32RotaryEmbedding) for a reference config."""
    transformers = pytest.importorskip("transformers")
    modeling = pytest.importorskip("transformers.models.deepseek_v32.modeling_deepseek_v32")
    if config["max_seq_len"] > config["original_seq_len"]:
        rope = yarn_rope_parameters(config["rope_factor"], config["original_seq_len"])
    else:
        rope = {"rope_type": "default", "rope_theta": config["rope_theta"]}
    hf_config = transformers.DeepseekV32Config(
        hidden_size=config["dim"], num_attention_heads=config["n_heads"],
        num_key_value_heads=config["n_heads"], q_lora_rank=config["q_lora_rank"],
        kv_lora_rank=config["kv_lora_rank"], qk_nope_head_dim=config["qk_nope_head_dim"],
        qk_rope_head_dim=config["qk_rope_head_dim"], v_head_dim=config["v_head_dim"],
        attention_bias=False, rms_norm_eps=config["norm_eps"],
        max_position_embeddings=config["max_seq_len"], rope_parameters=rope,
        index_n_heads=config["index_n_heads"], index_head_dim=config["index_head_dim"],
        index_topk=config["index_topk"])
    hf_config._attn_implementation = "eager"
    attention = modeling.DeepseekV32Attention(hf_config, layer_idx=0).double().eval()
    attention.load_state_dict({name: weights[HF_TO_DEEPSEEK_DSA[name]]
                               for name in attention.state_dict()})
    index_fields = {name: getattr(hf_config, name) for name in (*TINY_INDEXER, "index_topk")}
    assert {**deepseek_config_from_hf(hf_config), **index_fields} == config
    return attention, modeling.DeepseekV32RotaryEmbedding(hf_config)


def layer_inputs(config):
    """(x, positions, cotangent): the second sequence's positions start at 5."""
    x = randn(BATCH, SEQLEN, config["dim"], seed=10)
    positions = torch.arange(SEQLEN) + torch.tensor([[0], [5]])
    return x, positions, randn(BATCH, SEQLEN, config["dim"], seed=11)


# index_topk 5 < S: the selection matters; 16 >= S: DSA is dense MLA.
DSA_CASES = [pytest.param(topk, yarn, id=f"topk{topk}-{'yarn' if yarn else 'rope'}")
             for topk in (5, 16) for yarn in (True, False)]
# transformers as shipped computes norms, rotary angles and the eager softmax in fp32.
DSA_PRECISIONS = [pytest.param("transformers", 1e-5, id="as-shipped"),
                  pytest.param("fp64", 1e-12, id="fp64")]


@pytest.mark.parametrize("precision, tolerance", DSA_PRECISIONS)
@pytest.mark.parametrize("index_topk, yarn", DSA_CASES)
def test_dsa_reference_matches_transformers(index_topk, yarn, precision, tolerance):
    config = tiny_dsa_config(yarn, index_topk)
    weights = random_dsa_weights(config)
    hf_attention, rotary = hf_dsa_attention(config, weights)
    x, positions, cotangent = layer_inputs(config)

    x_hf = x.clone().requires_grad_()
    if precision == "fp64":
        run_in_fp64(hf_attention)
        position_embeddings = fp64_position_embeddings(config, positions)
    else:
        position_embeddings = rotary(x_hf, positions)
    out_hf, _ = hf_attention(x_hf, position_embeddings, causal_additive_mask(SEQLEN))
    out_hf.backward(cotangent)

    weights = {name: weight.requires_grad_() for name, weight in weights.items()}
    x_ref = x.clone().requires_grad_()
    out_ref = dsa_attention_ref(x_ref, weights, config, positions)
    out_ref.backward(cotangent)

    assert relative_error(out_ref, out_hf) < tolerance
    assert relative_error(x_ref.grad, x_hf.grad) < tolerance
    for name, parameter in hf_attention.named_parameters():
        ours = weights[HF_TO_DEEPSEEK_DSA[name]].grad
        if name.startswith("indexer."):  # both indexers select under no_grad
            assert ours is None and parameter.grad is None, name
        else:
            assert relative_error(ours, parameter.grad) < tolerance, name


@pytest.mark.parametrize("yarn", [True, False], ids=["yarn", "rope"])
def test_dsa_is_sparse_below_seqlen_and_dense_mla_above(yarn):
    x, positions, _ = layer_inputs(tiny_config(q_lora=True, yarn=yarn))
    weights = random_dsa_weights(tiny_dsa_config(yarn, SEQLEN))
    dense = mla_attention_ref(x, weights, tiny_dsa_config(yarn, SEQLEN), positions)
    for topk in (SEQLEN, SEQLEN + 3):
        out = dsa_attention_ref(x, weights, tiny_dsa_config(yarn, topk), positions)
        assert relative_error(out, dense) < 1e-13
    sparse, indices = dsa_attention_ref(x, weights, tiny_dsa_config(yarn, 5), positions,
                                        return_indices=True)
    assert indices.shape == (BATCH, SEQLEN, 5) and indices.dtype == torch.int32
    assert relative_error(sparse, dense) > 1e-2  # the selection drops keys that matter
    assert relative_error(sparse[:, :5], dense[:, :5]) < 1e-13  # the first 5 queries keep all


@pytest.mark.parametrize("yarn", [True, False], ids=["yarn", "rope"])
def test_indexer_selection_matches_transformers(yarn):
    config = tiny_dsa_config(yarn, 5)
    weights = random_dsa_weights(config)
    hf_attention, rotary = hf_dsa_attention(config, weights)
    x, positions, _ = layer_inputs(config)
    c_q = mla_compressed_query_ref(x, weights, config)
    logits = indexer_logits_ref(*dsa_indexer_ref(x, c_q, weights, config, positions))
    ours = indexer_topk_ref(logits, 5)
    # transformers' indexer scores in fp32 and with fp32 rotary angles: no ties near the cut.
    ranked = logits.sort(dim=-1, descending=True).values[..., :6]
    gaps = (ranked[..., :-1] - ranked[..., 1:]).nan_to_num(INF)  # −inf − −inf past the visible
    assert gaps.min() > 1e-4 * logits[torch.isfinite(logits)].abs().max()

    # The indexer is handed the attention's own (cos, sin): MLA's frequencies, YaRN included.
    theirs = hf_attention.indexer(x, c_q, rotary(x, positions),
                                  causal_additive_mask(SEQLEN)[:, 0], positions)
    selected = ours >= 0
    assert torch.equal(selected.sum(-1), (torch.arange(SEQLEN) + 1).clamp(max=5).expand(BATCH, -1))
    # Past the visible keys transformers lists masked (−inf) keys where SPEC §4 pads with −1.
    assert torch.equal(theirs[selected], ours[selected])


def test_rope_rotate_half_matches_transformers():
    modeling = pytest.importorskip("transformers.models.deepseek_v32.modeling_deepseek_v32")
    config = tiny_config(q_lora=True, yarn=True)
    x, positions = randn(2, 5, 3, 8), torch.arange(5) + torch.tensor([[0], [7]])
    cos, sin = fp64_position_embeddings(config, positions)
    expected, _ = modeling.apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=2)
    ours = rope_rotate_half_ref(x, positions, mla_inv_freq(config))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(rope_rotate_half_ref(x[:, :, 0], positions, mla_inv_freq(config)),
                               ours[:, :, 0], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The indexer's KL loss

def loop_target(q, k, b, t, keys, scale):
    """p over `keys` for query t: per-head softmax summed over heads, L1-normalised."""
    group = q.shape[2] // k.shape[2]
    target = torch.zeros(len(keys), dtype=F64)
    for h in range(q.shape[2]):
        scores = torch.stack([scale * q[b, t, h] @ k[b, s, h // group] for s in keys])
        target += torch.softmax(scores, dim=0)
    return target / target.sum()


def loop_keys(b, t, seqlen_q, seqlen_k, indices):
    """The keys row (b, t) is scored over: visible (bottom-right) and, if given, selected."""
    return [s for s in range(seqlen_k) if s <= t + seqlen_k - seqlen_q
            and (indices is None or s in indices[b, t].tolist())]


def loop_kl_loss(q, k, index_logits, scale, indices=None):
    batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
    loss = torch.zeros((), dtype=F64)
    for b in range(batch):
        for t in range(seqlen_q):
            keys = loop_keys(b, t, seqlen_q, seqlen_k, indices)
            if keys:
                target = loop_target(q, k, b, t, keys, scale)
                log_probs = torch.log_softmax(index_logits[b, t, keys].double(), dim=0)
                loss += (target * (target.log() - log_probs)).sum()
    return loss


def random_indices(batch, seqlen_q, seqlen_k, count, seed=0):
    """(B, Sq, count) int32 distinct keys per row, about a quarter of the slots −1, one row empty
    (some listed keys are hidden by the causal mask)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(seqlen_k, generator=generator)[:count]
            for _ in range(batch * seqlen_q)]
    indices = torch.stack(rows).view(batch, seqlen_q, count).int()
    indices[torch.rand(indices.shape, generator=generator) < 0.25] = -1
    indices[0, -1] = -1
    return indices


def kl_inputs(seqlen_q, seqlen_k, heads_kv):
    q, k = randn(2, seqlen_q, 4, 8, seed=1), randn(2, seqlen_k, heads_kv, 8, seed=2)
    index_logits = indexer_logits_ref(randn(2, seqlen_q, 3, 8, seed=3),
                                      randn(2, seqlen_k, 8, seed=4), randn(2, seqlen_q, 3, seed=5))
    return q, k, index_logits


KL_SHAPES = [pytest.param(6, 6, 2, id="square-gqa"), pytest.param(5, 8, 1, id="sq<sk-mqa"),
             pytest.param(8, 5, 4, id="sq>sk-mha")]


@pytest.mark.parametrize("seqlen_q, seqlen_k, heads_kv", KL_SHAPES)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_indexer_kl_loss_matches_loop(seqlen_q, seqlen_k, heads_kv, sparse):
    q, k, index_logits = kl_inputs(seqlen_q, seqlen_k, heads_kv)
    indices = random_indices(2, seqlen_q, seqlen_k, 3) if sparse else None
    loss = indexer_kl_loss_ref(q, k, index_logits, indices=indices)
    expected = loop_kl_loss(q, k, index_logits, 8 ** -0.5, indices)
    assert loss.dtype == F64 and loss.shape == ()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    assert loss > 0
    mean = indexer_kl_loss_ref(q, k, index_logits, 0.2, indices, reduction="mean")
    torch.testing.assert_close(mean * 2 * seqlen_q, loop_kl_loss(q, k, index_logits, 0.2, indices),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seqlen_q, seqlen_k, heads_kv", KL_SHAPES)
def test_indexer_kl_loss_is_zero_at_the_target(seqlen_q, seqlen_k, heads_kv):
    q, k, _ = kl_inputs(seqlen_q, seqlen_k, heads_kv)
    index_logits = torch.full((2, seqlen_q, seqlen_k), -INF, dtype=F64)
    for b in range(2):
        for t in range(seqlen_q):
            keys = loop_keys(b, t, seqlen_q, seqlen_k, None)
            if keys:  # log p up to a per-row shift, which softmax ignores
                index_logits[b, t, keys] = loop_target(q, k, b, t, keys, 8 ** -0.5).log() + t
    assert indexer_kl_loss_ref(q, k, index_logits).abs() < 1e-13


@pytest.mark.parametrize("seqlen_q, seqlen_k, heads_kv", KL_SHAPES)
def test_indexer_kl_loss_gradient_is_softmax_minus_target(seqlen_q, seqlen_k, heads_kv):
    q, k, index_logits = kl_inputs(seqlen_q, seqlen_k, heads_kv)
    q.requires_grad_()
    index_logits.requires_grad_()
    indexer_kl_loss_ref(q, k, index_logits).backward()
    expected = torch.zeros(2, seqlen_q, seqlen_k, dtype=F64)
    for b in range(2):
        for t in range(seqlen_q):
            keys = loop_keys(b, t, seqlen_q, seqlen_k, None)
            if keys:
                expected[b, t, keys] = (torch.softmax(index_logits[b, t, keys].detach(), dim=0)
                                        - loop_target(q.detach(), k, b, t, keys, 8 ** -0.5))
    torch.testing.assert_close(index_logits.grad, expected, rtol=1e-12, atol=1e-14)
    assert q.grad is None  # the target is detached


def test_indexer_kl_loss_rejects_unknown_reduction():
    q, k, index_logits = kl_inputs(4, 4, 1)
    with pytest.raises(ValueError, match=r"reduction must be 'sum' or 'mean' \(got 'max'\)"):
        indexer_kl_loss_ref(q, k, index_logits, reduction="max")
