"""Plain-PyTorch formulas of Multi-head Latent Attention (SPEC §3), readable first:

- the whole attention layer from the hidden states (`mla_attention_ref`), naive or absorbed, with
  DeepSeek's parameter names, interleaved RoPE and YaRN;
- absorbed MLA decode over a paged latent cache (`mla_decode_ref`), one sequence at a time.
"""

import math

import torch

from deepseek_attn.reference.core import dequantize_latent_fp8_ref


def yarn_inv_freq(rope_dim, rope_theta, max_seq_len, original_seq_len, rope_factor, beta_fast,
                  beta_slow, dtype=torch.float64):
    """(rope_dim // 2,) rotary frequencies f_i = θ^(−2i/r), YaRN-corrected only when the model
    runs past the length it was trained at (max_seq_len > original_seq_len)."""
    freqs = 1.0 / rope_theta ** (torch.arange(0, rope_dim, 2, dtype=dtype) / rope_dim)
    if max_seq_len <= original_seq_len:
        return freqs

    def corr(rotations):  # the dimension that turns `rotations` times over original_seq_len
        return (rope_dim * math.log(original_seq_len / (2 * math.pi * rotations))
                / (2 * math.log(rope_theta)))

    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), rope_dim - 1)
    if low == high:
        high += 0.001  # keeps the ramp's slope finite
    ramp = ((torch.arange(rope_dim // 2, dtype=dtype) - low) / (high - low)).clamp(0, 1)
    smooth = 1 - ramp  # 1: fast dims keep their frequency; 0: slow dims are interpolated by F
    return freqs / rope_factor * (1 - smooth) + freqs * smooth


def yarn_mscale(rope_factor, mscale):
    """YaRN's attention-temperature factor 0.1·mscale·ln(F) + 1 (1 when nothing is stretched)."""
    return 0.1 * mscale * math.log(rope_factor) + 1.0 if rope_factor > 1 else 1.0


def rope_interleaved_ref(x, positions, inv_freq):
    """x (B, S, H, R) or (B, S, R) with each pair (2i, 2i+1) rotated by positions (B, S) · f_i."""
    inv_freq = inv_freq.to(x.device)
    angles = positions.to(inv_freq)[..., None] * inv_freq  # (B, S, R/2), in inv_freq's precision
    angles = angles.view(*angles.shape[:2], *[1] * (x.dim() - 3), -1)  # one angle for all heads
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def rms_norm_ref(x, weight, eps):
    """x·rsqrt(mean(x²) + eps)·weight over the last dim, in x's dtype."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def mla_inv_freq(config, dtype=torch.float64):
    """yarn_inv_freq over an MLA config's rotary fields."""
    return yarn_inv_freq(config["qk_rope_head_dim"], config["rope_theta"], config["max_seq_len"],
                         config["original_seq_len"], config["rope_factor"], config["beta_fast"],
                         config["beta_slow"], dtype)


def mla_config_scale(config):
    """Softmax scale (nope + rope)^-0.5·mscale², mscale from YaRN only when it is active."""
    stretched = config["max_seq_len"] > config["original_seq_len"]
    mscale = yarn_mscale(config["rope_factor"], config["mscale"]) if stretched else 1.0
    return (config["qk_nope_head_dim"] + config["qk_rope_head_dim"]) ** -0.5 * mscale ** 2


def _linear(x, weight):
    """nn.Linear without bias: weight is (out, in)."""
    return x @ weight.to(x.dtype).T


def _positions(x, positions):
    """positions (B, S), arange(S) for every sequence by default."""
    if positions is None:
        return torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
    return positions


def mla_query_ref(x, weights, config, positions=None, dtype=torch.float64):
    """(q_nope (B, S, H, nope), q_pe (B, S, H, rope) rotated) from x (B, S, dim)."""
    x = x.to(dtype)
    if config["q_lora_rank"] == 0:
        q = _linear(x, weights["wq"])
    else:
        c_q = rms_norm_ref(_linear(x, weights["wq_a"]), weights["q_norm"], config["norm_eps"])
        q = _linear(c_q, weights["wq_b"])
    q = q.unflatten(-1, (config["n_heads"], -1))
    q_nope, q_pe = q.split([config["qk_nope_head_dim"], config["qk_rope_head_dim"]], dim=-1)
    return q_nope, rope_interleaved_ref(q_pe, _positions(x, positions), mla_inv_freq(config))


def mla_latent_ref(x, weights, config, positions=None, dtype=torch.float64):
    """(c_kv (B, S, kv_lora_rank) normalised, k_pe (B, S, rope) rotated): the latent cache row."""
    kv = _linear(x.to(dtype), weights["wkv_a"])
    c_kv, k_pe = kv.split([config["kv_lora_rank"], config["qk_rope_head_dim"]], dim=-1)
    c_kv = rms_norm_ref(c_kv, weights["kv_norm"], config["norm_eps"])
    return c_kv, rope_interleaved_ref(k_pe, _positions(x, positions), mla_inv_freq(config))


def _causal_softmax(scores):
    """Softmax over keys of (B, H, S, S) scores where query i sees keys j <= i."""
    seqlen = scores.shape[-1]
    future = torch.ones(seqlen, seqlen, dtype=torch.bool, device=scores.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def mla_attention_ref(x, weights, config, positions=None, absorbed=False, dtype=torch.float64):
    """out (B, S, dim) in `dtype`: causal MLA over the S tokens of x (B, S, dim) at `positions`.

    absorbed=False materialises per-head keys and values (training/prefill); absorbed=True folds
    W_UK into the query and W_UV into the output and attends over the latent rows (decode).
    """
    heads, nope, v_dim = config["n_heads"], config["qk_nope_head_dim"], config["v_head_dim"]
    q_nope, q_pe = mla_query_ref(x, weights, config, positions, dtype)
    c_kv, k_pe = mla_latent_ref(x, weights, config, positions, dtype)
    w_ukv = weights["wkv_b"].to(dtype).unflatten(0, (heads, nope + v_dim))  # (H, nope+v, rank)
    w_uk, w_uv = w_ukv[:, :nope], w_ukv[:, nope:]
    scale = mla_config_scale(config)
    if absorbed:
        q_latent = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)  # q̃[h] = W_UK[h]ᵀ·q_nope[h]
        q = torch.cat([q_latent, q_pe], dim=-1)
        latent = torch.cat([c_kv, k_pe], dim=-1)  # one key head shared by all query heads
        probs = _causal_softmax(torch.einsum("bihc,bjc->bhij", q, latent) * scale)
        out_latent = torch.einsum("bhij,bjc->bihc", probs, c_kv)
        out = torch.einsum("bihc,hvc->bihv", out_latent, w_uv)  # o[h] = W_UV[h]·o_lat[h]
    else:
        k_nope = torch.einsum("bjc,hdc->bjhd", c_kv, w_uk)
        v = torch.einsum("bjc,hvc->bjhv", c_kv, w_uv)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, heads, -1)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        probs = _causal_softmax(torch.einsum("bihd,bjhd->bhij", q, k) * scale)
        out = torch.einsum("bhij,bjhv->bihv", probs, v)
    return _linear(out.flatten(2), weights["wo"])


def mla_decode_ref(q, kv_cache, block_table, cache_seqlens, head_dim_v=512, softmax_scale=None,
                   causal=False, dtype=torch.float64):
    """(out (B, Sq, H, head_dim_v) in `dtype`, lse (B, H, Sq) fp32) of FlashMLA's
    flash_mla_with_kvcache: causal is bottom-right aligned to each sequence's length."""
    if kv_cache.dtype in (torch.float8_e4m3fn, torch.uint8):
        kv_cache = dequantize_latent_fp8_ref(kv_cache.view(torch.uint8))
    batch, seqlen_q, heads, dim = q.shape
    scale = dim ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.zeros(batch, seqlen_q, heads, head_dim_v, dtype=dtype)
    lse = torch.full((batch, heads, seqlen_q), float("-inf"))
    for b in range(batch):
        length = int(cache_seqlens[b])
        if block_table is None:
            rows = kv_cache[b, :length, 0]
        else:
            page_size = kv_cache.shape[1]
            pages = block_table[b, : -(-length // page_size)].long()
            rows = kv_cache[pages].flatten(0, 1)[:length, 0]
        rows = rows.to(dtype)
        scores = torch.einsum("ihd,jd->hij", q[b].to(dtype), rows) * scale  # (H, Sq, L)
        if causal:
            keys = torch.arange(length)
            limit = torch.arange(seqlen_q) + length - seqlen_q
            scores = scores.masked_fill(keys[None, None, :] > limit[None, :, None], float("-inf"))
        seen = torch.isfinite(scores).any(-1)  # (H, Sq)
        safe = torch.where(seen[..., None], scores, torch.zeros_like(scores))
        probs = torch.softmax(safe, dim=-1) * seen[..., None]
        out[b] = torch.einsum("hij,jd->ihd", probs, rows[:, :head_dim_v])
        lse[b] = torch.where(seen, torch.logsumexp(safe, -1), float("-inf")).float()
    return out, lse
