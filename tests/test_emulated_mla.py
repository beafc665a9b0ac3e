"""mla_decode's CUDA path (the core's latent kernels) on the CPU emulator: the cases of
test_mla.py against the same fp64 reference, on the A100- and H100-like emulated devices."""

import pytest
import torch

from deepseek_attn.mla import mla_decode_core_args
from deepseek_attn.reference import mla_decode_ref
from deepseek_attn.testing import assert_spec6_close

from test_emulated_kernels import sm80, sm90  # noqa: F401  (session fixtures)
from test_mla import shuffled_paged_cache


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16_cache", "fp8_cache"])
@pytest.mark.parametrize("seqlen_q, causal", [(1, False), (2, True)])
@pytest.mark.parametrize("arch", [80, 90])
def test_emulated_mla_decode_matches_reference(sm80, sm90, arch, fp8, seqlen_q, causal):
    """Uneven lengths (1, 64, 200) over shuffled 64-token pages; 132 SMs split the long one."""
    generator = torch.Generator().manual_seed(0)
    cache = shuffled_paged_cache([1, 64, 200], 64, fp8, generator)
    q = (torch.randn(3, seqlen_q, 16, 576, generator=generator) * 0.3).to(torch.bfloat16)
    module = sm80 if arch == 80 else sm90
    args = mla_decode_core_args(q, cache.kv_cache, cache.block_table, cache.cache_seqlens,
                                causal=causal, is_fp8_kvcache=fp8)
    out, lse = module.attention_core_fwd(*args, 132)
    reference_args = (q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    exact_out, exact_lse = mla_decode_ref(*reference_args, causal=causal)
    same_out, _ = mla_decode_ref(*reference_args, causal=causal, dtype=torch.bfloat16)
    assert_spec6_close("out", out, same_out, exact_out, factor=2)
    torch.testing.assert_close(lse, exact_lse, atol=2e-3, rtol=1e-3)
