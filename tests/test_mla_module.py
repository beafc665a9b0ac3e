"""deepseek_attn.nn.MultiHeadLatentAttention (SPEC §3) end to end on CPU: against transformers'
DeepseekV3Attention (from_transformers; outputs and every gradient, fp64), against the layer
reference of reference/mla.py, naive = absorbed, a decode loop = one causal forward, paged =
contiguous, the FP8 cache within the SPEC §6 FP8 rule of the bf16 cache, and bad inputs."""

import pytest
import torch

from deepseek_attn.nn import MultiHeadLatentAttention
from deepseek_attn.reference import mla_attention_ref

from test_mla_reference import (BATCH, CASES, HF_TO_DEEPSEEK, SEQLEN, TINY_Q_LORA_RANK,
                                fp64_position_embeddings, random_mla_weights, relative_error,
                                run_in_fp64, tiny_config, tiny_hf_attention)


def module_with(config, weights, **overrides):
    """An fp64 module holding the reference's config and weights."""
    fields = {name: config[name] for name in (
        "dim", "n_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
        "v_head_dim", "max_seq_len", "rope_theta", "rope_factor", "original_seq_len",
        "beta_fast", "beta_slow", "mscale", "norm_eps")}
    module = MultiHeadLatentAttention(**{**fields, **overrides}, dtype=torch.float64)
    module.load_state_dict({f"{name}.weight": weight for name, weight in weights.items()})
    return module


def fp8_rule_difference(actual, reference):
    """SPEC §6's cosine-style difference 1 − 2·Σ(a·r)/Σ(a² + r²)."""
    a, r = actual.double(), reference.double()
    return (1 - 2 * (a * r).sum() / (a * a + r * r).sum()).item()


@pytest.mark.parametrize("q_lora, yarn", CASES)
def test_module_matches_transformers(q_lora, yarn):
    """from_transformers computes transformers' function: outputs, the input gradient and every
    parameter's gradient (transformers' fp32 islands removed, as in test_mla_reference)."""
    hf_attention, _, _ = tiny_hf_attention(TINY_Q_LORA_RANK if q_lora else None, yarn)
    module = MultiHeadLatentAttention.from_transformers(hf_attention)
    config = tiny_config(q_lora, yarn)
    run_in_fp64(hf_attention)
    x = torch.randn(BATCH, SEQLEN, config["dim"], dtype=torch.float64)
    cotangent = torch.randn_like(x)
    positions = torch.arange(SEQLEN).expand(BATCH, SEQLEN)

    x_hf = x.clone().requires_grad_()
    out_hf, _ = hf_attention(x_hf, fp64_position_embeddings(config, positions), None)
    out_hf.backward(cotangent)
    x_ours = x.clone().requires_grad_()
    out = module(x_ours)
    out.backward(cotangent)

    assert relative_error(out, out_hf) < 1e-11
    # The attention backward recomputes P from the fp32 LSE (SPEC §0): ~1e-7 relative.
    assert relative_error(x_ours.grad, x_hf.grad) < 1e-6
    ours = dict(module.named_parameters())
    for name, parameter in hf_attention.named_parameters():
        ours_name = f"{HF_TO_DEEPSEEK[name]}.weight"
        assert relative_error(ours[ours_name].grad, parameter.grad) < 1e-6, name


@pytest.mark.parametrize("q_lora, yarn", CASES)
def test_module_naive_and_absorbed_match_the_reference(q_lora, yarn):
    config = tiny_config(q_lora, yarn)
    weights = random_mla_weights(config)
    module = module_with(config, weights)
    x = torch.randn(BATCH, SEQLEN, config["dim"], dtype=torch.float64)
    reference = mla_attention_ref(x, weights, config)
    naive = module(x)
    absorbed = module(x, module.new_cache(BATCH, page_size=4))
    assert relative_error(naive, reference) < 1e-12
    assert relative_error(absorbed, reference) < 1e-12


