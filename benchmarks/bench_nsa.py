"""Native Sparse Attention beside dense causal attention, same run, same device (SPEC §5, §7).

Kernel: `block_sparse_attn` (NSA's selection branch) in the NSA paper's setting: B = 1, GQA with
16 query heads per kv head (Hq 64, Hkv 4 on CUDA), Dqk 192, Dv 128, bf16, causal, key blocks of
64, n = 16 blocks per (query, kv head) from `block_select` over random scores (fixed seed: the
first block, the two latest and 13 random others, no duplicates). Its peers, on the same q/k/v:
- `flash_attn_func-dense`: dense causal `flash_attn_func` (GQA);
- `sdpa-dense`: dense causal SDPA (enable_gqa) with v zero-padded to 192 columns and the output
  sliced back: SDPA's flash kernels (CPU and CUDA) need Dv == Dqk, and its CPU fallback for
  Dv != Dqk is the math path, O(S²) memory. On CUDA `sdpa-cudnn-dense` also runs the cuDNN
  backend on the real 192/128 shapes, k/v expanded to Hq heads;
- `flex_attention`: FlexAttention (compiled with torch.compile) under the same selection:
  mask_mod = causal & (kv_idx // 64 is selected for the row's kv head), read from a boolean table
  (B, Hkv, S, S/64) built from the block lists; `create_block_mask` with 128 x 64 tiles.
  On CPU FlexAttention has no backward (its rows say so) and runs only up to --flex-max-seqlen.
Modes: fwd and fwd+bwd, on CUDA also bwd (the graph built once and replayed; the backward goal
reads it). TFLOP/s (SPEC §7): 2·(Dqk + Dv) per visible (query, key) pair per query head, the
backward 2.5x the forward; block_sparse_attn and FlexAttention count only the selected visible
pairs (summed exactly from the block lists), the dense impls every causal pair (SDPA's padding
not counted). "density" = selected pairs / causal pairs.

Module: `deepseek_attn.nn.NativeSparseAttention` (compression, selection and window branches,
gates) beside `DenseAttention`, a module of the same shapes (wq, one wk/wv set, wo, RoPE) with
dense causal flash_attn_func or SDPA (v padded as above); x (1, S, dim) bf16, forward (CUDA)
and forward+backward (gradients of x and every weight); tokens/s.

CPU (2 threads, about 15 minutes): half a GQA group of the paper (Hq 8, Hkv 1; --heads 16 for a
whole one, twice the time), S 8k and 16k, FlexAttention up to 8k (about 7 s a call there), the
module with dim 1024, Hq 8, Hkv 1 at S 4k; 1 warm-up and 3 timed runs (SPEC §7 asks for 5:
--repeats 5), no peak-memory runs (--memory). CUDA: S 8k to 64k, the module with dim 2560 (the
paper's 27B model), Hq 64, Hkv 4, at S 8k to 64k; the harness's warm-up and repeats, memory.
--quick: S 256 and 512, Hq 4, Hkv 1, n 4, FlexAttention at 256 only (compiling is most of its
time), the module (dim 256, n 4, window 128) at 256; 1 warm-up and 3 timed runs.

    python benchmarks/bench_nsa.py            # the sweep for the best device
    python benchmarks/bench_nsa.py --quick    # a smoke run (< 1 minute on 2 CPU threads)

Prints the tables and one line per goal of issue 16 (met / not met / not measured), writes
benchmarks/results/<device>-nsa.json and a PNG beside it.
"""

import argparse
import functools
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import measured  # noqa: E402
import bench_attention  # noqa: E402

import deepseek_attn  # noqa: E402
from deepseek_attn.nn.dsa import rope_rotate_half  # noqa: E402

