"""nn.MultiHeadLatentAttention on the CUDA kernels, run by the CPU emulator: every op the module
calls (flash_attn forward and backward, the fused latent epilogue and its backward, the core's
latent decode, FP8 quantisation and GEMM) is routed to the emulated CUDA path for the test, so
the module trains, prefills and decodes as on a GPU; compared with the same module on the CPU
kernels (SPEC §6: bf16 values against the same computation in another order)."""

import contextlib

import pytest
import torch

from deepseek_attn.nn import MultiHeadLatentAttention

from test_emulated_kernels import sm80  # noqa: F401  (session fixture)
from test_mla_module import fp8_rule_difference

SM_COUNT = 132  # H100-like: decode splits the keys of long sequences across CTAs


@contextlib.contextmanager
def on_emulated_cuda(sm80):
    """While active, the deepseek_attn ops' CPU kernels are the emulated CUDA ones."""
    library = torch.library.Library("deepseek_attn", "IMPL")
    kernels = {
        "flash_attn_fwd": lambda q, k, v, scale, causal, wl, wr, softcap, deterministic=False:
            sm80.flash_attn_fwd(q, k, v, scale, causal, wl, wr, softcap, SM_COUNT),
        "flash_attn_bwd": sm80.flash_attn_bwd,
        "attention_core_fwd": lambda *args: sm80.attention_core_fwd(*args, SM_COUNT),
        "mla_norm_rope": lambda x, w, cos, sin, eps, cache=None, slots=None:
            sm80.mla_norm_rope(x, w, cos, sin, eps, cache, slots),
        "mla_norm_rope_bwd": sm80.mla_norm_rope_bwd,
        "quantize_act": sm80.quantize_act,
        "quantize_weight": sm80.quantize_weight,
        "fp8_gemm": sm80.fp8_gemm,
        "indexer_topk": sm80.indexer_topk,
        "indexer_logits": sm80.indexer_logits,
        "sparse_attn_bwd": sm80.sparse_attn_bwd,
        "block_sparse_attn_bwd": sm80.block_sparse_attn_bwd,
    }
    for name, kernel in kernels.items():
        library.impl(name, kernel, "CPU")
    try:
        yield
    finally:
        library._destroy()


def latent_module(fp8, seed=0):
    """MLA's real latent (512 + 64) and head dims (192/128: a compiled flash kernel), 2 heads."""
    torch.manual_seed(seed)
    module = MultiHeadLatentAttention(128, 2, q_lora_rank=64, kv_lora_rank=512,
                                      qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                                      max_seq_len=128, fp8=fp8, dtype=torch.bfloat16)
    with torch.no_grad():
        module.kv_norm.weight.uniform_(0.5, 1.5)
        module.q_norm.weight.uniform_(0.5, 1.5)
    return module


def run_module(module, x, cotangent, fp8_cache):
    """A training step's gradients, then a prefill of 37 tokens and 3 decode steps."""
    module.zero_grad()
    x = x.clone().requires_grad_()
    out = module(x)
    out.backward(cotangent)
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    with torch.no_grad():
        cache = module.new_cache(x.shape[0], 64, page_size=16, fp8=fp8_cache)
        decoded = [module(x[:, :37], cache)] + [module(x[:, t:t + 1], cache)
                                                for t in range(37, 40)]
    return out.detach(), grads, torch.cat(decoded, dim=1)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8_projections"])