@pytest.mark.parametrize("step", [1, 4])
@pytest.mark.parametrize("page_size", [16, None], ids=["paged16", "contiguous"])
def test_decode_loop_equals_one_causal_forward(step, page_size):
    """Prefill 37 tokens into the cache, then 20 more `step` at a time: the same outputs as one
    causal forward over the 57 tokens without a cache."""
    config = tiny_config(True, True)
    module = module_with(config, random_mla_weights(config, seed=1))
    x = torch.randn(BATCH, 57, config["dim"], dtype=torch.float64)
    full = module(x)
    cache = module.new_cache(BATCH, 64, page_size=page_size)
    pieces = [module(x[:, :37], cache)]
    pieces += [module(x[:, t:t + step], cache) for t in range(37, 57, step)]
    assert cache.cache_seqlens.tolist() == [57, 57]
    assert relative_error(torch.cat(pieces, dim=1), full) < 1e-12


def latent_512_module(fp8=False, dtype=torch.bfloat16, seed=0):
    """A small module with MLA's real latent (kv_lora_rank 512, rope 64): the FP8 cache's."""
    torch.manual_seed(seed)
    module = MultiHeadLatentAttention(128, 2, q_lora_rank=0, kv_lora_rank=512,
                                      qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
                                      max_seq_len=256, fp8=fp8, dtype=dtype)
    with torch.no_grad():
        module.kv_norm.weight.uniform_(0.5, 1.5)
    return module


def test_fp8_cache_within_the_fp8_rule_of_the_bf16_cache():
    module = latent_512_module()
    x = torch.randn(2, 40, 128, dtype=torch.bfloat16)
    bf16_cache, fp8_cache = module.new_cache(2, fp8=False), module.new_cache(2, fp8=True)
    assert (bf16_cache.bytes_per_token, fp8_cache.bytes_per_token) == (1152, 656)
    for chunk in (x[:, :33], x[:, 33:34], x[:, 34:]):
        expected, actual = module(chunk, bf16_cache), module(chunk, fp8_cache)
        assert fp8_rule_difference(actual, expected) <= 1e-3


def test_fp8_module_trains_and_stays_within_the_fp8_rule():
    """fp8=True: every projection an Fp8Linear (FP8 forward and backward), the FP8 cache by
    default; its output and gradients follow the bf16 module sharing its weights."""
    module = latent_512_module(fp8=True)
    plain = latent_512_module(fp8=False)
    plain.load_state_dict(module.state_dict())
    assert module.new_cache(1).fp8 and module.new_cache(1).bytes_per_token == 656
    x = torch.randn(2, 24, 128, dtype=torch.bfloat16)
    out, out_plain = module(x), plain(x)
    # Four FP8 GEMMs in a row, each within SPEC §6's 1e-3 of its bf16 product.
    assert fp8_rule_difference(out, out_plain) <= 4e-3
    cotangent = torch.randn_like(out)
    out.backward(cotangent)
    out_plain.backward(cotangent)
    for (name, parameter), reference in zip(module.named_parameters(), plain.parameters()):
        assert torch.isfinite(parameter.grad).all(), name
        assert fp8_rule_difference(parameter.grad, reference.grad) <= 1e-2, name


