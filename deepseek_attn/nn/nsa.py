"""NativeSparseAttention: Native Sparse Attention (SPEC §5) as a drop-in causal nn.Module.

Every query attends through three branches, each with its own keys and values, and mixes them
with sigmoid gates computed from its input:
- compression: keys/values of overlapping blocks (l keys every d) compressed to one row each by a
  learnable MLP with an intra-block position encoding; attention over the compressed rows runs
  through `flash_attn_func` (queries folded so the block-causal staircase becomes plain causal);
- selection: the compression branch's attention probabilities, mapped to blocks of l' keys by
  SPEC §5's formula as written (for l=32, d=16, l'=64 block j gathers the compression blocks
  4j-4..4j, i.e. keys 64j-64..64j+31: the head of block j and the end of block j-1) and summed
  over the GQA group, pick `select_n` blocks per (query, kv head)
  (`block_select`: the first `init_blocks` and the `local_blocks` latest always); attention over
  them is `block_sparse_attn`;
- sliding window: `flash_attn_func` over the last `window` keys.
Selection scores are computed under no_grad in chunks of query rows (the (Sq, n_blocks) scores of
one chunk at a time), so no (S, S/l') tensor is kept; selection is not differentiable, the three
attentions and everything before them are. RoPE (rotate-half, full head dim) turns q and all
three key sets, before compression, unless rope_theta is None.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from deepseek_attn.attention import flash_attn_func
from deepseek_attn.nn.dsa import rope_rotate_half
from deepseek_attn.sparse import BLOCK_SIZES, block_select, block_sparse_attn

__all__ = ["CompressionMLP", "NativeSparseAttention"]

SCORE_CHUNK_ELEMENTS = 1 << 24  # fp32 compression scores held at once while selecting


class CompressionMLP(nn.Module):
    """One compressed row (width) from a block of `block` rows: fc2(GELU(fc1(flatten(block +
    pe)))), pe the learnable intra-block position encoding; shared by all kv heads."""

    def __init__(self, block, width, hidden, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.pe = nn.Parameter(torch.empty(block, width, **factory))
        self.fc1 = nn.Linear(block * width, hidden, **factory)
        self.fc2 = nn.Linear(hidden, width, **factory)
        nn.init.normal_(self.pe, std=0.02)

    def forward(self, blocks):
        """blocks (..., block, width) -> (..., width)."""
        return self.fc2(F.gelu(self.fc1((blocks + self.pe).flatten(-2))))


class NativeSparseAttention(nn.Module):
    """Causal NSA over x (B, S, dim) (module docstring). Parameters: `wq`, `wk`/`wv` (the
    compression, selection and window K/V sets stacked in that order), `compress_k`/`compress_v`
    (CompressionMLP), `gate` (3 gates per query head), `wo`."""

    def __init__(self, dim, n_heads, n_kv_heads, head_dim, compress_block=32, compress_stride=16,
                 select_block=64, select_n=16, window=512, v_head_dim=None, init_blocks=1,
                 local_blocks=2, rope_theta=10000.0, softmax_scale=None, compress_hidden=None,
                 device=None, dtype=None):
        super().__init__()
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads must be a multiple of n_kv_heads (got {n_heads} and "
                             f"{n_kv_heads})")
        if compress_block % compress_stride or select_block % compress_stride:
            raise ValueError("compress_stride must divide compress_block and select_block (got "
                             f"{compress_stride}, {compress_block}, {select_block})")
        if select_block not in BLOCK_SIZES:
            raise ValueError(f"select_block must be one of {BLOCK_SIZES} (got {select_block})")
        if select_n < init_blocks + local_blocks or select_n <= 0:
            raise ValueError(f"select_n must be positive and hold the {init_blocks} initial and "
                             f"{local_blocks} local blocks (got {select_n})")
        if window < 1:
            raise ValueError(f"window must be at least 1 (got {window})")
        if rope_theta is not None and head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE (got {head_dim})")
        self.dim, self.n_heads, self.n_kv_heads = dim, n_heads, n_kv_heads
        self.head_dim, self.v_head_dim = head_dim, v_head_dim
        self.compress_block, self.compress_stride = compress_block, compress_stride
        self.select_block, self.select_n, self.window = select_block, select_n, window
        self.init_blocks, self.local_blocks, self.rope_theta = init_blocks, local_blocks, rope_theta
        self.softmax_scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
        self.compress_hidden = 4 * head_dim if compress_hidden is None else compress_hidden
        factory = dict(device=device, dtype=dtype)
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False, **factory)
        self.wk = nn.Linear(dim, 3 * n_kv_heads * head_dim, bias=False, **factory)
        self.wv = nn.Linear(dim, 3 * n_kv_heads * v_head_dim, bias=False, **factory)
        self.compress_k = CompressionMLP(compress_block, head_dim, self.compress_hidden, **factory)
        self.compress_v = CompressionMLP(compress_block, v_head_dim, self.compress_hidden,
                                         **factory)
        self.gate = nn.Linear(dim, 3 * n_heads, **factory)
        self.wo = nn.Linear(n_heads * v_head_dim, dim, bias=False, **factory)

    def config(self):
        """The constructor's settings as a dict (what reference.nsa_attention_ref reads)."""
        names = ("dim", "n_heads", "n_kv_heads", "head_dim", "v_head_dim", "compress_block",
                 "compress_stride", "select_block", "select_n", "window", "init_blocks",
                 "local_blocks", "rope_theta", "softmax_scale", "compress_hidden")
        return {name: getattr(self, name) for name in names}

    def forward(self, x):
        o_cmp, o_slc, o_win, gates, _ = self.branches(x)
        mixed = gates[..., 0:1] * o_cmp + gates[..., 1:2] * o_slc + gates[..., 2:3] * o_win
        return self.wo(mixed.flatten(2))

    def branches(self, x):
        """The three branch outputs (B, S, Hq, Dv) each, the gates (B, S, Hq, 3) and the selected
        blocks (B, S, Hkv, select_n) int32 of x (B, S, dim)."""
        batch, seqlen, _ = x.shape
        q = self.wq(x).view(batch, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seqlen, 3, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seqlen, 3, self.n_kv_heads, self.v_head_dim)
        if self.rope_theta is not None:
            q, k = self._rope(q, k)
        k_cmp, k_slc, k_win = k.unbind(2)
        v_cmp, v_slc, v_win = v.unbind(2)
        o_cmp, lse_cmp, k_compressed = self._compression(q, k_cmp, v_cmp)
        block_indices = self._select(q, k_compressed, lse_cmp)
        o_slc = block_sparse_attn(q, k_slc, v_slc, block_indices, self.select_block, causal=True,
                                  softmax_scale=self.softmax_scale)
        o_win = flash_attn_func(q, k_win, v_win, softmax_scale=self.softmax_scale, causal=True,
                                window_size=(self.window - 1, 0))
        gates = torch.sigmoid(self.gate(x)).view(batch, seqlen, self.n_heads, 3)
        return o_cmp, o_slc, o_win, gates.to(o_slc.dtype), block_indices

    def _rope(self, q, k):
        seqlen = q.shape[1]
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # rotation precision
        inv_freq = self.rope_theta ** -(
            torch.arange(0, self.head_dim, 2, device=q.device, dtype=dtype) / self.head_dim)
        angles = torch.arange(seqlen, device=q.device, dtype=dtype)[:, None] * inv_freq
        cos, sin = angles.cos()[None], angles.sin()[None]
        keys = rope_rotate_half(k.flatten(2, 3), cos, sin).view_as(k)
        return rope_rotate_half(q, cos, sin), keys

    def _compression(self, q, k_cmp, v_cmp):
        """(o_cmp (B, S, Hq, Dv), lse (B, S, Hq) fp32, -inf for rows seeing no block, compressed
        keys (B, Nc, Hkv, D)). Query t sees block i iff i·d + l - 1 <= t, so the queries
        t = l-1+(c-1)·d .. l-2+c·d see exactly c blocks: folded into the head dim (d·G rows per
        kv head), chunk c-1 of them is row c-1 of plain causal attention over the Nc blocks."""
        batch, seqlen, heads, _ = q.shape
        block, stride = self.compress_block, self.compress_stride
        hidden_rows = min(block - 1, seqlen)  # rows before the first block ends see none
        n_compressed = (seqlen - block) // stride + 1 if seqlen >= block else 0
        k_compressed = self.compress_k(k_cmp.unfold(1, block, stride).transpose(-1, -2)) \
            if n_compressed else k_cmp[:, :0]
        o_cmp = q.new_zeros(batch, seqlen, heads, self.v_head_dim)
        lse = q.new_full((batch, seqlen, heads), float("-inf"), dtype=torch.float32)
        if not n_compressed:
            return o_cmp, lse, k_compressed
        v_compressed = self.compress_v(v_cmp.unfold(1, block, stride).transpose(-1, -2))
        group, kv_heads = heads // self.n_kv_heads, self.n_kv_heads
        seeing = seqlen - hidden_rows
        rows = F.pad(q[:, hidden_rows:], (0, 0, 0, 0, 0, n_compressed * stride - seeing))
        folded = rows.view(batch, n_compressed, stride, kv_heads, group, -1).transpose(2, 3)
        out, folded_lse, _ = flash_attn_func(
            folded.reshape(batch, n_compressed, kv_heads * stride * group, -1), k_compressed,
            v_compressed, softmax_scale=self.softmax_scale, causal=True, return_attn_probs=True)
        out = out.view(batch, n_compressed, kv_heads, stride, group, -1).transpose(2, 3)
        folded_lse = folded_lse.view(batch, kv_heads, stride, group, n_compressed)
        folded_lse = folded_lse.permute(0, 4, 2, 1, 3).reshape(batch, -1, heads)
        o_cmp = torch.cat([o_cmp[:, :hidden_rows],
                           out.reshape(batch, -1, heads, self.v_head_dim)[:, :seeing]], dim=1)
        lse = torch.cat([lse[:, :hidden_rows], folded_lse[:, :seeing]], dim=1)
        return o_cmp, lse, k_compressed

    @torch.no_grad()
    def _select(self, q, k_compressed, lse_cmp):
        """block_select over SPEC §5's selection scores, query-row chunk by chunk."""
        batch, seqlen, heads, _ = q.shape
        n_compressed = k_compressed.shape[1]
        n_blocks = math.ceil(seqlen / self.select_block)
        chunk = max(1, SCORE_CHUNK_ELEMENTS // (heads * max(n_compressed, n_blocks)))
        picked = []
        for begin in range(0, seqlen, chunk):
            end = min(seqlen, begin + chunk)
            scores = self._selection_scores(q[:, begin:end], k_compressed, lse_cmp[:, begin:end],
                                            begin, n_blocks)
            picked.append(block_select(scores, self.select_n, self.select_block, causal=True,
                                       init_blocks=self.init_blocks,
                                       local_blocks=self.local_blocks, seqlen_k=end))
        return torch.cat(picked, dim=1)

    def _selection_scores(self, q, k_compressed, lse, first_row, n_blocks):
        """(B, R, Hkv, n_blocks) fp32: the compression probabilities of rows first_row.. summed
        over each GQA group, then p_slc[j] = sum_{m<l'/d, n<l/d} p_cmp[(l'/d)·j - m - n]."""
        batch, rows, heads, _ = q.shape
        kv_heads, n_compressed = self.n_kv_heads, k_compressed.shape[1]
        if not n_compressed:
            return q.new_zeros(batch, rows, kv_heads, n_blocks, dtype=torch.float32)
        grouped = q.float().view(batch, rows, kv_heads, heads // kv_heads, -1)
        logits = torch.einsum("brkgd,bckd->brkgc", grouped, k_compressed.float())
        logits = logits * self.softmax_scale - lse.view(batch, rows, kv_heads, -1, 1)
        position = torch.arange(first_row, first_row + rows, device=q.device)
        last_block = (position - self.compress_block + 1).div(self.compress_stride,
                                                              rounding_mode="floor")
        visible = torch.arange(n_compressed, device=q.device) <= last_block[:, None]
        probs = torch.where(visible[None, :, None, None], logits.exp(), 0.0).sum(3)
        per_select = self.select_block // self.compress_stride
        reach = per_select + self.compress_block // self.compress_stride - 1  # offsets 0..reach-1
        padded = F.pad(probs, (reach - 1, per_select * n_blocks))
        scores = probs.new_zeros(batch, rows, kv_heads, n_blocks)
        for offset in range(reach):  # offset m + n, counted once per (m, n) pair
            pairs = min(offset, per_select - 1) - max(0, offset - reach + per_select) + 1
            start = reach - 1 - offset
            scores += pairs * padded[..., start:start + per_select * n_blocks:per_select]
        return scores

    def extra_repr(self):
        return ", ".join(f"{name}={value}" for name, value in self.config().items())
