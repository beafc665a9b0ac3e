"""Family 2b: Multi-head Latent Attention (SPEC §3) — the fused latent epilogue, the latent KV
cache and absorbed decode.

`mla_norm_rope` is the one pass after each MLA projection GEMM (`MlaNormRopeFunction`, with
backward): RMSNorm on the first columns of each row, interleaved RoPE on the last ones and,
optionally, the row written straight into a latent cache slot — in the cache's dtype or
quantised on the fly into SPEC §3's 656-byte FP8 rows. The key path runs it on
`x·W_DKV = [c_kv | k_pe]`, the query path on `x·W_DQ` (norm only) and on `c_q·W_UQ` (RoPE on
each head's last 64 values).

`mla_decode` follows FlashMLA's `flash_mla_with_kvcache` conventions (so its users can switch):
q (B, Sq, H, 576) = [W_UKᵀ·q_nope | q_pe] per head, a cache of 576-value latent rows
[c_kv | k_pe] in bf16/fp16 (or fp32/fp64 on CPU), or SPEC §3's 656-byte FP8 rows, read through
`block_table`/`cache_seqlens`; values are the first 512 columns; causal is bottom-right aligned to
each sequence's length (Sq > 1 is speculative decoding). It runs the shared attention core
(csrc/core/) on both devices: one pass over each sequence's cache for all H heads.

`MLAKVCache` owns such a cache: pages of 64 tokens by default, or one page per sequence.
"""

import math

import torch

from deepseek_attn import core  # noqa: F401  (registers the core op's fake kernel)

__all__ = ["MLAKVCache", "MlaNormRopeFunction", "mla_decode", "mla_norm_rope", "LATENT_DIM",
           "LATENT_VALUES", "FP8_ROW_BYTES"]

LATENT_DIM = 576  # kv_lora_rank 512 + qk_rope_head_dim 64
LATENT_VALUES = 512
FP8_ROW_BYTES = 656  # 512 e4m3 + 4 fp32 scales + 64 bf16
_FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.uint8)
_ops = torch.ops.deepseek_attn


@torch.library.register_fake("deepseek_attn::mla_norm_rope")
def _mla_norm_rope_fake(x, norm_weight, rope_cos, rope_sin, eps, cache=None, cache_slots=None):
    torch._check(x.dim() == 3, lambda: "x must be (tokens, groups, dim)")
    statistics = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty_like(x), x.new_empty(x.shape[:2], dtype=statistics)


@torch.library.register_fake("deepseek_attn::mla_norm_rope_bwd")
def _mla_norm_rope_bwd_fake(dy, x, norm_weight, rstd, rope_cos, rope_sin):
    weight_size = 0 if norm_weight is None else norm_weight.shape[0]
    return torch.empty_like(x), x.new_empty((weight_size,))


class MlaNormRopeFunction(torch.autograd.Function):
    """y = [RMSNorm(x[..., :n])·w | x[..., n:D-R] | RoPE(x[..., D-R:])] per row (SPEC §3), with
    n = norm_weight's size and R = 2·rope_cos.size(-1); optionally each token's row written into
    `cache` at `cache_slots` (a side effect: the cache receives no gradient).
    Inputs: (x (T, G, D), norm_weight, rope_cos (T, R/2), rope_sin, eps, cache, cache_slots)."""

    @staticmethod
    def forward(x, norm_weight, rope_cos, rope_sin, eps, cache, cache_slots):
        return _ops.mla_norm_rope(x, norm_weight, rope_cos, rope_sin, eps, cache, cache_slots)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, norm_weight, rope_cos, rope_sin = inputs[:4]
        ctx.save_for_backward(x, norm_weight, output[1], rope_cos, rope_sin)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, dy, drstd):
        x, norm_weight, rstd, rope_cos, rope_sin = ctx.saved_tensors
        dx, dweight = _ops.mla_norm_rope_bwd(dy, x, norm_weight, rstd, rope_cos, rope_sin)
        return dx, dweight if norm_weight is not None else None, None, None, None, None, None


