"""The MLA layer reference of reference/mla.py (SPEC §3): its naive and absorbed paths against
each other, and both against Hugging Face transformers' DeepseekV3Attention, an independent
implementation of the same layer, on tiny random fp64 weights (outputs and every gradient)."""

import math

import pytest
import torch

from deepseek_attn.reference import (mla_attention_ref, mla_config_scale, mla_inv_freq,
                                     yarn_mscale)

BATCH, SEQLEN = 2, 7
TINY = dict(dim=64, n_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
            v_head_dim=16, rope_theta=10000.0, norm_eps=1e-6)
TINY_Q_LORA_RANK = 24
# original_seq_len 256 makes the YaRN ramp take a value strictly between 0 and 1 at r = 8;
# max_seq_len = F·original_seq_len as in DeepSeek-V3 (163840 = 40·4096).
TINY_YARN = dict(rope_factor=40.0, original_seq_len=256, max_seq_len=40 * 256, beta_fast=32.0,
                 beta_slow=1.0, mscale=1.0)
TINY_NO_YARN = dict(rope_factor=1.0, original_seq_len=64, max_seq_len=64, beta_fast=32.0,
                    beta_slow=1.0, mscale=1.0)

# transformers' parameter names -> DeepSeek's (the names the reference takes).
HF_TO_DEEPSEEK = {"q_proj.weight": "wq", "q_a_proj.weight": "wq_a",
                  "q_a_layernorm.weight": "q_norm", "q_b_proj.weight": "wq_b",
                  "kv_a_proj_with_mqa.weight": "wkv_a", "kv_a_layernorm.weight": "kv_norm",
                  "kv_b_proj.weight": "wkv_b", "o_proj.weight": "wo"}

CASES = [pytest.param(q_lora, yarn,
                      id=f"{'q_lora' if q_lora else 'wq'}-{'yarn' if yarn else 'rope'}")
         for q_lora in (True, False) for yarn in (True, False)]


def tiny_config(q_lora, yarn):
    """The reference config dict of the tiny layer."""
    return {**TINY, "q_lora_rank": TINY_Q_LORA_RANK if q_lora else 0,
            **(TINY_YARN if yarn else TINY_NO_YARN)}


def random_mla_weights(config, seed=0):
    """DeepSeek-named fp64 weights: linears N(0, 0.3²), norm weights 1 + 0.1·N(0, 1) so they
    matter."""
    generator = torch.Generator().manual_seed(seed)
    heads, nope, rope, v_dim = (config["n_heads"], config["qk_nope_head_dim"],
                                config["qk_rope_head_dim"], config["v_head_dim"])

    def linear(out_features, in_features):
        return 0.3 * torch.randn(out_features, in_features, generator=generator,
                                 dtype=torch.float64)

    def norm(size):
        return 1 + 0.1 * torch.randn(size, generator=generator, dtype=torch.float64)

    weights = {"wkv_a": linear(config["kv_lora_rank"] + rope, config["dim"]),
               "kv_norm": norm(config["kv_lora_rank"]),
               "wkv_b": linear(heads * (nope + v_dim), config["kv_lora_rank"]),
               "wo": linear(config["dim"], heads * v_dim)}
    if config["q_lora_rank"] == 0:
        weights["wq"] = linear(heads * (nope + rope), config["dim"])
    else:
        weights.update(wq_a=linear(config["q_lora_rank"], config["dim"]),
                       q_norm=norm(config["q_lora_rank"]),
                       wq_b=linear(heads * (nope + rope), config["q_lora_rank"]))
    return weights