def test_emulated_module_trains_prefills_and_decodes(sm80, fp8):
    """fp8: FP8 projections (quantisers and GEMMs emulated too) and the FP8 cache."""
    module = latent_module(fp8)
    x = torch.randn(2, 40, 128, dtype=torch.bfloat16)
    cotangent = torch.randn(2, 40, 128, dtype=torch.bfloat16)
    out_cpu, grads_cpu, decoded_cpu = run_module(module, x, cotangent, fp8_cache=fp8)
    launches = sm80.counters()["launches"]
    with on_emulated_cuda(sm80):
        out, grads, decoded = run_module(module, x, cotangent, fp8_cache=fp8)
    # Per step: the epilogues, attention, its backward; per prefill/decode call: 2 epilogues and
    # the latent decode (FP8 projections add quantisers and GEMMs).
    assert sm80.counters()["launches"] - launches >= 5 + 4 * 3
    # Both are bf16 computations of one function, summed in different orders.
    assert fp8_rule_difference(out, out_cpu) <= 1e-4
    assert fp8_rule_difference(decoded, decoded_cpu) <= 1e-4
    assert fp8_rule_difference(decoded, out) <= (1e-3 if fp8 else 1e-4)  # absorbed = naive
    for ours, reference in zip(grads, grads_cpu):
        assert fp8_rule_difference(ours, reference) <= 1e-3


def test_emulated_module_routing_is_undone(sm80):
    """The fixture restores the CPU kernels (the comparisons below rely on it)."""
    library = torch.library.Library("deepseek_attn", "IMPL")
    library.impl("mla_norm_rope", lambda *args: (_ for _ in ()).throw(RuntimeError("routed")),
                 "CPU")
    with pytest.raises(RuntimeError, match="routed"):
        torch.ops.deepseek_attn.mla_norm_rope(torch.randn(1, 1, 4), None, None, None, 1e-6)
    library._destroy()
    y, _ = torch.ops.deepseek_attn.mla_norm_rope(torch.randn(1, 1, 4), None, None, None, 1e-6)
    assert y.shape == (1, 1, 4)


def test_emulated_dsa_module_trains_prefills_and_decodes(sm80):
    """nn.DeepSeekSparseAttention at MLA's real latent width with 2 heads, topk 8 < S: a training
    step with the indexer's sparse-stage loss (top-k, logits and their backward, sparse attention
    and its backward), then the core's latent kernel over token lists (contiguous rows in the
    prefill, paged FP8 and bf16 cache rows in decode), against the module on the CPU ops."""
    from deepseek_attn.nn import DeepSeekSparseAttention

    torch.manual_seed(0)
    module = DeepSeekSparseAttention(128, 2, q_lora_rank=64, kv_lora_rank=512,
                                     qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                                     max_seq_len=64, index_n_heads=4, index_head_dim=64,
                                     index_topk=8, dtype=torch.bfloat16)
    x = torch.randn(2, 20, 128, dtype=torch.bfloat16)

    def prefill_and_decode(fp8_cache, index_fp8):
        with torch.no_grad():
            cache = module.new_cache(2, 32, page_size=16, fp8=fp8_cache, index_fp8=index_fp8)
            decoded = [module(x[:, :12], cache)] + [module(x[:, t:t + 1], cache)
                                                    for t in range(12, 20)]
            return module(x), torch.cat(decoded, dim=1)

    def train_step():
        """The layer's and the indexer's KL loss's gradients (sparse stage, S = 20 > topk)."""
        module.zero_grad()
        out, loss = module(x, indexer_loss="sparse")
        (out.float().square().mean() + loss).backward()
        return [out.detach()] + [p.grad.clone() for p in module.parameters()]

    want = train_step()
    with on_emulated_cuda(sm80):
        got = train_step()
    for ours, cpu in zip(got, want):
        assert fp8_rule_difference(ours, cpu) <= 1e-3
    for fp8_cache, index_fp8 in [(False, False), (True, True)]:
        want = prefill_and_decode(fp8_cache, index_fp8)
        launches = sm80.counters()["launches"]
        with on_emulated_cuda(sm80):
            got = prefill_and_decode(fp8_cache, index_fp8)
        # Per call: the 2 epilogues, the indexer's top-k and attention (a split decode adds a
        # combine): at least 4 launches for each of the 11 calls.
        assert sm80.counters()["launches"] - launches >= 44
        for ours, cpu in zip(got, want):
            assert fp8_rule_difference(ours, cpu) <= 1e-3