def mla_norm_rope(x, norm_weight=None, rope_cos=None, rope_sin=None, eps=1e-6, cache=None,
                  cache_slots=None):
    """The fused latent epilogue (module docstring) on x (*tokens, dim) or (*tokens, groups,
    dim); `rope_cos`/`rope_sin` (*tokens, rope_dim/2) fp32 (fp64 for fp64 x) hold each token's
    angles; `cache_slots` (*tokens,) int64 are rows of `cache` (any shape whose last dim is a
    row; -1 skips a token). Returns y like x."""
    tokens = rope_cos.shape[:-1] if rope_cos is not None else (
        cache_slots.shape if cache_slots is not None else x.shape[:-1])
    if x.shape[:len(tokens)] != tokens or x.dim() - len(tokens) not in (1, 2):
        raise ValueError(f"x must be (*tokens, dim) or (*tokens, groups, dim) with tokens "
                         f"{tuple(tokens)} (got shape {tuple(x.shape)})")
    rows = x.reshape(math.prod(tokens), -1, x.shape[-1]).contiguous()
    flat = (lambda t: None if t is None else t.reshape(math.prod(tokens), -1).contiguous())
    slots = None if cache_slots is None else cache_slots.reshape(-1)
    y, _ = MlaNormRopeFunction.apply(rows, norm_weight, flat(rope_cos), flat(rope_sin), eps,
                                     cache, slots)
    return y.view(x.shape)


def _cache_rows(kv_cache, is_fp8_kvcache):
    """The cache as the core reads it: uint8 bytes for FP8 rows, else the cache itself."""
    if kv_cache.dim() != 4 or kv_cache.shape[2] != 1:
        raise ValueError("kv_cache must be (num_pages, page_size, 1, row) — or (batch, seqlen, 1, "
                         f"row) without a block_table (got shape {tuple(kv_cache.shape)})")
    if is_fp8_kvcache:
        if kv_cache.dtype not in _FP8_CACHE_DTYPES or kv_cache.shape[-1] != FP8_ROW_BYTES:
            raise ValueError("is_fp8_kvcache=True needs 656-byte rows, dtype float8_e4m3fn or "
                             f"uint8 (got {kv_cache.dtype}, last dim {kv_cache.shape[-1]})")
        return kv_cache.view(torch.uint8)
    if kv_cache.dtype in _FP8_CACHE_DTYPES:
        raise ValueError(f"kv_cache has dtype {kv_cache.dtype}: pass is_fp8_kvcache=True to read "
                         "FP8 latent rows")
    return kv_cache


def mla_decode(q, kv_cache, block_table, cache_seqlens, head_dim_v=LATENT_VALUES,
               softmax_scale=None, causal=False, is_fp8_kvcache=False, indices=None):
    """Absorbed MLA attention over a latent cache; returns (out (B, Sq, H, head_dim_v) in q's
    dtype, lse (B, H, Sq) fp32). `block_table` (B, max_pages) int32 or None (then kv_cache is
    (B, seqlen, 1, row), one page per sequence); `cache_seqlens` (B,) int32. `softmax_scale`
    defaults to 576^-0.5, as in FlashMLA; MLA passes (128 + 64)^-0.5·mscale² (SPEC §3).
    `indices` (B, Sq, K) int32 (-1 empty): DSA's sparse decode, each query attending only to
    the cached tokens (positions in its sequence) it lists."""
    return torch.ops.deepseek_attn.attention_core_fwd(
        *mla_decode_core_args(q, kv_cache, block_table, cache_seqlens, head_dim_v, softmax_scale,
                              causal, is_fp8_kvcache, indices))


def mla_decode_core_args(q, kv_cache, block_table, cache_seqlens, head_dim_v=LATENT_VALUES,
                         softmax_scale=None, causal=False, is_fp8_kvcache=False, indices=None):
    """mla_decode's checks, then the arguments of the core op it runs (the emulated tests call
    the emulated core with them)."""
    rows = _cache_rows(kv_cache, is_fp8_kvcache)
    row_values = LATENT_DIM if is_fp8_kvcache else kv_cache.shape[-1]
    if q.dim() != 4 or q.shape[-1] != row_values:
        raise ValueError(f"q must be (batch, seqlen_q, heads, {row_values}), one value per value "
                         f"of a cache row (got shape {tuple(q.shape)})")
    if is_fp8_kvcache and head_dim_v != LATENT_VALUES:
        raise ValueError(f"head_dim_v must be {LATENT_VALUES} with the FP8 cache (got {head_dim_v})")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    if indices is not None and indices.dim() == 3:
        indices = indices[:, :, None]  # one kv head
    return (q, rows, None, block_table, cache_seqlens, indices, 1,
            -1 if is_fp8_kvcache else head_dim_v, scale, causal, -1, -1, 0.0)