OURS = "deepseek_attn"  # block_sparse_attn
DENSE_OURS = "flash_attn_func-dense"
DENSE_SDPA = "sdpa-dense"
DENSE_CUDNN = "sdpa-cudnn-dense"
FLEX = "flex_attention"
MODULE_OURS = "NativeSparseAttention"
MODULE_FLASH = "DenseAttention-flash_attn_func"
MODULE_SDPA = "DenseAttention-sdpa"
MODULE_PEERS = [MODULE_FLASH, MODULE_SDPA]
DTYPE = torch.bfloat16
BLOCK = 64  # NSA's selection block l'
FLEX_TILE = (128, BLOCK)  # FlexAttention's (query, key) block-mask tile
CASE_FIELDS = ["B", "S", "Hq", "Hkv", "D", "Dv", "n"]
MODULE_FIELDS = ["B", "S", "dim", "Hq", "Hkv", "D", "Dv"]
FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}  # SPEC §7: backward = 2.5x forward


def dense_peers(device):
    return [DENSE_OURS, DENSE_SDPA] + ([DENSE_CUDNN] if device.type == "cuda" else [])


# ---- operands ------------------------------------------------------------------------------

def attention_inputs(device, shape):
    """q (B, S, Hq, D), k (B, S, Hkv, D), v (B, S, Hkv, Dv) bf16 leaves (our BSHD layout)."""
    generator = torch.Generator(device=device).manual_seed(0)
    batch, seqlen = shape["B"], shape["S"]
    return [torch.randn(batch, seqlen, heads, dim, generator=generator, device=device,
                        dtype=DTYPE).requires_grad_()
            for heads, dim in ((shape["Hq"], shape["D"]), (shape["Hkv"], shape["D"]),
                               (shape["Hkv"], shape["Dv"]))]


