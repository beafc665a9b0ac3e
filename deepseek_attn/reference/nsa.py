"""Plain-PyTorch formulas of Native Sparse Attention (SPEC §5, arXiv 2502.11089), readable first.

NSA is a gated sum of three attention branches over the same queries, each with its own keys
and values projected from x:

- compression (`nsa_compress_ref`, `nsa_compression_attention_ref`): blocks of l keys every
  d positions, each squeezed into one key (and one value) by a small MLP;
- selection (`nsa_selection_scores_ref`, `nsa_select_blocks_ref`,
  `nsa_selection_attention_ref`): the compression branch's attention probabilities rank blocks
  of l' keys; every query attends to its n best blocks (plus forced initial and local ones);
- sliding window (`nsa_window_attention_ref`): the last w keys.

`nsa_attention_ref` runs the whole layer from x and the module's `state_dict()`;
`nsa_branches_ref` returns every intermediate (branch outputs, probabilities, block indices).

Parameter names (the `deepseek_attn.nn.NativeSparseAttention` state-dict names; Linear weights
are (out, in)): `wq.weight` (Hq·D, dim), `wk.weight` (3·Hkv·D, dim), `wv.weight` (3·Hkv·Dv, dim),
`compress_k.{pe, fc1.weight, fc1.bias, fc2.weight, fc2.bias}` and the same for `compress_v`,
`gate.weight` (3·Hq, dim), `gate.bias` (3·Hq), `wo.weight` (dim, Hq·Dv). The key and value
projections hold three branches, viewed (B, S, 3, Hkv, ·): 0 compression, 1 selection, 2 window.

Everything materialises (S, S) masks on purpose and the block selection is a Python sort per
row: these are references for small shapes, not an attention path.
"""

import math
from collections.abc import Mapping

import torch

# Fields of the config with their defaults (the NSA paper's hyper-parameters); None = required.
CONFIG_DEFAULTS = {"dim": None, "n_heads": None, "n_kv_heads": None, "head_dim": None,
                   "v_head_dim": None, "compress_block": 32, "compress_stride": 16,
                   "select_block": 64, "select_n": 16, "window": 512, "init_blocks": 1,
                   "local_blocks": 2, "rope_theta": None, "softmax_scale": None,
                   "compress_hidden": None}

BRANCHES = ("compression", "selection", "window")  # the order of wk/wv's branches and the gates


def nsa_config_ref(config):
    """config (a dict or any object with the fields as attributes) as a plain dict with the
    defaults filled in; softmax_scale defaults to head_dim ** -0.5."""
    def field(name):
        if isinstance(config, Mapping):
            return config.get(name, CONFIG_DEFAULTS[name])
        return getattr(config, name, CONFIG_DEFAULTS[name])

    resolved = {name: field(name) for name in CONFIG_DEFAULTS}
    for name in ("dim", "n_heads", "n_kv_heads", "head_dim", "v_head_dim"):
        if resolved[name] is None:
            raise ValueError(f"config must give {name}")
    if resolved["n_heads"] % resolved["n_kv_heads"]:
        raise ValueError(f"n_heads must be a multiple of n_kv_heads (got {resolved['n_heads']} "
                         f"and {resolved['n_kv_heads']})")
    if resolved["softmax_scale"] is None:
        resolved["softmax_scale"] = resolved["head_dim"] ** -0.5
    return resolved


# ---------------------------------------------------------------------------------------------
# Projections, RoPE and gates

def nsa_rope_ref(x, rope_theta):
    """Rotate-half RoPE over the whole last dim D of x (B, S, ..., D) at positions 0..S-1:
    x·cos + rotate_half(x)·sin, with angle p·θ^(-2i/D) for i < D/2 repeated as [a, a] and
    rotate_half(x) = [-x[D/2:], x[:D/2]]."""
    seqlen, dim = x.shape[1], x.shape[-1]
    inv_freq = rope_theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(seqlen, dtype=torch.float64).unsqueeze(1) * inv_freq  # (S, D/2)
    angles = torch.cat([angles, angles], dim=-1)
    shape = (seqlen,) + (1,) * (x.dim() - 3) + (dim,)  # broadcast over the head dims
    cos = angles.cos().view(shape).to(device=x.device, dtype=x.dtype)
    sin = angles.sin().view(shape).to(device=x.device, dtype=x.dtype)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def nsa_projections_ref(x, params, config, dtype=torch.float64):
    """(q (B, S, Hq, D), k (B, S, 3, Hkv, D), v (B, S, 3, Hkv, Dv)) in `dtype`: the query and
    the three branches' keys and values (index 0 compression, 1 selection, 2 window), q and
    every k rotated by RoPE when config's rope_theta is not None (values never are)."""
    config = nsa_config_ref(config)
    heads, heads_kv = config["n_heads"], config["n_kv_heads"]
    head_dim, v_head_dim = config["head_dim"], config["v_head_dim"]
    x = x.to(dtype)
    q = _linear(x, params["wq.weight"]).unflatten(-1, (heads, head_dim))
    k = _linear(x, params["wk.weight"]).unflatten(-1, (3, heads_kv, head_dim))
    v = _linear(x, params["wv.weight"]).unflatten(-1, (3, heads_kv, v_head_dim))
    if config["rope_theta"] is not None:
        q, k = nsa_rope_ref(q, config["rope_theta"]), nsa_rope_ref(k, config["rope_theta"])
    return q, k, v