def test_fp8_module_decodes_what_it_prefills():
    """The absorbed path of an fp8 module folds the dequantised FP8 wkv_b: its decode over the
    FP8 cache follows its own naive forward within the FP8 rule."""
    module = latent_512_module(fp8=True)
    x = torch.randn(2, 30, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        cache = module.new_cache(2)
        decoded = torch.cat([module(x[:, :29], cache), module(x[:, 29:], cache)], dim=1)
        assert fp8_rule_difference(decoded, module(x)) <= 1e-3


def test_fp8_checkpoints_load_dequantised():
    """DeepSeek's FP8 checkpoints: e4m3 weights with 128x128 block scales (`scale` or
    `weight_scale_inv`) land as the dequantised master weights."""
    from deepseek_attn import dequantize, quantize_weight

    source = latent_512_module(dtype=torch.float32)
    state = {}
    for index, (name, weight) in enumerate(source.state_dict().items()):
        if name.startswith("w"):
            payload, scales = quantize_weight(weight, 128, "ue8m0")
            scale_name = "scale" if index % 2 else "weight_scale_inv"
            state[name], state[name.replace("weight", scale_name)] = payload, scales
        else:
            state[name] = weight
    target = latent_512_module(dtype=torch.float32, seed=1)
    target.load_state_dict(state)
    payload, scales = quantize_weight(source.wkv_b.weight, 128, "ue8m0")
    assert torch.equal(target.wkv_b.weight, dequantize(payload, scales, (128, 128)))
    assert torch.equal(target.kv_norm.weight, source.kv_norm.weight)


def test_absorbed_weights_follow_weight_updates():
    config = tiny_config(False, False)
    module = module_with(config, random_mla_weights(config))
    x = torch.randn(1, 5, config["dim"], dtype=torch.float64)
    module(x, module.new_cache(1, page_size=4))
    with torch.no_grad():
        module.wkv_b.weight.mul_(1.5)  # an optimizer step moves the version counter alike
    assert relative_error(module(x, module.new_cache(1, page_size=4)), module(x)) < 1e-12


def test_state_dict_uses_deepseek_names():
    config = tiny_config(True, False)
    module = module_with(config, random_mla_weights(config))
    assert sorted(module.state_dict()) == sorted(
        f"{name}.weight" for name in ("wq_a", "q_norm", "wq_b", "wkv_a", "kv_norm", "wkv_b", "wo"))


def test_module_compiles():
    config = tiny_config(True, True)
    module = module_with(config, random_mla_weights(config))
    x = torch.randn(BATCH, SEQLEN, config["dim"], dtype=torch.float64)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), module(x), atol=1e-12, rtol=1e-12)


def test_full_cache_raises_and_changes_nothing():
    config = tiny_config(False, False)
    module = module_with(config, random_mla_weights(config))
    cache = module.new_cache(BATCH, 10, page_size=4)
    module(torch.randn(BATCH, 8, config["dim"], dtype=torch.float64), cache)
    before = (cache.kv_cache.clone(), cache.cache_seqlens.clone())
    with pytest.raises(ValueError, match=r"the cache is full: a sequence holds 8 of 10 tokens"):
        module(torch.randn(BATCH, 3, config["dim"], dtype=torch.float64), cache)
    assert torch.equal(cache.kv_cache, before[0]) and torch.equal(cache.cache_seqlens, before[1])


@pytest.mark.parametrize("call, message", [
    (lambda m, c: m(torch.randn(7, 64, dtype=torch.float64)),
     r"x must be \(batch, seqlen, 64\) \(got shape \(7, 64\)\)"),
    (lambda m, c: m(torch.randn(3, 2, 64, dtype=torch.float64), c),
     r"the cache holds 2 sequences and x 3"),
    (lambda m, c: MultiHeadLatentAttention(64, 2, qk_rope_head_dim=7),
     r"qk_rope_head_dim must be even \(got 7\)"),
], ids=["x_rank", "cache_batch", "odd_rope"])
def test_module_rejects_bad_inputs(call, message):
    config = tiny_config(False, False)
    module = module_with(config, random_mla_weights(config))
    with pytest.raises(ValueError, match=message):
        call(module, module.new_cache(BATCH, page_size=4))


def test_from_transformers_rejects_what_mla_does_not_compute():
    """transformers scales cos/sin when mscale and mscale_all_dim differ: not SPEC §3's rule."""
    hf_attention, _, config = tiny_hf_attention(None, True)
    config.rope_parameters["mscale_all_dim"] = 0.5
    with pytest.raises(ValueError, match=r"converts when mscale == mscale_all_dim"):
        MultiHeadLatentAttention.from_transformers(hf_attention)