def random_block_lists(device, shape, rows_per_chunk=4096):
    """block_select over uniform random scores (seed 0): (B, S, Hkv, n) int32, best first, no
    duplicates, -1 past a row's visible blocks. Chunks of query rows keep the scores small."""
    generator = torch.Generator(device=device).manual_seed(0)
    batch, seqlen, kv_heads, n = shape["B"], shape["S"], shape["Hkv"], shape["n"]
    n_blocks = -(-seqlen // BLOCK)
    chunks = []
    for begin in range(0, seqlen, rows_per_chunk):
        end = min(seqlen, begin + rows_per_chunk)
        scores = torch.rand(batch, end - begin, kv_heads, n_blocks, generator=generator,
                            device=device)
        # seqlen_k = end: rows begin..end-1 are the last rows of a causal end x end square.
        chunks.append(deepseek_attn.block_select(scores, n, BLOCK, causal=True, seqlen_k=end))
    return torch.cat(chunks, dim=1)


def selected_pairs(block_indices, seqlen_k):
    """Visible (query, key) pairs summed over batch, rows and kv heads: per slot, the keys of its
    block up to the row's last visible key (bottom-right causal, SPEC §0); O(B·S·Hkv·n)."""
    seqlen_q = block_indices.shape[1]
    first = block_indices.long() * BLOCK
    last = torch.arange(seqlen_q, device=first.device) + seqlen_k - seqlen_q
    end = torch.minimum(first + BLOCK, (last + 1).clamp(max=seqlen_k).view(1, -1, 1, 1))
    keys = (end - first).clamp(0, BLOCK).masked_fill(block_indices < 0, 0)
    return int(keys.sum())


def causal_pairs(seqlen):
    return bench_attention.visible_pairs(seqlen, seqlen, causal=True)


# ---- timed steps ---------------------------------------------------------------------------

def timed_step(forward, wrt, mode):
    """What the timer runs: forward() under no_grad ("fwd"), forward and the gradients of `wrt`
    ("fwd+bwd"), or those gradients alone from a graph built once here ("bwd")."""
    if mode == "fwd":
        def step():
            with torch.no_grad():
                forward()
        return step
    if mode == "bwd":
        out = forward()
        dout = torch.randn_like(out)
        return lambda: torch.autograd.grad(out, wrt, dout, retain_graph=True)
    state = {}

    def step():
        out = forward()
        if "dout" not in state:  # made in the warm-up call, outside the timed ones
            state["dout"] = torch.randn_like(out)
        torch.autograd.grad(out, wrt, state["dout"])
    return step


def bhsd_copies(tensors, pad_last_to=None, expand_heads=None, requires_grad=True):
    """Contiguous (B, H, S, D) leaf copies, the SDPA/FlexAttention layout; optionally the last
    dim zero-padded (v for SDPA's flash kernels) or the heads repeated (GQA expanded)."""
    copies = []
    for t in tensors:
        t = t.detach().transpose(1, 2)
        if pad_last_to and t.shape[-1] < pad_last_to:
            t = F.pad(t, (0, pad_last_to - t.shape[-1]))
        if expand_heads and t.shape[1] < expand_heads:
            t = t.repeat_interleave(expand_heads // t.shape[1], dim=1)
        copies.append(t.contiguous().requires_grad_(requires_grad))
    return copies


def sparse_step(inputs, block_indices, mode):
    q, k, v = inputs
    return timed_step(lambda: deepseek_attn.block_sparse_attn(q, k, v, block_indices, BLOCK,
                                                              causal=True), inputs, mode)


def flash_step(inputs, mode):
    q, k, v = inputs
    return timed_step(lambda: deepseek_attn.flash_attn_func(q, k, v, causal=True), inputs, mode)


def sdpa_step(inputs, mode):
    """SDPA with v padded to Dqk (module docstring), GQA through enable_gqa."""
    dim_v = inputs[2].shape[-1]
    q, k, v = copies = bhsd_copies(inputs, pad_last_to=inputs[0].shape[-1])
    return timed_step(lambda: F.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True)[..., :dim_v], copies, mode)


def cudnn_step(inputs, mode):
    """SDPA pinned to cuDNN on the real 192/128 shapes, k/v expanded to the query heads."""
    q, k, v = copies = bhsd_copies(inputs, expand_heads=inputs[0].shape[2])

    def forward():
        with bench_attention.sdpa_backend("sdpa-cudnn"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return timed_step(forward, copies, mode)


@functools.lru_cache(maxsize=None)
def compiled_flex():
    """flex_attention and create_block_mask compiled once per process (their docs require it);
    one static graph per shape, so the limit on recompilations is raised."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(64, getattr(config, limit)))
    return (torch.compile(flex_attention, dynamic=False),
            torch.compile(create_block_mask, dynamic=False))


def selection_table(block_indices, n_blocks):
    """(B, Hkv, S, n_blocks) bool: True where the row's list names the block (-1 skipped)."""
    batch, seqlen, kv_heads, _ = block_indices.shape
    table = torch.zeros(batch, seqlen, kv_heads, n_blocks + 1, dtype=torch.bool,
                        device=block_indices.device)
    slots = torch.where(block_indices >= 0, block_indices.long(), n_blocks)  # -1 -> spare column
    table.scatter_(-1, slots, True)
    return table[..., :n_blocks].permute(0, 2, 1, 3).contiguous()


def flex_block_mask(block_indices, heads):
    """FlexAttention's BlockMask of the selection: causal & selected block of the kv head."""
    _, create_block_mask = compiled_flex()
    batch, seqlen, kv_heads, _ = block_indices.shape
    table = selection_table(block_indices, -(-seqlen // BLOCK))
    group = heads // kv_heads

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & table[b, h // group, q_idx, kv_idx // BLOCK]

    return create_block_mask(mask_mod, batch, heads, seqlen, seqlen,
                             device=block_indices.device, BLOCK_SIZE=FLEX_TILE)


def flex_step(inputs, block_mask, mode, check=None):
    """Compiled flex_attention. Compiling (and any failure of it) happens in the first call here,
    outside the timed runs; a failure of any kind becomes a RuntimeError (a failure row). In
    "fwd", check(out in BSHD) then sees one output, before the timing."""
    attend, _ = compiled_flex()
    # Forward-only inputs must not require grad: CPU FlexAttention refuses them even under
    # no_grad (it has no backward there).
    q, k, v = copies = bhsd_copies(inputs, requires_grad=mode != "fwd")

    def forward():
        return attend(q, k, v, block_mask=block_mask(), enable_gqa=True)

    try:
        step = timed_step(forward, copies, mode)
        if mode == "fwd" and check:
            with torch.no_grad():
                check(forward().transpose(1, 2))
        else:
            step()
    except Exception as failure:  # compile errors come in many types
        raise RuntimeError(f"{type(failure).__name__}: {harness.first_line(failure)}") from failure
    return step


# ---- the kernel cases ----------------------------------------------------------------------

FLEX_TOLERANCE = 3e-2  # bf16 outputs of the same attention (|out| < 1 here) differ by ~1e-2


def kernel_cases(run, device, shape, modes, flex_max_seqlen, notes):
    """All impls and modes on one shape. notes[...] gets the density (selected / causal pairs)
    and the largest difference between FlexAttention's output and ours (None: not compared)."""
    inputs = attention_inputs(device, shape)
    block_indices = random_block_lists(device, shape)
    group = shape["Hq"] // shape["Hkv"]
    per_pair = 2 * shape["Hq"] * (shape["D"] + shape["Dv"])
    sparse_pairs = selected_pairs(block_indices, shape["S"]) * group / shape["Hq"]
    dense_pairs = shape["B"] * causal_pairs(shape["S"])
    notes.update(density=sparse_pairs / dense_pairs, flex_max_abs_diff=None)
    mask = {}  # FlexAttention's block mask, built once per shape on first use

    def block_mask():
        if "mask" not in mask:
            mask["mask"] = flex_block_mask(block_indices, shape["Hq"])
        return mask["mask"]

    def compare_with_ours(flex_out):
        """Guards the timing of a different computation: FlexAttention must give our output."""
        with torch.no_grad():
            ours = deepseek_attn.block_sparse_attn(*inputs, block_indices, BLOCK, causal=True)
        notes["flex_max_abs_diff"] = (flex_out.float() - ours.float()).abs().max().item()

    steps = {OURS: (functools.partial(sparse_step, inputs, block_indices), sparse_pairs),
             DENSE_OURS: (functools.partial(flash_step, inputs), dense_pairs),
             DENSE_SDPA: (functools.partial(sdpa_step, inputs), dense_pairs),
             DENSE_CUDNN: (functools.partial(cudnn_step, inputs), dense_pairs),
             FLEX: (functools.partial(flex_step, inputs, block_mask, check=compare_with_ours),
                    sparse_pairs)}
    results = []
    for mode in modes:
        case = ("block_sparse_attn", mode, shape)
        for impl in [OURS] + dense_peers(device) + [FLEX]:
            make, pairs = steps[impl]
            if impl == FLEX and flex_max_seqlen and shape["S"] > flex_max_seqlen:
                results.append(run.skip(case, impl, f"not run above S = {flex_max_seqlen} "
                                                    "(--flex-max-seqlen)"))
                continue
            results.append(run(case, impl, functools.partial(make, mode=mode),
                               per_pair * pairs * FACTOR[mode]))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


# ---- the module cases ----------------------------------------------------------------------

def rope_tables(seqlen, head_dim, device, theta=10000.0):
    """cos, sin (1, S, head_dim / 2) fp32 of rotate-half RoPE over the full head dim."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                          / head_dim)
    angles = torch.arange(seqlen, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos()[None], angles.sin()[None]


class DenseAttention(nn.Module):
    """The module peer: NSA's shapes without its extra branches (wq, one wk/wv set, wo, RoPE as
    NativeSparseAttention applies it), dense causal attention by flash_attn_func or SDPA."""

    def __init__(self, dim, n_heads, n_kv_heads, head_dim, v_head_dim, attention, device=None,
                 dtype=None):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim, self.v_head_dim, self.attention = head_dim, v_head_dim, attention
        factory = dict(device=device, dtype=dtype)
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False, **factory)
        self.wk = nn.Linear(dim, n_kv_heads * head_dim, bias=False, **factory)
        self.wv = nn.Linear(dim, n_kv_heads * v_head_dim, bias=False, **factory)
        self.wo = nn.Linear(n_heads * v_head_dim, dim, bias=False, **factory)

    def forward(self, x):
        batch, seqlen, _ = x.shape
        cos, sin = rope_tables(seqlen, self.head_dim, x.device)
        q = rope_rotate_half(self.wq(x).view(batch, seqlen, self.n_heads, self.head_dim), cos,
                             sin)
        k = rope_rotate_half(self.wk(x).view(batch, seqlen, self.n_kv_heads, self.head_dim),
                             cos, sin)
        v = self.wv(x).view(batch, seqlen, self.n_kv_heads, self.v_head_dim)
        if self.attention == "flash":
            out = deepseek_attn.flash_attn_func(q, k, v, causal=True)
        else:  # v padded to the key width: SDPA's flash kernels need Dv == Dqk
            padded = F.pad(v, (0, self.head_dim - self.v_head_dim))
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), padded.transpose(1, 2), is_causal=True,
                enable_gqa=True)[..., :self.v_head_dim].transpose(1, 2)
        return self.wo(out.flatten(2))


def nsa_module_class():
    """deepseek_attn.nn.NativeSparseAttention, or the reason it cannot be imported."""
    try:
        from deepseek_attn.nn import NativeSparseAttention
    except ImportError as failure:
        return None, f"deepseek_attn.nn.NativeSparseAttention not importable: {failure}"
    return NativeSparseAttention, None


def module_step(module, x, mode):
    """Gradients of x and of every weight."""
    return timed_step(lambda: module(x), [x] + list(module.parameters()), mode)


def module_cases(run, device, config, seqlen, modes):
    """NativeSparseAttention and the two DenseAttention peers on x (1, S, dim)."""
    shape = dict(B=1, S=seqlen, dim=config["dim"], Hq=config["n_heads"],
                 Hkv=config["n_kv_heads"], D=config["head_dim"], Dv=config["v_head_dim"])
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, seqlen, config["dim"], generator=generator, device=device,
                    dtype=DTYPE).requires_grad_()
    nsa_class, missing = nsa_module_class()
    dense = dict(dim=config["dim"], n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"],
                 head_dim=config["head_dim"], v_head_dim=config["v_head_dim"])

    def build(impl):
        torch.manual_seed(0)
        if impl == MODULE_OURS:
            return nsa_class(**config, device=device, dtype=DTYPE)
        attention = "flash" if impl == MODULE_FLASH else "sdpa"
        return DenseAttention(**dense, attention=attention, device=device, dtype=DTYPE)

    results = []
    for mode in modes:
        case = ("attention_module", mode, shape)
        for impl in [MODULE_OURS] + MODULE_PEERS:
            if impl == MODULE_OURS and missing:
                results.append(run.skip(case, impl, missing))
                continue
            # The NSA module is new: a changed signature or a refused shape is a row, not a crash.
            results.append(run(case, impl, lambda: module_step(build(impl), x, mode), None,
                               catch=(TypeError, ValueError) if impl == MODULE_OURS else ()))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


# ---- report --------------------------------------------------------------------------------

def fastest_dense_speedup(row, device):
    """block_sparse_attn's speed-up over the fastest dense impl that ran (None: none ran)."""
    ratios = [row[f"speedup_vs_{peer}"] for peer in dense_peers(device)] if row else []
    ratios = [ratio for ratio in ratios if ratio is not None]
    return min(ratios) if ratios else None


LABELS = {DENSE_OURS: "flash", DENSE_SDPA: "sdpa", DENSE_CUDNN: "cudnn", FLEX: "flex",
          MODULE_FLASH: "dense-flash", MODULE_SDPA: "dense-sdpa"}  # table headers


def kernel_table(rows, device, density):
    peers = dense_peers(device) + [FLEX]
    headers = ["mode", "S", "Hq", "Hkv", "n", "density", "ours ms", "ours TFLOP/s"]
    for peer in peers:
        headers += [f"{LABELS[peer]} ms", f"{LABELS[peer]} TFLOP/s", f"x vs {LABELS[peer]}"]
    table = []
    for r in rows:
        line = [r["mode"], r["S"], r["Hq"], r["Hkv"], r["n"], density.get(r["S"]),
                measured(r["ours"], "ms"), measured(r["ours"], "tflops")]
        for peer in peers:
            line += [measured(r[peer], "ms"), measured(r[peer], "tflops"),
                     r[f"speedup_vs_{peer}"]]
        table.append(line)
    return harness.format_table(headers, table)


def module_table(rows):
    headers = ["mode", "S", "dim", "Hq", "Hkv", "NSA ms", "NSA tokens/s"]
    for peer in MODULE_PEERS:
        headers += [f"{LABELS[peer]} ms", f"x vs {LABELS[peer]}"]
    table = []
    for r in rows:
        line = [r["mode"], r["S"], r["dim"], r["Hq"], r["Hkv"], measured(r["ours"], "ms"),
                measured(r["ours"], "tokens_per_s")]
        for peer in MODULE_PEERS:
            line += [measured(r[peer], "ms"), r[f"speedup_vs_{peer}"]]
        table.append(line)
    return harness.format_table(headers, table)


def goals(rows, device):
    """Issue 16's targets: (goal, value, target); value None: not measured in this run (every
    goal is printed on every device; those of the other device are not measured)."""
    by_case = {(r["mode"], r["S"]): r for r in rows}
    cuda = device.type == "cuda"

    def dense(mode, seqlen, on_cuda):
        return fastest_dense_speedup(by_case.get((mode, seqlen)), device) if cuda == on_cuda \
            else None

    flex = [r[f"speedup_vs_{FLEX}"] for r in rows if r[f"speedup_vs_{FLEX}"] is not None]
    return [("GPU: block_sparse_attn forward >= 9x the fastest dense impl at S = 64k",
             dense("fwd", 65536, True), 9.0),
            ("GPU: block_sparse_attn backward >= 6x the fastest dense impl at S = 64k",
             dense("bwd", 65536, True), 6.0),
            ("GPU: block_sparse_attn >= 1.0x FlexAttention (worst measured S and mode)",
             min(flex) if cuda and flex else None, 1.0),
            ("CPU: block_sparse_attn forward >= 3x the faster dense impl at S = 16k",
             dense("fwd", 16384, False), 3.0),
            ("CPU: block_sparse_attn forward+backward >= 3x the faster dense impl at S = 16k",
             dense("fwd+bwd", 16384, False), 3.0)]


def plot(kernel_rows, module_rows, device, path, title):
    """Speed-up vs S per peer (forward; fwd+bwd and bwd), ms vs S of the kernels and modules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = dense_peers(device) + [FLEX]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {impl: palette[i % len(palette)]
             for i, impl in enumerate([OURS] + peers + [MODULE_OURS] + MODULE_PEERS)}
    styles = {"fwd": "-", "bwd": ":", "fwd+bwd": "--"}
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    speedup_panels = ((axes[0, 0], ("fwd",), "speed-up of block_sparse_attn, forward"),
                      (axes[0, 1], ("fwd+bwd", "bwd"),
                       "speed-up of block_sparse_attn, fwd+bwd (dashed), bwd (dotted)"))
    for axis, modes, label in speedup_panels:
        for mode in modes:
            for peer in peers:
                points = sorted((r["S"], r[f"speedup_vs_{peer}"]) for r in kernel_rows
                                if r["mode"] == mode and r[f"speedup_vs_{peer}"] is not None)
                if points:
                    axis.plot(*zip(*points), marker="o", linestyle=styles[mode],
                              color=color[peer], label=f"vs {peer} {mode}")
        axis.axhline(1.0, color="gray", linewidth=0.8)
        axis.set_ylabel("peer ms / block_sparse_attn ms")
        axis.set_title(label, fontsize=10)
    timing_panels = ((axes[1, 0], kernel_rows, OURS, "block_sparse_attn", peers,
                      "ms, kernels (fwd solid, fwd+bwd dashed, bwd dotted)"),
                     (axes[1, 1], module_rows, MODULE_OURS, MODULE_OURS, MODULE_PEERS,
                      "ms, modules on x (1, S, dim)"))
    for axis, rows, ours, ours_label, impls, label in timing_panels:
        for impl in [ours] + impls:
            key = "ours" if impl == ours else impl
            for mode in styles:
                points = sorted((r["S"], r[key].ms) for r in rows
                                if r["mode"] == mode and measured(r[key], "ms"))
                if points:
                    axis.plot(*zip(*points), marker="o", linestyle=styles[mode],
                              color=color[impl],
                              label=f"{ours_label if impl == ours else impl} {mode}")
        axis.set_yscale("log")
        axis.set_ylabel("ms")
        axis.set_title(label, fontsize=10)
    for axis in axes.flat:
        axis.set_xscale("log", base=2)
        axis.set_xlabel("sequence length S")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=6)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- main ----------------------------------------------------------------------------------

def plan(device, quick):
    """(kernel shape settings, sequence lengths, modes, module config, module lengths, module
    modes, FlexAttention's longest S) for this device."""
    cuda = device.type == "cuda"
    kernel = dict(B=1, Hq=64, Hkv=4, D=192, Dv=128, n=16) if cuda else \
        dict(B=1, Hq=8, Hkv=1, D=192, Dv=128, n=16)
    module = dict(dim=2560, n_heads=64, n_kv_heads=4, head_dim=192, v_head_dim=128) if cuda \
        else dict(dim=1024, n_heads=8, n_kv_heads=1, head_dim=192, v_head_dim=128)
    seqlens = [8192, 16384, 32768, 65536] if cuda else [8192, 16384]
    module_seqlens = [8192, 16384, 32768, 65536] if cuda else [4096]
    modes = ["fwd", "bwd", "fwd+bwd"] if cuda else ["fwd", "fwd+bwd"]
    module_modes = ["fwd", "fwd+bwd"] if cuda else ["fwd+bwd"]
    flex_max = None if cuda else 8192
    if quick:
        kernel.update(Hq=4, Hkv=1, n=4)
        module = dict(dim=256, n_heads=4, n_kv_heads=1, head_dim=192, v_head_dim=128,
                      select_n=4, window=128)
        seqlens, module_seqlens, flex_max = [256, 512], [256], 256  # flex: compiling is slow
    return kernel, seqlens, modes, module, module_seqlens, module_modes, flex_max


def main(argv=None):
    parser = harness.sweep_parser(__doc__, "nsa")
    parser.add_argument("--module-seqlens", type=int, nargs="*",
                        help="module sequence lengths (none: skip the modules)")
    parser.add_argument("--modes", nargs="+", choices=list(FACTOR), help="kernel modes")
    parser.add_argument("--heads", type=int, help="query heads (default 64 CUDA, 8 CPU)")
    parser.add_argument("--kv-heads", type=int, help="kv heads (default 4 CUDA, 1 CPU)")
    parser.add_argument("--select-n", type=int, help="blocks per (query, kv head) (default 16)")
    parser.add_argument("--flex-max-seqlen", type=int,
                        help="longest S FlexAttention runs at (default: all on CUDA, 8k on CPU;"
                             " 0: no limit)")
    parser.add_argument("--warmup", type=int, help="warm-up calls (default: the harness's)")
    parser.add_argument("--repeats", type=int,
                        help="timed calls (default: the harness's on CUDA, 3 on CPU)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                        help="peak-memory runs (default: on CUDA only)")
    args, device = harness.sweep_args(parser, argv)
    cuda = device.type == "cuda"
    kernel, seqlens, modes, module, module_seqlens, module_modes, flex_max = plan(device,
                                                                                  args.quick)
    kernel.update({key: value for key, value in (("Hq", args.heads), ("Hkv", args.kv_heads),
                                                 ("n", args.select_n)) if value})
    seqlens, modes = args.seqlens or seqlens, args.modes or modes
    if args.module_seqlens is not None:
        module_seqlens = args.module_seqlens
    if args.flex_max_seqlen is not None:
        flex_max = args.flex_max_seqlen or None
    repeats = args.repeats or (3 if args.quick or not cuda else None)
    timer = harness.Timer(device, warmup=1 if args.quick and args.warmup is None else args.warmup,
                          repeats=repeats)
    with_memory = cuda if args.memory is None else args.memory
    load = "" if cuda else f"; load average {os.getloadavg()[0]:.1f}"
    print(f"device: {harness.device_name(device)}; torch {torch.__version__}; warm-up "
          f"{timer.warmup}, median of {timer.repeats}{load}")

    impls = 2 + len(dense_peers(device))
    ticks = len(seqlens) * len(modes) * impls + len(module_seqlens) * len(module_modes) * 3
    results, module_results, notes = [], [], {}
    with tqdm(total=ticks, desc="nsa", unit="run", dynamic_ncols=True) as progress:
        run = harness.CaseRunner(timer, with_memory, progress, DTYPE)
        for seqlen in seqlens:
            notes[seqlen] = {}
            results += kernel_cases(run, device, dict(kernel, S=seqlen), modes, flex_max,
                                    notes[seqlen])
        for seqlen in module_seqlens:
            module_results += module_cases(run, device, module, seqlen, module_modes)

    rows = harness.ratio_rows(results, OURS, dense_peers(device) + [FLEX], CASE_FIELDS)
    module_rows = harness.ratio_rows(module_results, MODULE_OURS, MODULE_PEERS, MODULE_FIELDS)
    density = {seqlen: note["density"] for seqlen, note in notes.items()}
    print(kernel_table(rows, device, density))
    if module_rows:
        print(module_table(module_rows))
    print("ours = block_sparse_attn (kernel rows) or NativeSparseAttention (module rows); "
          + ", ".join(f"{label} = {impl}" for impl, label in LABELS.items()
                      if cuda or impl != DENSE_CUDNN))
    print("x vs <peer> = peer time / our time (> 1: ours is faster); density = selected pairs / "
          "causal pairs")
    harness.report_failures(results + module_results)
    disagreements = {seqlen: note["flex_max_abs_diff"] for seqlen, note in notes.items()
                     if (note["flex_max_abs_diff"] or 0.0) > FLEX_TOLERANCE}
    for seqlen, error in disagreements.items():
        print(f"WARNING: flex_attention and block_sparse_attn outputs differ by {error:.3g} at "
              f"S = {seqlen} (> {FLEX_TOLERANCE}): the FlexAttention rows time something else")
    goal_records = harness.report_goals(goals(rows, device))

    path = harness.results_path(args.out, device, "nsa")
    harness.write_json(results + module_results, device, path, extra={
        "benchmark": "bench_nsa.py", "threads": torch.get_num_threads(), "kernel": kernel,
        "block_size": BLOCK, "module": module, "warmup": timer.warmup, "repeats": timer.repeats,
        "per_seqlen": {str(seqlen): note for seqlen, note in notes.items()},
        "flex_block_mask_tile": list(FLEX_TILE), "flex_max_seqlen": flex_max,
        "sdpa": "enable_gqa, v zero-padded to Dqk (flash kernels need Dv == Dqk); "
                "sdpa-cudnn-dense: cuDNN, real shapes, k/v expanded",
        **({"load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()]}
           if not cuda else {}),  # other processes on a shared CPU skew its timings
        "goals": goal_records})
    plot(rows, module_rows, device, path.replace(".json", ".png"),
         f"NSA: block_sparse_attn (n = {kernel['n']} x {BLOCK}, Hq {kernel['Hq']}, "
         f"Hkv {kernel['Hkv']}, {kernel['D']}/{kernel['Dv']}) and the module vs dense — "
         f"{harness.device_name(device)}")
    print(f"wrote {path} and {path.replace('.json', '.png')}")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