def hf_config(rope_dim, max_positions, rope_parameters, q_lora_rank=None):
    """A tiny transformers DeepseekV3Config (attention fields only matter here)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DeepseekV3Config(
        hidden_size=TINY["dim"], num_attention_heads=TINY["n_heads"],
        num_key_value_heads=TINY["n_heads"], q_lora_rank=q_lora_rank,
        kv_lora_rank=TINY["kv_lora_rank"], qk_nope_head_dim=TINY["qk_nope_head_dim"],
        qk_rope_head_dim=rope_dim, v_head_dim=TINY["v_head_dim"], rope_interleave=True,
        attention_bias=False, rms_norm_eps=TINY["norm_eps"],
        max_position_embeddings=max_positions, rope_parameters=rope_parameters)
    config._attn_implementation = "eager"  # plain matmul-softmax-matmul with an additive mask
    return config


def yarn_rope_parameters(factor, original_seq_len, beta_fast=32.0, beta_slow=1.0, mscale=1.0):
    """transformers' rope_parameters for DeepSeek's YaRN (DeepSeek-V3's config.json sets mscale
    and mscale_all_dim alike, so transformers leaves cos/sin unscaled)."""
    return {"rope_type": "yarn", "rope_theta": TINY["rope_theta"], "factor": factor,
            "original_max_position_embeddings": original_seq_len, "beta_fast": beta_fast,
            "beta_slow": beta_slow, "mscale": mscale, "mscale_all_dim": mscale}


def tiny_hf_attention(q_lora_rank, yarn, seed=0):
    """(DeepseekV3Attention in fp64, eval, random weights; its DeepseekV3RotaryEmbedding; its
    config) for the tiny layer; q_lora_rank None means no query compression."""
    modeling = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    if yarn:
        rope = yarn_rope_parameters(TINY_YARN["rope_factor"], TINY_YARN["original_seq_len"])
        config = hf_config(TINY["qk_rope_head_dim"], TINY_YARN["max_seq_len"], rope, q_lora_rank)
    else:
        rope = {"rope_type": "default", "rope_theta": TINY["rope_theta"]}
        config = hf_config(TINY["qk_rope_head_dim"], TINY_NO_YARN["max_seq_len"], rope,
                           q_lora_rank)
    attention = modeling.DeepseekV3Attention(config, layer_idx=0).double().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in attention.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_(1 + 0.1 * noise if "layernorm" in name else 0.3 * noise)
    return attention, modeling.DeepseekV3RotaryEmbedding(config), config


def deepseek_weights_from_hf(hf_attention):
    """{DeepSeek name: a detached copy of the transformers parameter}."""
    return {HF_TO_DEEPSEEK[name]: parameter.detach().clone()
            for name, parameter in hf_attention.named_parameters()}


def deepseek_config_from_hf(hf_config):
    """The reference config dict of a transformers DeepseekV3Config."""
    rope = hf_config.rope_parameters
    yarn = rope["rope_type"] == "yarn"
    max_positions = hf_config.max_position_embeddings
    return {"dim": hf_config.hidden_size, "n_heads": hf_config.num_attention_heads,
            "q_lora_rank": hf_config.q_lora_rank or 0, "kv_lora_rank": hf_config.kv_lora_rank,
            "qk_nope_head_dim": hf_config.qk_nope_head_dim,
            "qk_rope_head_dim": hf_config.qk_rope_head_dim, "v_head_dim": hf_config.v_head_dim,
            "rope_theta": rope["rope_theta"], "max_seq_len": max_positions,
            # transformers applies YaRN whenever the rope type says so; SPEC §3 whenever
            # max_seq_len > original_seq_len, so plain RoPE maps to original = max.
            "original_seq_len": rope["original_max_position_embeddings"] if yarn else max_positions,
            "rope_factor": rope["factor"] if yarn else 1.0,
            "beta_fast": (rope.get("beta_fast") or 32.0) if yarn else 32.0,
            "beta_slow": (rope.get("beta_slow") or 1.0) if yarn else 1.0,
            # transformers' softmax scale takes mscale_all_dim (none when it is unset or 0).
            "mscale": (rope.get("mscale_all_dim") or 0.0) if yarn else 1.0,
            # q_a_layernorm and kv_a_layernorm keep DeepseekV3RMSNorm's default eps 1e-6 whatever
            # rms_norm_eps says.
            "norm_eps": 1e-6}


def causal_additive_mask(seqlen):
    """(1, 1, S, S) fp64: 0 where query i sees key j <= i, -inf above the diagonal (the eager
    attention adds it to the scores)."""
    return torch.full((seqlen, seqlen), float("-inf"), dtype=torch.float64).triu(1)[None, None]


def fp64_position_embeddings(config, positions):
    """transformers' (cos, sin) layout, cat(angles, angles), computed in fp64 from the
    reference's frequencies (DeepseekV3RotaryEmbedding always computes in fp32)."""
    angles = positions[..., None].double() * mla_inv_freq(config)
    both = torch.cat([angles, angles], dim=-1)
    return both.cos(), both.sin()


def run_in_fp64(hf_attention):
    """Removes transformers' fp32 islands from the attention (DeepseekV3RMSNorm normalises in
    fp32, the eager softmax runs in fp32): the norms become the same formula in the input dtype
    and the softmax runs in torch's sdpa, which keeps fp64."""
    def fp64_norm(norm):
        return lambda x: norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                                      + norm.variance_epsilon)

    for name in ("q_a_layernorm", "kv_a_layernorm"):
        norm = getattr(hf_attention, name)
        if norm is not None:
            norm.forward = fp64_norm(norm)
    hf_attention.config._attn_implementation = "sdpa"  # causal through is_causal, no mask


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("q_lora, yarn", CASES)
def test_naive_equals_absorbed(q_lora, yarn):
    config = tiny_config(q_lora, yarn)
    weights = random_mla_weights(config)
    x = torch.randn(BATCH, SEQLEN, config["dim"], dtype=torch.float64)
    naive = mla_attention_ref(x, weights, config)
    absorbed = mla_attention_ref(x, weights, config, absorbed=True)
    assert naive.shape == (BATCH, SEQLEN, config["dim"]) and naive.dtype == torch.float64
    assert relative_error(absorbed, naive) < 1e-12


