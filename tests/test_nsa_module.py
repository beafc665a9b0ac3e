"""nn.NativeSparseAttention (SPEC §5) against the plain-PyTorch reference of its three branches
(reference/nsa.py) in values, selected blocks and every parameter's gradient; with every block
selected and a window covering everything, the selection and window branches equal full causal
attention; chunked selection equals one chunk; it trains end to end; bad settings."""

import pytest
import torch

from deepseek_attn import flash_attn_func
from deepseek_attn.nn import NativeSparseAttention
from deepseek_attn.nn import nsa as nsa_module
from deepseek_attn.reference import nsa_attention_ref

# Small blocks so that short sequences have many compression and selection blocks:
# (Hq, Hkv, D, Dv, compress l, stride d, select l', n, window, rope_theta).
CONFIGS = {
    "gqa2-rope": (4, 2, 16, 16, 8, 4, 16, 4, 24, 10000.0),
    "mha-norope": (2, 2, 16, 8, 16, 8, 32, 3, 40, None),
    "gqa4-paper-ratios": (8, 2, 32, 16, 32, 16, 64, 3, 70, 500.0),
}


def make_module(name, dim=32, dtype=torch.float64, seed=0):
    heads, kv_heads, head_dim, v_dim, l, d, l_sel, n, window, theta = CONFIGS[name]
    torch.manual_seed(seed)
    return NativeSparseAttention(dim, heads, kv_heads, head_dim, compress_block=l,
                                 compress_stride=d, select_block=l_sel, select_n=n,
                                 window=window, v_head_dim=v_dim, rope_theta=theta,
                                 compress_hidden=24, dtype=dtype)


def reference_of(module, x):
    params = {name: value.detach().double().requires_grad_()
              for name, value in module.state_dict().items()}
    out, branches = nsa_attention_ref(x.detach().double(), params, module.config(),
                                      return_branches=True)
    return out, branches, params


@pytest.mark.parametrize("seqlen", [1, 17, 113, 200])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_nsa_module_matches_the_reference(name, seqlen):
    module = make_module(name)
    x = torch.randn(2, seqlen, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = module(x)
    expected, branches, params = reference_of(module, x)
    *_, block_indices = module.branches(x)
    assert torch.equal(block_indices, branches["block_indices"])
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    cotangent = torch.randn_like(out)
    grads = torch.autograd.grad(out, list(module.parameters()), cotangent, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, list(params.values()), cotangent,
                                         allow_unused=True)
    names = [name for name, _ in module.named_parameters()]
    assert names == list(params), (names, list(params))
    for param_name, ours, theirs in zip(names, grads, expected_grads):
        if theirs is None:  # the compression MLPs when no block is complete (S < l)
            assert ours is None or not ours.abs().any(), param_name
            continue
        # The attention ops keep their LSE in fp32, even for fp64 inputs.
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6, msg=param_name)


def test_nsa_branches_with_every_block_and_a_full_window_are_full_causal_attention():
    module = make_module("gqa2-rope")
    module.select_n, module.window = 64, 4096
    x = torch.randn(1, 150, 32, dtype=torch.float64)
    _, o_slc, o_win, _, block_indices = module.branches(x)
    q = module._rope(module.wq(x).view(1, 150, 4, 16), module.wk(x).view(1, 150, 3, 2, 16))
    k_slc, k_win = q[1][:, :, 1], q[1][:, :, 2]
    v = module.wv(x).view(1, 150, 3, 2, 16)
    assert (block_indices >= 0).sum(-1).eq(torch.arange(150).div(16, rounding_mode="floor")
                                           .add(1).view(1, 150, 1)).all()
    torch.testing.assert_close(o_slc, flash_attn_func(q[0], k_slc, v[:, :, 1], causal=True),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(o_win, flash_attn_func(q[0], k_win, v[:, :, 2], causal=True),
                               atol=1e-12, rtol=0)


def test_nsa_selection_in_chunks_equals_one_chunk(monkeypatch):
    module = make_module("gqa4-paper-ratios")
    x = torch.randn(1, 300, 32, dtype=torch.float64)
    whole = module.branches(x)[-1]
    monkeypatch.setattr(nsa_module, "SCORE_CHUNK_ELEMENTS", 8 * 8 * 20)  # chunks of 20 rows
    assert torch.equal(module.branches(x)[-1], whole)


def test_nsa_module_trains_end_to_end():
    """40 Adam steps on a fixed target lower the loss, and every parameter receives a gradient."""
    module = make_module("gqa2-rope", dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 32, generator=generator)
    target = torch.randn(2, 64, 32, generator=generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = (module(x) - target).square().mean()
        loss.backward()
        if not losses:
            for name, param in module.named_parameters():
                assert param.grad is not None and param.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_nsa_module_runs_in_bfloat16():
    module = make_module("gqa4-paper-ratios", dtype=torch.bfloat16)
    x = torch.randn(1, 130, 32, dtype=torch.bfloat16)
    out = module(x)
    expected, _, _ = reference_of(module, x)
    error = (out.double() - expected).abs().max() / expected.abs().max()
    assert error < 0.05, error.item()
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


BAD_SETTINGS = [
    (dict(n_heads=6, n_kv_heads=4), "n_heads must be a multiple of n_kv_heads \\(got 6 and 4\\)"),
    (dict(compress_stride=12), "compress_stride must divide compress_block and select_block"),
    (dict(select_block=48, compress_stride=16, compress_block=48),
     "select_block must be one of \\(16, 32, 64, 128\\) \\(got 48\\)"),
    (dict(select_n=2), "select_n must be positive and hold the 1 initial and 2 local blocks"),
    (dict(window=0), "window must be at least 1 \\(got 0\\)"),
    (dict(head_dim=15), "head_dim must be even for RoPE \\(got 15\\)"),
]


@pytest.mark.parametrize("settings, message", BAD_SETTINGS)
def test_nsa_module_rejects_bad_settings(settings, message):
    arguments = dict(dim=32, n_heads=4, n_kv_heads=2, head_dim=16) | settings
    with pytest.raises(ValueError, match=message):
        NativeSparseAttention(**arguments)