def nsa_gates_ref(x, params, config, dtype=torch.float64):
    """g (B, S, Hq, 3) = sigmoid(x·W_gᵀ + b_g): per query head the weights of the compression
    (0), selection (1) and window (2) branches."""
    config = nsa_config_ref(config)
    logits = _linear(x.to(dtype), params["gate.weight"]) + params["gate.bias"].to(dtype)
    return torch.sigmoid(logits).unflatten(-1, (config["n_heads"], 3))


# ---------------------------------------------------------------------------------------------
# Compression branch

def nsa_num_compressed(seqlen, compress_block, compress_stride):
    """Nc: how many compression blocks [i·d, i·d + l) fit in S keys ((S − l)//d + 1, or 0)."""
    if seqlen < compress_block:
        return 0
    return (seqlen - compress_block) // compress_stride + 1


def nsa_compress_ref(keys, mlp, compress_block, compress_stride):
    """(B, Nc, Hkv, W) from keys (B, S, Hkv, W): block i (keys [i·d, i·d + l)) plus the
    position encoding mlp["pe"] (l, W), flattened key by key to l·W, through
    fc2(GELU(fc1(·))); mlp holds pe, fc1.weight, fc1.bias, fc2.weight, fc2.bias, shared by
    every kv head."""
    batch, seqlen, heads_kv, width = keys.shape
    count = nsa_num_compressed(seqlen, compress_block, compress_stride)
    if count == 0:
        return keys.new_zeros(batch, 0, heads_kv, width)
    blocks = torch.stack([keys[:, i * compress_stride:i * compress_stride + compress_block]
                          for i in range(count)], dim=1)  # (B, Nc, l, Hkv, W)
    blocks = blocks.transpose(2, 3) + mlp["pe"].to(keys.dtype)  # (B, Nc, Hkv, l, W)
    hidden = _linear(blocks.flatten(-2), mlp["fc1.weight"]) + mlp["fc1.bias"].to(keys.dtype)
    hidden = torch.nn.functional.gelu(hidden)  # the exact erf form
    return _linear(hidden, mlp["fc2.weight"]) + mlp["fc2.bias"].to(keys.dtype)


def nsa_compression_mask(seqlen, num_compressed, compress_block, compress_stride, device=None):
    """(S, Nc) bool: query t sees compressed block i iff the block has ended, i·d + l − 1 ≤ t."""
    last_key = torch.arange(num_compressed, device=device) * compress_stride + compress_block - 1
    return last_key.unsqueeze(0) <= torch.arange(seqlen, device=device).unsqueeze(1)


def nsa_compression_attention_ref(q, k_cmp, v_cmp, compress_block, compress_stride,
                                  softmax_scale=None):
    """(o_cmp (B, S, Hq, Dv), p_cmp (B, S, Hq, Nc)): attention of q (B, S, Hq, D) over the
    compressed k_cmp (B, Nc, Hkv, D) / v_cmp (B, Nc, Hkv, Dv) of the blocks that have ended.
    p_cmp are the attention probabilities (0 for hidden blocks); rows seeing none give 0."""
    visible = nsa_compression_mask(q.shape[1], k_cmp.shape[1], compress_block, compress_stride,
                                   device=q.device)
    return _masked_attention(q, k_cmp, v_cmp, visible, softmax_scale)


# ---------------------------------------------------------------------------------------------
# Selection branch

