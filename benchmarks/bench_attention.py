"""flash_attn_func against PyTorch SDPA, same run, same device (SPEC §7).

CPU (issue 17): fp32 and bf16; prefill at S = 1k, 4k, 16k with D = 64 and 128, MHA (16 heads)
and GQA 8:1 (32 query heads, 4 kv heads; SDPA with enable_gqa=True), causal and not, forward
and forward+backward; decode (Sq = 1, Sk = 4k and 32k, B = 1 and 8). Per case: our time, SDPA's,
the ratio (SDPA time / ours), GFLOP/s of both (SPEC §7: causal counts only visible pairs) as a
fraction of the machine's GEMM GFLOP/s for the dtype (torch.mm, measured at the start of the
same run), and for decode the K/V bytes read, GB/s and the fraction of the read bandwidth (a
1 GiB fp32 x.sum(), same run). Peer: torch.nn.functional.scaled_dot_product_attention on
contiguous (B, H, S, D) inputs. Each impl's first call is its peak-memory run and warm-up; then
the median of 5 timed runs (3 for a call over --long-call-s seconds; the JSON records the count).
  default  every dimension of the grid, its cost bounded (15-20 minutes on 2 threads of an AMD
           EPYC, at most 25): S = 1k the whole grid; S = 4k causal D = 128, MHA 16/16 (the
           issue's reference case) and GQA 8/1; S = 16k causal D = 128, MHA 2/2 (each case
           records its heads); decode D = 128, MHA 16/16 and GQA 32/4.
  --full   the whole grid (hours on a small host); --quick a smoke run of tiny shapes (seconds).
  --plan   prints the cases and the estimated duration, runs nothing.
The result file is named by the CPU's ISA: cpu-<cpu>-<isa>-<threads>t-attention.json with isa
amx, avx512bf16, avx512, avx2 from /proc/cpuinfo, lowered by ATEN_CPU_CAPABILITY and
ONEDNN_MAX_CPU_ISA (an ISA-limited run says so in the JSON's "isa").

CUDA: B*S = 16k, H*D = 2048, D = 64 and 128, causal and not, bf16, fwd / bwd / fwd+bwd;
peers = SDPA with the flash and the cuDNN backends.

    python benchmarks/bench_attention.py                 # the sweep for the best device
    python benchmarks/bench_attention.py --quick         # a smoke run (small S, few repeats)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_attention.py

Prints a table (and on CPU the roofline and one line per goal), writes
benchmarks/results/<device>-attention.json and a PNG beside it.
"""

import contextlib
import dataclasses
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import deepseek_attn  # noqa: E402

OURS = "deepseek_attn"
# Our op with the Hopper (wgmma/TMA) forward switched off: shows what that path adds on sm90.
OURS_SM80 = "deepseek_attn-sm80"


def visible_pairs(seqlen_q, seqlen_k, causal):
    """Number of (i, j) pairs a head attends to (bottom-right causal, SPEC §0)."""
    if not causal:
        return seqlen_q * seqlen_k
    offset = seqlen_k - seqlen_q
    return sum(max(0, min(seqlen_k, i + offset + 1)) for i in range(seqlen_q))


def attention_flops(shape, mode):
    seqlen_q = shape.get("Sq", shape["S"])  # decode cases have Sq != S (= Sk)
    forward = (2 * shape["B"] * shape["H"] * (shape["D"] + shape["Dv"])
               * visible_pairs(seqlen_q, shape["S"], shape["causal"]))
    return forward * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]


def sdpa_backend(name):
    """Context that pins SDPA to one backend ('sdpa' leaves the choice to PyTorch)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
    return sdpa_kernel(backends[name]) if name in backends else contextlib.nullcontext()


def make_attention(impl, shape, dtype, device, causal):
    """Returns (inputs, forward function) for one impl; inputs are in the impl's own layout."""
    batch, seqlen, heads, dim, dim_v = (shape[k] for k in ("B", "S", "H", "D", "Dv"))
    seqlen_q = shape.get("Sq", seqlen)
    generator = torch.Generator(device=device).manual_seed(0)

    def make(*size):
        return torch.randn(*size, generator=generator, device=device, dtype=dtype)

    heads_kv = shape.get("Hkv", heads)  # GQA: fewer kv heads (SDPA then gets enable_gqa)
    sizes = ((seqlen_q, heads, dim), (seqlen, heads_kv, dim), (seqlen, heads_kv, dim_v))
    if impl in (OURS, OURS_SM80):
        inputs = [make(batch, s, h, d).requires_grad_() for s, h, d in sizes]
        return inputs, lambda q, k, v: deepseek_attn.flash_attn_func(q, k, v, causal=causal)
    # The peer gets its preferred contiguous (B, H, S, D) layout.
    inputs = [make(batch, h, s, d).requires_grad_() for s, h, d in sizes]
    gqa = {"enable_gqa": True} if heads_kv != heads else {}

    def sdpa(q, k, v):
        with sdpa_backend(impl):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)

    return inputs, sdpa