class MLAKVCache:
    """A latent KV cache for `batch_size` sequences of up to `max_seq_len` tokens.

    `kv_cache` is (num_pages, page_size, 1, kv_lora_rank + rope_dim) in `dtype` (576 values,
    1152 bytes per token in bf16) or, with fp8=True, (num_pages, page_size, 1, 656)
    float8_e4m3fn-typed bytes (SPEC §3: 656 per token; 512 + 64 only); `block_table`
    (B, max_pages) int32 maps each sequence's pages (page_size=None: one page per sequence),
    `cache_seqlens` (B,) int32 counts the tokens held. `append` writes new tokens at each
    sequence's current length; `decode` runs mla_decode over the cache.
    """

    def __init__(self, batch_size, max_seq_len, page_size=64, dtype=torch.bfloat16, fp8=False,
                 device=None, kv_lora_rank=LATENT_VALUES, rope_dim=LATENT_DIM - LATENT_VALUES):
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be positive (got {batch_size} and "
                             f"{max_seq_len})")
        if page_size is not None and page_size < 1:
            raise ValueError(f"page_size must be positive or None (got {page_size})")
        if fp8 and (kv_lora_rank, rope_dim) != (LATENT_VALUES, LATENT_DIM - LATENT_VALUES):
            raise ValueError("the FP8 cache (SPEC §3) holds kv_lora_rank=512 and rope_dim=64 "
                             f"(got {kv_lora_rank} and {rope_dim})")
        self.fp8 = fp8
        self.max_seq_len = max_seq_len
        self.kv_lora_rank, self.rope_dim = kv_lora_rank, rope_dim
        self.page_size = max_seq_len if page_size is None else page_size
        pages_per_sequence = math.ceil(max_seq_len / self.page_size)
        num_pages = batch_size * pages_per_sequence
        row, row_dtype = ((FP8_ROW_BYTES, torch.float8_e4m3fn) if fp8
                          else (kv_lora_rank + rope_dim, dtype))
        self.kv_cache = torch.zeros(num_pages, self.page_size, 1, row, dtype=row_dtype,
                                    device=device)
        self.block_table = torch.arange(num_pages, dtype=torch.int32, device=device).view(
            batch_size, pages_per_sequence)
        self.cache_seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)

    @property
    def bytes_per_token(self):
        return self.kv_cache.shape[-1] * self.kv_cache.element_size()

    def reserve(self, tokens):
        """(positions (B, tokens), slots (B, tokens) int64): where `tokens` new tokens of each
        sequence go — their positions in the sequence and their rows of kv_cache viewed as
        (num_pages·page_size, row). Raises ValueError, changing nothing, when some sequence has
        no room; call `commit(tokens)` once the rows are written."""
        lengths = self.cache_seqlens.long()
        longest = int(lengths.max())
        if longest + tokens > self.max_seq_len:
            raise ValueError(f"the cache is full: a sequence holds {longest} of "
                             f"{self.max_seq_len} tokens and {tokens} more were appended")
        positions = lengths[:, None] + torch.arange(tokens, device=lengths.device)
        pages = torch.gather(self.block_table.long(), 1, positions // self.page_size)
        return positions, pages * self.page_size + positions % self.page_size

    def commit(self, tokens):
        self.cache_seqlens += tokens

    def append(self, c_kv, k_pe):
        """Writes c_kv (B, T, kv_lora_rank) and k_pe (B, T, rope_dim) (already normalised and
        rotated) after each sequence's cached tokens, through the latent epilogue's cache write
        (FP8 rows quantised on the fly). A cache without room for T more tokens in some sequence
        raises ValueError and changes nothing."""
        batch = self.block_table.shape[0]
        if c_kv.dim() != 3 or c_kv.shape[0] != batch or c_kv.shape[-1] != self.kv_lora_rank:
            raise ValueError(f"c_kv must be ({batch}, tokens, {self.kv_lora_rank}) (got shape "
                             f"{tuple(c_kv.shape)})")
        if k_pe.shape != c_kv.shape[:2] + (self.rope_dim,):
            raise ValueError(f"k_pe must be ({batch}, {c_kv.shape[1]}, {self.rope_dim}) like "
                             f"c_kv (got shape {tuple(k_pe.shape)})")
        tokens = c_kv.shape[1]
        _, slots = self.reserve(tokens)
        row_dtype = torch.bfloat16 if self.fp8 else self.kv_cache.dtype
        rows = torch.cat([c_kv.to(row_dtype), k_pe.to(row_dtype)], dim=-1)
        with torch.no_grad():
            mla_norm_rope(rows, cache=self.kv_cache, cache_slots=slots)
        self.commit(tokens)

    def decode(self, q, softmax_scale=None, causal=True):
        """mla_decode of q (B, Sq, H, row) over everything cached (the new tokens included)."""
        return mla_decode(q, self.kv_cache, self.block_table, self.cache_seqlens,
                          head_dim_v=self.kv_lora_rank, softmax_scale=softmax_scale,
                          causal=causal, is_fp8_kvcache=self.fp8)