def nsa_num_selection_blocks(seqlen, select_block):
    """Ns = ceil(S / l'): selection blocks [j·l', (j+1)·l'), the last one possibly partial."""
    return -(-seqlen // select_block)


def nsa_selection_scores_ref(p_cmp, heads_kv, compress_block=32, compress_stride=16,
                             select_block=64):
    """scores (B, S, Hkv, Ns): block importance from the compression probabilities p_cmp
    (B, S, Hq, Nc) (SPEC §5). Per query head
    p_slc[j] = Σ_{m < l'/d} Σ_{n < l/d} p_cmp[(l'/d)·j − m − n] (indices outside [0, Nc)
    skipped), then summed over the Hq/Hkv query heads of each kv head."""
    if compress_block % compress_stride or select_block % compress_stride:
        raise ValueError("compress_stride must divide compress_block and select_block (got "
                         f"d={compress_stride}, l={compress_block}, l'={select_block})")
    batch, seqlen, heads, num_compressed = p_cmp.shape
    select_ratio = select_block // compress_stride  # l'/d
    compress_ratio = compress_block // compress_stride  # l/d
    num_blocks = nsa_num_selection_blocks(seqlen, select_block)
    p_slc = p_cmp.new_zeros(batch, seqlen, heads, num_blocks)
    for j in range(num_blocks):
        for m in range(select_ratio):
            for n in range(compress_ratio):
                i = select_ratio * j - m - n
                if 0 <= i < num_compressed:
                    p_slc[..., j] += p_cmp[..., i]
    return p_slc.unflatten(2, (heads_kv, heads // heads_kv)).sum(3)


def nsa_select_blocks_ref(scores, select_n=16, select_block=64, init_blocks=1, local_blocks=2):
    """block_indices (B, S, Hkv, n) int32 from scores (B, S, Hkv, Ns), query t at row t.

    Block j is visible to t iff j·l' ≤ t. Forced blocks are j < init_blocks and the
    local_blocks blocks ending at t's own block (t//l' − local_blocks < j ≤ t//l'). Visible
    blocks are ranked forced first (lower block first among them), then by score descending,
    equal scores to the lower block; the first n are kept, the rest of the row is −1.
    """
    batch, seqlen, heads_kv, num_blocks = scores.shape
    indices = torch.full((batch, seqlen, heads_kv, select_n), -1, dtype=torch.int32)
    rows = scores.detach().double().cpu().tolist()
    for b in range(batch):
        for t in range(seqlen):
            own = t // select_block
            visible = [j for j in range(num_blocks) if j * select_block <= t]
            forced = [j for j in visible if j < init_blocks or own - local_blocks < j <= own]
            for h in range(heads_kv):
                row = rows[b][t][h]
                others = sorted((j for j in visible if j not in forced),
                                key=lambda j: (-row[j], j))
                ranked = forced + others
                chosen = ranked[:select_n]
                indices[b, t, h, :len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
    return indices.to(scores.device)


def nsa_selection_mask(block_indices, seqlen_k, select_block):
    """(B, S, Hkv, Sk) bool: key s is in one of row t's listed blocks (−1 skipped) and s ≤ t."""
    batch, seqlen, heads_kv, _ = block_indices.shape
    num_blocks = nsa_num_selection_blocks(seqlen_k, select_block)
    slots = block_indices.long().masked_fill(block_indices < 0, num_blocks)  # −1 → spill column
    listed = torch.zeros(batch, seqlen, heads_kv, num_blocks + 1, dtype=torch.bool,
                         device=block_indices.device)
    listed = listed.scatter(-1, slots, True)[..., :num_blocks]  # (B, S, Hkv, Ns)
    key_block = torch.arange(seqlen_k, device=block_indices.device) // select_block
    in_listed_block = listed[..., key_block]  # (B, S, Hkv, Sk)
    causal = (torch.arange(seqlen_k, device=block_indices.device).unsqueeze(0)
              <= torch.arange(seqlen, device=block_indices.device).unsqueeze(1))
    return in_listed_block & causal[None, :, None, :]


def nsa_selection_attention_ref(q, k, v, block_indices, select_block=64, softmax_scale=None):
    """o_slc (B, S, Hq, Dv): attention of q (B, S, Hq, D) over the keys of k (B, S, Hkv, D) /
    v (B, S, Hkv, Dv) in the blocks that block_indices (B, S, Hkv, n) lists for the query's kv
    head (−1 skipped, a block listed twice counts once), causal inside them."""
    visible = nsa_selection_mask(block_indices, k.shape[1], select_block)
    out, _ = _masked_attention(q, k, v, visible, softmax_scale)
    return out


# ---------------------------------------------------------------------------------------------
# Sliding-window branch

def nsa_window_mask(seqlen, window, device=None):
    """(S, S) bool: query t sees key s iff t − w < s ≤ t (the w most recent keys, its own too)."""
    rows = torch.arange(seqlen, device=device).unsqueeze(1)
    cols = torch.arange(seqlen, device=device).unsqueeze(0)
    return (cols <= rows) & (cols > rows - window)


def nsa_window_attention_ref(q, k, v, window=512, softmax_scale=None):
    """o_win (B, S, Hq, Dv): attention of q (B, S, Hq, D) over the last `window` keys of
    k (B, S, Hkv, D) / v (B, S, Hkv, Dv), its own key included."""
    out, _ = _masked_attention(q, k, v, nsa_window_mask(q.shape[1], window, device=q.device),
                               softmax_scale)
    return out


# ---------------------------------------------------------------------------------------------
# The whole layer

def nsa_branches_ref(x, params, config, dtype=torch.float64):
    """Every step of NSA on x (B, S, dim) in `dtype`, as a dict:

    q (B, S, Hq, D), k (B, S, 3, Hkv, D), v (B, S, 3, Hkv, Dv) after RoPE; gates (B, S, Hq, 3);
    k_cmp (B, Nc, Hkv, D), v_cmp (B, Nc, Hkv, Dv); p_cmp (B, S, Hq, Nc); scores
    (B, S, Hkv, Ns); block_indices (B, S, Hkv, n) int32; o_cmp, o_slc, o_win (B, S, Hq, Dv);
    out (B, S, dim) = (Σ_b g_b·o_b) flattened over heads, times W_oᵀ.

    The block choice has no gradient; everything else is differentiable.
    """
    config = nsa_config_ref(config)
    block, stride = config["compress_block"], config["compress_stride"]
    select_block, scale = config["select_block"], config["softmax_scale"]
    q, k, v = nsa_projections_ref(x, params, config, dtype)
    gates = nsa_gates_ref(x, params, config, dtype)
    k_cmp = nsa_compress_ref(k[:, :, 0], _submodule(params, "compress_k"), block, stride)
    v_cmp = nsa_compress_ref(v[:, :, 0], _submodule(params, "compress_v"), block, stride)
    o_cmp, p_cmp = nsa_compression_attention_ref(q, k_cmp, v_cmp, block, stride, scale)
    with torch.no_grad():
        scores = nsa_selection_scores_ref(p_cmp, config["n_kv_heads"], block, stride,
                                          select_block)
        block_indices = nsa_select_blocks_ref(scores, config["select_n"], select_block,
                                              config["init_blocks"], config["local_blocks"])
    o_slc = nsa_selection_attention_ref(q, k[:, :, 1], v[:, :, 1], block_indices, select_block,
                                        scale)
    o_win = nsa_window_attention_ref(q, k[:, :, 2], v[:, :, 2], config["window"], scale)
    mixed = sum(gates[..., i, None] * o for i, o in enumerate((o_cmp, o_slc, o_win)))
    out = _linear(mixed.flatten(2), params["wo.weight"])
    return {"q": q, "k": k, "v": v, "gates": gates, "k_cmp": k_cmp, "v_cmp": v_cmp,
            "p_cmp": p_cmp, "scores": scores, "block_indices": block_indices, "o_cmp": o_cmp,
            "o_slc": o_slc, "o_win": o_win, "out": out}


def nsa_attention_ref(x, params, config, dtype=torch.float64, return_branches=False):
    """out (B, S, dim): Native Sparse Attention over x (B, S, dim) with the module's
    state_dict() `params` and `config` (see the module docstring), computed in `dtype`;
    (out, branches) with return_branches, branches being nsa_branches_ref's dict."""
    branches = nsa_branches_ref(x, params, config, dtype)
    return (branches["out"], branches) if return_branches else branches["out"]


# ---------------------------------------------------------------------------------------------
# Helpers

def _linear(x, weight):
    """nn.Linear without bias: weight is (out, in)."""
    return x @ weight.to(x.dtype).T


def _submodule(params, prefix):
    """The entries of params under `prefix.`, with the prefix removed."""
    start = prefix + "."
    return {name[len(start):]: value for name, value in params.items()
            if name.startswith(start)}


def _masked_attention(q, k, v, visible, softmax_scale=None):
    """(out (B, S, Hq, Dv), probs (B, S, Hq, Sk)): softmax attention of q (B, S, Hq, D) over
    k (B, Sk, Hkv, D) / v (B, Sk, Hkv, Dv), GQA, where `visible` is (S, Sk) or per kv head
    (B, S, Hkv, Sk). Rows that see no key give 0 (no NaN, gradients included)."""
    heads, heads_kv = q.shape[2], k.shape[2]
    group = heads // heads_kv
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    if visible.dim() == 2:
        visible = visible[None, :, None, :]
    visible = visible.repeat_interleave(group, dim=2) if visible.shape[2] > 1 else visible
    visible = visible.expand(q.shape[0], q.shape[1], heads, k.shape[1])
    scores = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(group, dim=2)) * scale
    sees_a_key = visible.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~visible, -math.inf)
    # Keyless rows get harmless finite scores, then are zeroed: no NaN in values or gradients.
    scores = torch.where(sees_a_key, scores, torch.zeros_like(scores))
    probs = torch.softmax(scores, dim=-1) * sees_a_key
    out = torch.einsum("bths,bshd->bthd", probs, v.repeat_interleave(group, dim=2))
    return out, probs
