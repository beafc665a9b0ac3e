"""nn.DeepSeekSparseAttention (SPEC §4): converted from transformers' DeepseekV32Attention it
computes the same function (fp64: outputs, the input's and every MLA weight's gradient); with
index_topk >= S it is dense MLA; prefill/training with S > topk (the indexer's top-k, then
sparse attention in the latent form, backward included) against the reference layer; decode
(bf16 or FP8 indexer keys, paged) equals the full forward; the indexer's KL losses against
their naive formula and a few training steps; torch.compile; bad inputs."""

import pytest
import torch

from deepseek_attn.nn import DeepSeekSparseAttention, DSAKVCache, MultiHeadLatentAttention
from deepseek_attn.reference import (dsa_attention_ref, dsa_indexer_ref, indexer_kl_loss_ref,
                                     indexer_logits_ref, indexer_topk_ref, mla_config_scale,
                                     mla_compressed_query_ref, mla_latent_ref, mla_query_ref)

from test_dsa_reference import (HF_TO_DEEPSEEK_DSA, causal_additive_mask,
                                fp64_position_embeddings, hf_dsa_attention, random_dsa_weights,
                                relative_error, run_in_fp64, tiny_dsa_config)

SEQLEN = 13
CASES = [pytest.param(topk, yarn, id=f"topk{topk}-{'yarn' if yarn else 'rope'}")
         for topk in (5, 16) for yarn in (True, False)]


def converted(topk, yarn, seed=0):
    """(our module, transformers' module in fp64 throughout, its reference config and weights)."""
    config = tiny_dsa_config(yarn, topk)
    weights = random_dsa_weights(config, seed)
    hf, _ = hf_dsa_attention(config, weights)
    run_in_fp64(hf)
    return DeepSeekSparseAttention.from_transformers(hf), hf, config, weights


def hidden_states(config, seed=10):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, SEQLEN, config["dim"], generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("topk, yarn", CASES)
def test_dsa_module_matches_transformers(topk, yarn):
    module, hf, config, _ = converted(topk, yarn)
    assert module.index_topk == topk and module.indexer.n_heads == config["index_n_heads"]
    x = hidden_states(config)
    x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    positions = torch.arange(SEQLEN).expand(2, -1)
    out_hf, _ = hf(x_hf, fp64_position_embeddings(config, positions), causal_additive_mask(SEQLEN))
    out = module(x_ours)
    cotangent = torch.randn_like(out)
    out_hf.backward(cotangent)
    out.backward(cotangent)
    assert relative_error(out, out_hf) < 1e-12
    # The attention backward recomputes P from the forward's fp32 LSE (SPEC §0): ~1e-7 in fp64.
    assert relative_error(x_ours.grad, x_hf.grad) < 1e-6
    ours = dict(module.named_parameters())
    for hf_name, theirs in hf.named_parameters():
        name = HF_TO_DEEPSEEK_DSA[hf_name]
        name = name if name.endswith(("weight", "bias")) else name + ".weight"
        if name.startswith("indexer."):  # selection is not differentiable in either
            assert ours[name].grad is None and theirs.grad is None, name
        else:
            assert relative_error(ours[name].grad, theirs.grad) < 1e-6, name


def test_dsa_module_with_topk_at_least_seqlen_is_mla():
    module, hf, config, _ = converted(16, True)
    mla = MultiHeadLatentAttention.from_transformers(hf)
    x = hidden_states(config)
    assert relative_error(module(x), mla(x)) < 1e-14


@pytest.mark.parametrize("topk", [5, 13])
def test_dsa_module_training_against_reference(topk):
    """S = 13 > topk = 5: sparse attention in the latent form and its backward; every MLA
    weight's gradient and the input's against the reference layer's."""
    module, _, config, weights = converted(topk, False, seed=3)
    x = hidden_states(config, seed=4)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = {name: value.clone().requires_grad_() for name, value in weights.items()}
    out = module(x_ours)
    ref = dsa_attention_ref(x_ref, weights, config)
    cotangent = torch.randn_like(out)
    out.backward(cotangent)
    ref.backward(cotangent)
    assert relative_error(out, ref) < 1e-12
    assert relative_error(x_ours.grad, x_ref.grad) < 1e-6  # fp32 LSE, as above
    for name, parameter in module.named_parameters():
        key = name.removesuffix(".weight") if name.removesuffix(".weight") in weights else name
        if not name.startswith("indexer."):
            assert relative_error(parameter.grad, weights[key].grad) < 1e-6, name