# transformers as shipped computes norms, rotary angles and the eager softmax in fp32.
PRECISIONS = [pytest.param("transformers", 1e-5, id="as-shipped"),
              pytest.param("fp64", 1e-11, id="fp64")]


@pytest.mark.parametrize("precision, tolerance", PRECISIONS)
@pytest.mark.parametrize("q_lora, yarn", CASES)
def test_reference_matches_transformers(q_lora, yarn, precision, tolerance):
    hf_attention, rotary, hf_cfg = tiny_hf_attention(TINY_Q_LORA_RANK if q_lora else None, yarn)
    config = deepseek_config_from_hf(hf_cfg)
    assert config == tiny_config(q_lora, yarn)
    weights = {name: weight.requires_grad_()
               for name, weight in deepseek_weights_from_hf(hf_attention).items()}
    x = torch.randn(BATCH, SEQLEN, config["dim"], dtype=torch.float64)
    positions = torch.arange(SEQLEN) + torch.tensor([[0], [5]])  # the second sequence is shifted
    cotangent = torch.randn(BATCH, SEQLEN, config["dim"], dtype=torch.float64)

    x_hf = x.clone().requires_grad_()
    if precision == "fp64":
        run_in_fp64(hf_attention)
        out_hf, _ = hf_attention(x_hf, fp64_position_embeddings(config, positions), None)
    else:
        out_hf, _ = hf_attention(x_hf, rotary(x_hf, positions), causal_additive_mask(SEQLEN))
    out_hf.backward(cotangent)

    x_ref = x.clone().requires_grad_()
    out_ref = mla_attention_ref(x_ref, weights, config, positions)
    out_ref.backward(cotangent)

    assert relative_error(out_ref, out_hf) < tolerance
    assert relative_error(x_ref.grad, x_hf.grad) < tolerance
    for name, parameter in hf_attention.named_parameters():
        assert relative_error(weights[HF_TO_DEEPSEEK[name]].grad, parameter.grad) < tolerance, name


def test_yarn_mscale():
    assert yarn_mscale(40, 1) == pytest.approx(0.1 * math.log(40) + 1, rel=1e-15)
    assert yarn_mscale(40, 0.707) == pytest.approx(0.0707 * math.log(40) + 1, rel=1e-15)
    assert yarn_mscale(1, 1) == 1.0
    assert mla_config_scale(tiny_config(True, yarn=False)) == 24 ** -0.5
    assert mla_config_scale(tiny_config(True, yarn=True)) == pytest.approx(
        24 ** -0.5 * (0.1 * math.log(40) + 1) ** 2, rel=1e-15)


@pytest.mark.parametrize("yarn", [True, False], ids=["yarn", "rope"])
def test_softmax_scale_matches_transformers(yarn):
    hf_attention, rotary, hf_cfg = tiny_hf_attention(None, yarn)
    assert hf_attention.scaling == pytest.approx(mla_config_scale(deepseek_config_from_hf(hf_cfg)),
                                                 rel=1e-15)
    assert rotary.attention_scaling == 1.0  # cos/sin unscaled, as in SPEC §3


# (rope_dim, original_seq_len): the tiny layer's, DeepSeek-V3's, and one where both ramp ends
# clamp to 0 (low == high, the + 0.001 rule); None: plain RoPE.
INV_FREQ_CASES = [(8, 256), (64, 4096), (8, 4), (8, None), (64, None)]


@pytest.mark.parametrize("rope_dim, original_seq_len", INV_FREQ_CASES)
def test_yarn_inv_freq_matches_transformers(rope_dim, original_seq_len):
    modeling = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    if original_seq_len is None:
        cfg = hf_config(rope_dim, 4096, {"rope_type": "default", "rope_theta": TINY["rope_theta"]})
    else:
        cfg = hf_config(rope_dim, 40 * original_seq_len,
                        yarn_rope_parameters(40.0, original_seq_len))
    hf_inv_freq = modeling.DeepseekV3RotaryEmbedding(cfg).inv_freq  # fp32
    ours = mla_inv_freq(deepseek_config_from_hf(cfg))
    assert ours.shape == (rope_dim // 2,) and ours.dtype == torch.float64
    torch.testing.assert_close(ours.float(), hf_inv_freq, rtol=1e-6, atol=0)