def timed_step(mode, forward, inputs, dout):
    """The call one timing repeats: forward (no grad), forward+backward, or backward alone
    (the graph built once and replayed)."""
    if mode == "fwd":
        def step():
            with torch.no_grad():
                forward(*inputs)
    elif mode == "fwd+bwd":
        def step():
            torch.autograd.grad(forward(*inputs), inputs, dout)
    else:
        out = forward(*inputs)

        def step():
            torch.autograd.grad(out, inputs, dout, retain_graph=True)
    return step


def run_case(impl, shape, dtype, device, mode, timer, with_memory):
    if impl == OURS_SM80:  # our mma.sync kernels on the same GPU
        previous = deepseek_attn.set_hopper_kernels(False)
        try:
            result = run_case(OURS, shape, dtype, device, mode, timer, with_memory)
            return dataclasses.replace(result, impl=impl)
        finally:
            deepseek_attn.set_hopper_kernels(previous)
    inputs, forward = make_attention(impl, shape, dtype, device, shape["causal"])
    step = timed_step(mode, forward, inputs, torch.randn_like(forward(*inputs)))

    ms = timer(step)
    peak = harness.peak_memory_mib(step, device) if with_memory else None
    flops = attention_flops(shape, mode)
    return harness.Result(op="flash_attn_func", impl=impl, mode=mode, dtype=str(dtype).split(".")[-1],
                          shape=dict(shape), ms=ms, tflops=flops / (ms * 1e-3) / 1e12,
                          peak_mib=peak)


def outputs_agree(shape, dtype, device):
    """Ours and SDPA compute the same thing on this case (guards the timing of a wrong result)."""
    ours_inputs, ours = make_attention(OURS, shape, dtype, device, shape["causal"])
    with torch.no_grad():
        out = ours(*ours_inputs)
        # Contiguous (B, H, S, D) copies keep SDPA on its tiled kernels (no S x S matrix).
        gqa = {"enable_gqa": True} if shape.get("Hkv", shape["H"]) != shape["H"] else {}
        reference = F.scaled_dot_product_attention(
            *(t.transpose(1, 2).contiguous() for t in ours_inputs),
            is_causal=shape["causal"], **gqa).transpose(1, 2)
    tolerance = 1e-3 if dtype == torch.float32 else 3e-2
    error = (out.float() - reference.float()).abs().max().item()
    return error <= tolerance, error