@pytest.mark.parametrize("page_size, step", [(4, 1), (None, 4)], ids=["paged-1", "contiguous-4"])
@pytest.mark.parametrize("topk", [5, 16])
def test_dsa_decode_equals_full_forward(topk, page_size, step):
    """Prefill 6 tokens into the cache, then `step` at a time: each new query selects among
    everything cached and attends over the selected latent rows only."""
    module, _, config, _ = converted(topk, True)
    x = hidden_states(config)
    with torch.no_grad():
        full = module(x)
        cache = module.new_cache(2, 32, page_size=page_size)
        assert isinstance(cache, DSAKVCache) and cache.index_keys.shape == (2, 32, 16)
        outs = [module(x[:, :6], cache)]
        for t in range(6, SEQLEN, step):
            outs.append(module(x[:, t:t + step], cache))
    assert relative_error(torch.cat(outs, 1), full) < 1e-12
    assert cache.cache_seqlens.tolist() == [SEQLEN, SEQLEN]


def test_dsa_decode_with_fp8_index_keys():
    """Hadamard-rotated e4m3 index keys: with topk >= S every key is selected whatever the FP8
    scores, so decode equals the full forward; the cached keys dequantise to the rotated keys."""
    module, _, config, _ = converted(16, False)
    module = module.to(torch.bfloat16)
    x = hidden_states(config).bfloat16()
    with torch.no_grad():
        full = module(x)
        cache = module.new_cache(2, 32, page_size=8, index_fp8=True)
        outs = [module(x[:, t:t + 1], cache) for t in range(SEQLEN)]
    assert cache.index_keys.dtype == torch.float8_e4m3fn
    assert relative_error(torch.cat(outs, 1).double(), full.double()) < 2e-2


def kl_reference(module, config, weights, x, indices):
    """indexer_kl_loss_ref on the reference layer's per-head queries and keys."""
    scale = mla_config_scale(config)
    q_nope, q_pe = mla_query_ref(x, weights, config)
    c_kv, k_pe = mla_latent_ref(x, weights, config)
    heads, nope = config["n_heads"], config["qk_nope_head_dim"]
    w_uk = weights["wkv_b"].view(heads, -1, config["kv_lora_rank"])[:, :nope]
    k = torch.cat([torch.einsum("bjc,hdc->bjhd", c_kv, w_uk),
                   k_pe[:, :, None].expand(-1, -1, heads, -1)], dim=-1)
    index_q, index_k, index_w = dsa_indexer_ref(x, mla_compressed_query_ref(x, weights, config),
                                                weights, config)
    logits = indexer_logits_ref(index_q, index_k, index_w)
    return indexer_kl_loss_ref(torch.cat([q_nope, q_pe], -1), k, logits, scale, indices)


@pytest.mark.parametrize("stage", ["dense", "sparse"])
def test_dsa_indexer_loss_matches_formula_and_trains_only_the_indexer(stage):
    module, _, config, weights = converted(5, False)
    x = hidden_states(config)
    out, loss = module(x, indexer_loss=stage)
    assert relative_error(out, module(x)) == 0
    indices = None
    if stage == "sparse":
        c_q = mla_compressed_query_ref(x, weights, config)
        indices = indexer_topk_ref(indexer_logits_ref(*dsa_indexer_ref(x, c_q, weights, config)),
                                   5)
    assert abs(loss.item() - kl_reference(module, config, weights, x, indices).item()) < 1e-5
    loss.backward()
    for name, parameter in module.named_parameters():
        assert (parameter.grad is not None) == name.startswith("indexer."), name
    optimizer = torch.optim.Adam(module.indexer.parameters(), lr=0.02)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        _, loss = module(x, indexer_loss=stage)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_dsa_module_compiles_fullgraph():
    module, _, config, _ = converted(5, False)
    x = hidden_states(config)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    assert relative_error(compiled(x), module(x)) < 1e-14


BAD_CALLS = [
    (lambda m, x: m(x, indexer_loss="kl"), ValueError, "indexer_loss must be None, 'dense' or"),
    (lambda m, x: m(x, m.new_cache(2, 32), indexer_loss="dense"), ValueError,
     "indexer_loss trains on whole sequences"),
    (lambda m, x: m(x, MultiHeadLatentAttention.new_cache(m, 2, 32)), TypeError,
     "cache must be a DSAKVCache"),
    (lambda m, x: m(x[0]), ValueError, "x must be \\(batch, seqlen, 64\\)"),
    (lambda m, x: m(x, m.new_cache(3, 32)), ValueError, "the cache holds 3 sequences and x 2"),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_dsa_module_rejects_bad_calls(call, error, message):
    module, _, config, _ = converted(5, False)
    with pytest.raises(error, match=message):
        call(module, hidden_states(config))


def test_dsa_module_rejects_bad_configurations():
    with pytest.raises(ValueError, match="needs q_lora_rank > 0"):
        DeepSeekSparseAttention(64, 4, q_lora_rank=0)
    with pytest.raises(ValueError, match="index_topk must be positive \\(got 0\\)"):
        DeepSeekSparseAttention(64, 4, q_lora_rank=16, index_topk=0)
    with pytest.raises(ValueError, match="index_head_dim \\(32\\) must hold the rope part"):
        DeepSeekSparseAttention(64, 4, q_lora_rank=16, index_head_dim=32)