def default_plan(device, quick):
    """The CUDA sweep (the CPU one is cpu_plan)."""
    seqlens = [512, 1024] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    shapes = [dict(B=max(1, 16384 // s), S=s, H=2048 // d, D=d, Dv=d, causal=c)
              for d in (64, 128) for c in (False, True) for s in seqlens]
    peers = ["sdpa-flash", "sdpa-cudnn"]
    if torch.cuda.get_device_capability(device) == (9, 0):
        peers.append(OURS_SM80)
    return shapes, [torch.bfloat16], ["fwd", "bwd", "fwd+bwd"], peers


def decode_plan(quick):
    """One new token per sequence against a long cache: what split-KV is for (CUDA only)."""
    cache_lengths = [4096] if quick else [1024, 4096, 16384, 65536]
    return [dict(B=b, Sq=1, S=s, H=16, D=128, Dv=128, causal=False)
            for b in (1, 8) for s in cache_lengths]


def plot(rows, peers, path, device_label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["Sq"] == r["S"]]  # the plot shows training shapes
    panels = sorted({(r["dtype"], r["mode"], r["D"], r["causal"]) for r in rows})
    columns = min(3, len(panels))
    lines = -(-len(panels) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.6 * lines), squeeze=False)
    for axis, (dtype, mode, dim, causal) in zip(axes.flat, panels):
        panel_rows = sorted((r for r in rows if (r["dtype"], r["mode"], r["D"], r["causal"])
                             == (dtype, mode, dim, causal)), key=lambda r: r["S"])
        for impl_key, label in [("ours", OURS)] + [(p, p) for p in peers]:
            points = [(r["S"], r[impl_key].tflops) for r in panel_rows
                      if r[impl_key] is not None and r[impl_key].error is None]
            if points:
                axis.plot(*zip(*points), marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_title(f"{mode} {dtype} d{dim} {'causal' if causal else 'full'}", fontsize=10)
        axis.set_xlabel("sequence length")
        axis.set_ylabel("TFLOP/s")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(f"flash_attn_func vs SDPA on {device_label}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- CPU sweep (issue 17): the grid, the same-run roofline, per-case records, goals, plot ----

MHA_HEADS = (16, 16)  # (query heads, kv heads) of the reference case
GQA_HEADS = (32, 4)  # GQA 8:1
LONG_REPEATS = 3  # timed runs of a call whose warm-up took over --long-call-s
# Our and SDPA's attention GFLOP/s as a fraction of the fp32 GEMM roofline, roughly as measured
# on a 2-thread AMD EPYC (avx512_bf16): only for the duration estimate printed before the sweep.
SPEED_GUESS = {"ours": 0.6, "sdpa": 0.75}
SDPA_BF16_GQA_BACKWARD_GUESS = 0.25  # SDPA's bf16 GQA backward is much slower on CPU
DECODE_BANDWIDTH_GUESS = 0.08  # decode K/V GB/s over the read bandwidth, both impls
DEFAULT_SWEEP_NOTE = ("the whole grid up to S = 2048; up to 8k causal D = 128 only, MHA 16/16 "
                      "heads (the issue's reference at 4k) and GQA 8:1 with 8/1 heads; above "
                      "8k causal D = 128 MHA with 2/2 heads only (each case records H and "
                      "Hkv); decode D = 128 only")


def short_dtype(dtype):
    return str(dtype).split(".")[-1]


def prefill_variants(seqlen, sweep):
    """(heads, heads_kv, D, causal) of the prefill cases at one sequence length: the whole grid
    with --full, else DEFAULT_SWEEP_NOTE (the default sweep's budget)."""
    if sweep == "quick":
        return [(h, kv, d, c) for h, kv in ((4, 4), (8, 1)) for d in (64, 128)
                for c in (True, False)]
    if sweep == "full" or seqlen <= 2048:
        return [(h, kv, d, c) for h, kv in (MHA_HEADS, GQA_HEADS) for d in (64, 128)
                for c in (True, False)]
    if seqlen <= 8192:
        return [(16, 16, 128, True), (8, 1, 128, True)]
    return [(2, 2, 128, True)]


def cpu_plan(args):
    """(sweep name, cases): a case is dict(kind, shape, dtype, mode)."""
    sweep = "quick" if args.quick else "full" if args.full else "default"
    dtypes = ([getattr(torch, d) for d in args.dtypes] if args.dtypes
              else [torch.float32, torch.bfloat16])
    modes = args.modes or ["fwd", "fwd+bwd"]
    seqlens = args.seqlens or ([256] if sweep == "quick" else [1024, 4096, 16384])
    if args.decode_lengths is not None:
        cache_lengths = args.decode_lengths
    elif args.seqlens:
        cache_lengths = []
    else:
        cache_lengths = [512] if sweep == "quick" else [4096, 32768]
    cases = []
    for dtype in dtypes:
        for seqlen in seqlens:
            for heads, heads_kv, dim, causal in prefill_variants(seqlen, sweep):
                shape = dict(B=1, Sq=seqlen, S=seqlen, H=heads, Hkv=heads_kv, D=dim, Dv=dim,
                             causal=causal)
                cases += [dict(kind="prefill", shape=shape, dtype=dtype, mode=mode)
                          for mode in modes]
        head_pairs = [(4, 4), (8, 1)] if sweep == "quick" else [MHA_HEADS, GQA_HEADS]
        dims = (64, 128) if sweep == "full" else (128,)
        batches = (1, 2) if sweep == "quick" else (1, 8)
        cases += [dict(kind="decode", dtype=dtype, mode="fwd",
                       shape=dict(B=b, Sq=1, S=s, H=h, Hkv=kv, D=d, Dv=d, causal=False))
                  for s in cache_lengths for b in batches for h, kv in head_pairs for d in dims]
    return sweep, cases


def kv_bytes(shape, dtype):
    """Bytes of K and V a decode step reads."""
    element = torch.empty((), dtype=dtype).element_size()
    return shape["B"] * shape["S"] * shape["Hkv"] * (shape["D"] + shape["Dv"]) * element


def measure_roofline():
    """The machine's GEMM GFLOP/s per dtype and its read/copy bandwidth, now, in this run."""
    gemm = {short_dtype(d): harness.cpu_gemm_roofline(d)
            for d in (torch.float32, torch.bfloat16, torch.float16)}
    return dict(gemm=gemm, memory=harness.cpu_memory_bandwidth())


def estimate_case_seconds(case, roofline, args):
    """A rough duration of one case (both impls: the check, warm-up and timed runs)."""
    shape, mode, dtype = case["shape"], case["mode"], short_dtype(case["dtype"])
    if case["kind"] == "decode":
        bytes_read = kv_bytes(shape, case["dtype"])
        call = bytes_read / (DECODE_BANDWIDTH_GUESS * roofline["memory"]["read_gbps"] * 1e9)
        elements = bytes_read / torch.empty((), dtype=case["dtype"]).element_size()
        setup = 2 * elements * 12e-9  # randn of each impl's cache
        return setup + 2 * (1 + args.repeats + (shape["S"] <= args.check_up_to)) * (call + 1e-3)
    total = 0.0
    for impl in ("ours", "sdpa"):
        speed = SPEED_GUESS[impl] * roofline["gemm"]["float32"]["gflops"] * 1e9
        if impl == "sdpa" and dtype == "bfloat16" and mode != "fwd" and shape["H"] != shape["Hkv"]:
            speed = SDPA_BF16_GQA_BACKWARD_GUESS * roofline["gemm"]["float32"]["gflops"] * 1e9
        call = attention_flops(shape, mode) / speed
        check = attention_flops(shape, "fwd") / speed if shape["S"] <= args.check_up_to else 0
        repeats = (args.repeats if args.long_call_s <= 0 or call <= args.long_call_s
                   else min(args.repeats, LONG_REPEATS))
        total += (1 + repeats) * call + check / len(args.modes or ["fwd", "fwd+bwd"])
    return total


def length_label(n):
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def case_label(case):
    shape = case["shape"]
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[short_dtype(case["dtype"])]
    heads = f"{shape['H']}/{shape['Hkv']}h"
    if case["kind"] == "decode":
        return f"{dtype} decode B={shape['B']} Sk={length_label(shape['S'])} d{shape['D']} {heads}"
    return (f"{dtype} {case['mode']} S={length_label(shape['S'])} d{shape['D']} {heads}"
            f"{' causal' if shape['causal'] else ''}")


def time_cpu_call(step, args, device):
    """(median ms, peak MiB, timed runs): the first call is the peak-memory run and the warm-up;
    a call that took over --long-call-s is then timed LONG_REPEATS times instead of --repeats."""
    begin = time.perf_counter()
    peak = None if args.no_memory else harness.peak_memory_mib(step, device)
    if peak is None:
        step()
    warm_s = time.perf_counter() - begin
    repeats = args.repeats
    if args.long_call_s > 0 and warm_s > args.long_call_s:
        repeats = min(repeats, LONG_REPEATS)
    return harness.Timer(device, warmup=0, repeats=repeats)(step), peak, repeats


def run_cpu_impl(case, impl, args, device):
    """One impl's Result on one case (a failure becomes a row with its reason)."""
    shape, dtype, mode = case["shape"], case["dtype"], case["mode"]
    try:
        inputs, forward = make_attention(impl, shape, dtype, device, shape["causal"])
        q, _, v = inputs
        if impl == OURS:
            out_size = (shape["B"], shape["Sq"], shape["H"], shape["Dv"])
        else:
            out_size = (shape["B"], shape["H"], shape["Sq"], shape["Dv"])
        step = timed_step(mode, forward, inputs, torch.randn(out_size, dtype=v.dtype))
        ms, peak, repeats = time_cpu_call(step, args, device)
    except (RuntimeError, NotImplementedError, MemoryError) as failure:
        result = harness.failed_result(("flash_attn_func", mode, dict(shape)), impl,
                                       harness.first_line(failure), dtype)
        result.repeats = 0
        return result
    flops = attention_flops(shape, mode)
    gbps = kv_bytes(shape, dtype) / ms / 1e6 if case["kind"] == "decode" else None
    return harness.Result(op="flash_attn_func", impl=impl, mode=mode, dtype=short_dtype(dtype),
                          shape=dict(shape), ms=ms, tflops=flops / ms / 1e9, gbps=gbps,
                          peak_mib=peak, repeats=repeats,
                          tokens_per_s=shape["B"] * shape["Sq"] / ms * 1e3)


def case_record(case, ours, peer, roofline, difference):
    """The JSON/table record of one case: both times, the ratio, GFLOP/s, roofline fractions."""
    shape, dtype = case["shape"], short_dtype(case["dtype"])
    ok = lambda r: r is not None and r.error is None
    ms = lambda r: r.ms if ok(r) else None
    gflops = lambda r: r.tflops * 1e3 if ok(r) else None
    gemm = roofline["gemm"][dtype]["gflops"]
    record = dict(kind=case["kind"], mode=case["mode"], dtype=dtype, **shape,
                  ours_ms=ms(ours), sdpa_ms=ms(peer),
                  ratio=peer.ms / ours.ms if ok(ours) and ok(peer) else None,
                  ours_gflops=gflops(ours), sdpa_gflops=gflops(peer),
                  gemm_gflops=gemm,
                  ours_fraction_of_gemm=gflops(ours) / gemm if ok(ours) else None,
                  sdpa_fraction_of_gemm=gflops(peer) / gemm if ok(peer) else None,
                  ours_repeats=ours.repeats, sdpa_repeats=peer.repeats,
                  ours_peak_mib=ours.peak_mib, sdpa_peak_mib=peer.peak_mib,
                  max_abs_diff_vs_sdpa=difference,
                  ours_error=ours.error, sdpa_error=peer.error)
    if case["kind"] == "decode":
        read = roofline["memory"]["read_gbps"]
        record.update(kv_bytes=kv_bytes(shape, case["dtype"]), read_gbps=read,
                      ours_gbps=ours.gbps if ok(ours) else None,
                      sdpa_gbps=peer.gbps if ok(peer) else None)
        record.update(ours_fraction_of_read_bw=record["ours_gbps"] and record["ours_gbps"] / read,
                      sdpa_fraction_of_read_bw=record["sdpa_gbps"] and record["sdpa_gbps"] / read,
                      roofline="read bandwidth")
    else:
        record["roofline"] = f"{dtype} GEMM"
    record["label"] = case_label(case)
    return record


def fraction_of_roofline(record, who):
    key = "fraction_of_read_bw" if record["kind"] == "decode" else "fraction_of_gemm"
    return record.get(f"{who}_{key}")


def pick_case(records, dtype, mode, gqa):
    """The goal's case: B = 1, D = 128, causal, MHA (or GQA 8:1), at S = 4096 when measured
    (the issue's reference), else at the longest S measured; the most heads among those."""
    matches = [r for r in records if r["kind"] == "prefill" and r["dtype"] == dtype
               and r["mode"] == mode and r["B"] == 1 and r["causal"]
               and r["D"] == max(x["D"] for x in records)
               and (r["H"] == 8 * r["Hkv"] if gqa else r["H"] == r["Hkv"])
               and r["ratio"] is not None]
    if not matches:
        return None
    return max(matches, key=lambda r: (r["S"] == 4096, r["S"], r["H"]))


def cpu_goals(records, isa):
    """Issue 17's CPU goals as (id, goal, value, target, record): value None when not measured."""
    native_bf16 = isa["effective"] in ("avx512bf16", "amx")
    goals = []

    def ratio_goal(goal_id, name, dtype, mode, gqa, target):
        record = pick_case(records, dtype, mode, gqa)
        where = f" ({record['label']})" if record else ""
        goals.append((goal_id, f"{name} x SDPA{where} >= {target}", record and record["ratio"],
                      target, record))

    ratio_goal("fp32_fwd_vs_sdpa", "fp32 forward", "float32", "fwd", False, 1.1)
    ratio_goal("fp32_fwd_bwd_vs_sdpa", "fp32 forward+backward", "float32", "fwd+bwd", False, 1.2)
    ratio_goal("bf16_fwd_bwd_vs_sdpa",
               f"bf16 forward+backward ({isa['effective']}: "
               f"{'native bf16' if native_bf16 else 'no native bf16'})",
               "bfloat16", "fwd+bwd", False, 1.3 if native_bf16 else 2.0)
    for dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
        ratio_goal(f"gqa_{short}_fwd_bwd_vs_sdpa", f"GQA 8:1 {short} forward+backward", dtype,
                   "fwd+bwd", True, 1.5)
    for dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
        record = pick_case(records, dtype, "fwd", False)
        where = f" ({record['label']})" if record else ""
        goals.append((f"{short}_fwd_of_gemm",
                      f"{short} forward GFLOP/s / {short} GEMM GFLOP/s{where} >= 0.7",
                      record and record["ours_fraction_of_gemm"], 0.7, record))
    for dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
        decode = [r for r in records if r["kind"] == "decode" and r["dtype"] == dtype
                  and r["ours_fraction_of_read_bw"] is not None]
        worst = min(decode, key=lambda r: r["ours_fraction_of_read_bw"]) if decode else None
        where = f" (lowest of {len(decode)} cases: {worst['label']})" if worst else ""
        goals.append((f"{short}_decode_of_read_bw",
                      f"{short} decode K/V GB/s / read GB/s{where} >= 0.5",
                      worst and worst["ours_fraction_of_read_bw"], 0.5, worst))
    return goals


def goal_target(record, isa):
    """The ratio goal a case's dot is drawn against (None: none for it): GQA forward+backward
    1.5, fp32 forward 1.1, fp32 forward+backward 1.2, bf16 forward+backward 1.3 or 2."""
    if record["kind"] == "decode" or record["mode"] == "bwd":
        return None
    if record["mode"] == "fwd+bwd":
        if record["H"] != record["Hkv"]:
            return 1.5
        if record["dtype"] == "float32":
            return 1.2
        return 1.3 if isa["effective"] in ("avx512bf16", "amx") else 2.0
    return 1.1 if record["dtype"] == "float32" else None


def plot_cpu(records, isa, roofline, path, device_label):
    """Ratio to SDPA per case (a line at 1, a tick at the case's goal) and the fraction of the
    roofline (GEMM for prefill, read bandwidth for decode) per case, ours and SDPA's."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(kind, [r for r in records if r["kind"] == kind]) for kind in ("prefill", "decode")]
    groups = [(kind, rows) for kind, rows in groups if rows]
    heights = [max(2, len(rows)) for _, rows in groups]
    figure, axes = plt.subplots(len(groups), 2, squeeze=False,
                                figsize=(14, 1.2 + 0.24 * sum(heights)),
                                gridspec_kw=dict(height_ratios=heights))
    colors = {"fwd": "tab:blue", "fwd+bwd": "tab:orange", "bwd": "tab:green"}
    for (kind, rows), (ratio_axis, roof_axis) in zip(groups, axes):
        ys = range(len(rows))
        labels = [r["label"] for r in rows]
        for y, r in zip(ys, rows):
            if r["ratio"] is not None:
                ratio_axis.plot(r["ratio"], y, "o", color=colors[r["mode"]])
            target = goal_target(r, isa)
            if target is not None:
                ratio_axis.plot(target, y, "|", color="tab:red", markersize=12, mew=2)
            for who, marker in (("ours", "o"), ("sdpa", "x")):
                value = fraction_of_roofline(r, who)
                if value is not None:
                    roof_axis.plot(value, y, marker, color=colors[r["mode"]],
                                   alpha=1.0 if who == "ours" else 0.6)
        ratio_axis.axvline(1.0, color="black", lw=1)
        ratio_axis.set_xscale("log", base=2)
        ratio_axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ratio_axis.set_xlabel("SDPA time / our time (> 1: ours faster; red tick: the goal)")
        goal = 0.5 if kind == "decode" else 0.7
        roof_axis.axvline(goal, color="tab:red", lw=1, ls="--")
        roof_axis.axvline(1.0, color="black", lw=1)
        if kind == "decode":
            read = roofline["memory"]["read_gbps"]
            roof_axis.set_xlabel(f"K/V GB/s / read bandwidth {read:.1f} GB/s (o ours, x SDPA; "
                                 "dashed: goal)")
        else:
            gemm = ", ".join(f"{d} {v['gflops']:.0f}" for d, v in roofline["gemm"].items()
                             if any(r["dtype"] == d for r in rows))
            roof_axis.set_xlabel(f"GFLOP/s / GEMM GFLOP/s ({gemm}) (o ours, x SDPA; "
                                 "dashed: goal)")
        for axis in (ratio_axis, roof_axis):
            axis.set_yticks(list(ys))
            axis.set_yticklabels(labels, fontsize=7)
            axis.set_ylim(len(rows) - 0.5, -0.5)
            axis.grid(alpha=0.3, axis="x")
        ratio_axis.set_title(f"{kind}: ratio to SDPA (blue fwd, orange fwd+bwd)", fontsize=10)
        roof_axis.set_title(f"{kind}: fraction of the roofline", fontsize=10)
    isa_text = isa["effective"] + (f", limited from {isa['hardware']}" if isa["limited"] else "")
    figure.suptitle(f"flash_attn_func vs SDPA on {device_label} [{isa_text}]")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_cpu_table(records):
    headers = ["kind", "mode", "dtype", "B", "Sq", "S", "H", "Hkv", "D", "causal", "ours ms",
               "sdpa ms", "x vs sdpa", "ours GFLOP/s", "sdpa GFLOP/s", "ours of roof",
               "sdpa of roof", "ours GB/s", "reps", "ours MiB", "sdpa MiB"]
    table = [[r["kind"], r["mode"], r["dtype"], r["B"], r["Sq"], r["S"], r["H"], r["Hkv"],
              r["D"], r["causal"], r["ours_ms"], r["sdpa_ms"], r["ratio"], r["ours_gflops"],
              r["sdpa_gflops"], fraction_of_roofline(r, "ours"), fraction_of_roofline(r, "sdpa"),
              r.get("ours_gbps"), f"{r['ours_repeats']}/{r['sdpa_repeats']}", r["ours_peak_mib"],
              r["sdpa_peak_mib"]] for r in records]
    # Whole milliseconds / MiB above 1000 read better than 6.57e+03.
    table = [[round(v) if isinstance(v, float) and v >= 1000 else v for v in line]
             for line in table]
    print(harness.format_table(headers, table))
    print("x vs sdpa = SDPA time / our time (> 1 means we are faster); of roof = GFLOP/s over the "
          "dtype's GEMM GFLOP/s (prefill) or K/V GB/s over the read bandwidth (decode); "
          "reps = timed runs (ours/sdpa)")


def cpu_main(args, device):
    sweep, cases = cpu_plan(args)
    isa = harness.cpu_isa()
    print(f"device: {harness.device_name(device)}; torch {torch.__version__}; ISA {isa['note']}")
    roofline = measure_roofline()
    gemm = roofline["gemm"]
    print("roofline (this run): GEMM GFLOP/s " + ", ".join(
        f"{d} {v['gflops']:.1f} ({v['size']}^3)" for d, v in gemm.items())
        + f"; read {roofline['memory']['read_gbps']:.1f} GB/s (1 GiB fp32 x.sum()), copy "
        f"{roofline['memory']['copy_gbps']:.1f} GB/s (y.copy_(x), read + write)")
    estimates = [estimate_case_seconds(case, roofline, args) for case in cases]
    print(f"{sweep} sweep: {len(cases)} cases, estimated {sum(estimates) / 60:.1f} min on this "
          f"host (a guess from the GEMM roofline; the bar's 'left' corrects it as cases finish)")
    if args.plan:
        for case, seconds in zip(cases, estimates):
            print(f"  {case_label(case):50s} ~{seconds:7.1f} s")
        return 0

    records, results, disagreements, checked = [], [], [], set()
    began, estimated_done = time.perf_counter(), 0.0
    with tqdm(total=len(cases), desc="attention", unit="case", dynamic_ncols=True) as progress:
        for case, estimate in zip(cases, estimates):
            progress.set_postfix_str(case_label(case))
            shape, dtype = case["shape"], case["dtype"]
            difference = None
            key = (tuple(shape.items()), dtype)
            if shape["S"] <= args.check_up_to and key not in checked:
                checked.add(key)
                try:
                    agree, difference = outputs_agree(shape, dtype, device)
                    if not agree:
                        disagreements.append((shape, dtype, difference))
                except (RuntimeError, NotImplementedError) as failure:
                    print(f"could not compare with SDPA on {shape}: {harness.first_line(failure)}")
            ours = run_cpu_impl(case, OURS, args, device)
            peer = run_cpu_impl(case, "sdpa", args, device)
            results += [ours, peer]
            records.append(case_record(case, ours, peer, roofline, difference))
            estimated_done += estimate
            elapsed = time.perf_counter() - began
            left = (sum(estimates) - estimated_done) * elapsed / max(estimated_done, 1e-9)
            progress.set_postfix_str(f"{case_label(case)}; ~{left / 60:.1f} min left")
            progress.update()
    elapsed = time.perf_counter() - began

    print_cpu_table(records)
    harness.report_failures(results)
    for shape, dtype, error in disagreements:
        print(f"WARNING: ours and SDPA differ by {error:.3g} on {shape} {dtype}")
    print(f"ISA: {isa['note']}; the sweep took {elapsed / 60:.1f} min "
          f"(estimated {sum(estimates) / 60:.1f})")
    goals = cpu_goals(records, isa)
    goal_records = harness.report_goals([goal[1:4] for goal in goals])
    for record, (goal_id, _, _, _, case) in zip(goal_records, goals):
        record.update(id=goal_id, case=case and case["label"])

    path = harness.results_path(args.out, device, "attention", isa=isa["effective"])
    harness.write_json(results, device, path, extra={
        "benchmark": "bench_attention.py", "threads": torch.get_num_threads(), "isa": isa,
        "roofline": roofline,
        "plan": {"sweep": sweep,
                 "description": DEFAULT_SWEEP_NOTE if sweep == "default" else f"{sweep} grid",
                 "repeats": args.repeats, "long_call_s": args.long_call_s,
                 "long_call_repeats": LONG_REPEATS,
                 "warmup": "1 call per impl and case (also its peak-memory run)",
                 "estimated_s": round(sum(estimates), 1), "elapsed_s": round(elapsed, 1)},
        "cases": records, "goals": goal_records,
        "disagreements": [dict(shape=s, dtype=short_dtype(d), max_abs_diff=e)
                          for s, d, e in disagreements]})
    png = path[:-len(".json")] + ".png" if path.endswith(".json") else path + ".png"
    plot_cpu(records, isa, roofline, png, harness.device_name(device))
    print(f"wrote {path} and {png}")
    return 1 if disagreements else 0


def main(argv=None):
    parser = harness.sweep_parser(__doc__, "attention")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--modes", nargs="+", choices=["fwd", "bwd", "fwd+bwd"])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--check-up-to", type=int, default=4096,
                        help="compare our output with SDPA's for S up to this length")
    cpu = parser.add_argument_group("CPU sweep")
    cpu.add_argument("--full", action="store_true", help="the whole grid (hours on a small host)")
    cpu.add_argument("--plan", action="store_true",
                     help="print the cases and the estimated duration, run nothing")
    cpu.add_argument("--decode-lengths", type=int, nargs="*",
                     help="decode cache lengths Sk (default 4096 32768; none with --seqlens "
                          "unless given; no values: no decode cases)")
    cpu.add_argument("--repeats", type=int, default=5, help="timed runs per call (SPEC §7: 5)")
    cpu.add_argument("--long-call-s", type=float, default=10.0,
                     help="a call whose warm-up took longer gets 3 timed runs (0: never)")
    args, device = harness.sweep_args(parser, argv)
    if device.type == "cpu":
        return cpu_main(args, device)
    return cuda_main(args, device)


def cuda_main(args, device):
    shapes, dtypes, modes, peers = default_plan(device, args.quick)
    if args.seqlens:
        base = {tuple((k, v) for k, v in s.items() if k not in ("S", "B")) for s in shapes}
        shapes = [dict(dict(rest), S=s, B=(max(1, 16384 // s) if device.type == "cuda" else 1))
                  for rest in sorted(base) for s in args.seqlens]
    dtypes = [getattr(torch, d) for d in args.dtypes] if args.dtypes else dtypes
    modes = args.modes or modes
    timer = harness.Timer(device, warmup=1 if args.quick else None,
                          repeats=(3 if device.type == "cpu" else 5) if args.quick else None)

    print(f"device: {harness.device_name(device)}; torch {torch.__version__}")
    results, disagreements = [], []
    plan = [(shape, dtype, mode, impl) for dtype in dtypes for shape in shapes
            for mode in modes for impl in [OURS] + peers
            if impl != OURS_SM80 or mode == "fwd"]  # the switch only changes the forward
    if device.type == "cuda" and not args.seqlens:
        plan += [(shape, dtype, "fwd", impl) for dtype in dtypes
                 for shape in decode_plan(args.quick) for impl in [OURS] + peers]
    checked = set()
    for shape, dtype, mode, impl in tqdm(plan, desc="attention", unit="run", dynamic_ncols=True):
        case_key = (tuple(shape.items()), dtype)
        try:
            if impl == OURS and case_key not in checked and shape["S"] <= args.check_up_to:
                checked.add(case_key)
                agree, error = outputs_agree(shape, dtype, device)
                if not agree:
                    disagreements.append((shape, dtype, error))
            results.append(run_case(impl, shape, dtype, device, mode, timer,
                                    with_memory=not args.no_memory))
        except (RuntimeError, NotImplementedError) as failure:  # e.g. a backend not built here
            message = str(failure).splitlines()[0][:200]
            results.append(harness.Result(op="flash_attn_func", impl=impl, mode=mode,
                                          dtype=str(dtype).split(".")[-1], shape=dict(shape),
                                          ms=float("nan"), error=message))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for result in results:  # training-shape rows show Sq = S
        result.shape.setdefault("Sq", result.shape["S"])
    rows = harness.ratio_rows(results, OURS, peers, ["B", "Sq", "S", "H", "D", "causal"])
    headers = ["mode", "dtype", "B", "Sq", "S", "H", "D", "causal", "ours ms", "ours TFLOP/s",
               "ours MiB"]
    for peer in peers:
        headers += [f"{peer} ms", f"{peer} TFLOP/s", f"{peer} MiB", f"x vs {peer}"]
    table = []
    for r in rows:
        line = [r["mode"], r["dtype"], r["B"], r["Sq"], r["S"], r["H"], r["D"], r["causal"]]
        for impl_key in ["ours"] + peers:
            result = r[impl_key]
            ok = result is not None and result.error is None
            line += [result.ms if ok else None, result.tflops if ok else None,
                     result.peak_mib if ok else None]
            if impl_key != "ours":
                line.append(r[f"speedup_vs_{impl_key}"])
        table.append(line)
    print(harness.format_table(headers, table))
    print("x vs <peer> = peer time / our time (> 1 means we are faster)")
    for result in results:
        if result.error:
            print(f"could not run {result.impl} {result.mode} {result.shape}: {result.error}")
    for shape, dtype, error in disagreements:
        print(f"WARNING: ours and SDPA differ by {error:.3g} on {shape} {dtype}")

    path = harness.results_path(args.out, device, "attention")
    harness.write_json(results, device, path, extra={"benchmark": "bench_attention.py",
                                                     "threads": torch.get_num_threads()})
    plot(rows, peers, path.replace(".json", ".png"), harness.device_name(device))
    print(f"wrote {path} and {path.replace('.json', '.png')}")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
