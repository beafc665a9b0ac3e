"""flash_attn_func against PyTorch SDPA, same run, same device (SPEC §7).

CPU (default there): B=1, H=16, D=128, causal, S = 512 .. 16k, fp32 and bf16, fwd and fwd+bwd;
peer = torch.nn.functional.scaled_dot_product_attention (its CPU flash kernel).
CUDA: B*S = 16k, H*D = 2048, D = 64 and 128, causal and not, bf16, fwd / bwd / fwd+bwd;
peers = SDPA with the flash and the cuDNN backends.

    python benchmarks/bench_attention.py                 # full sweep on the best device
    python benchmarks/bench_attention.py --quick         # a smoke run (small S, few repeats)

Prints a table, writes benchmarks/results/<device>-attention.json and a PNG beside it.
"""

import contextlib
import dataclasses
import os
import sys

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

    if impl in (OURS, OURS_SM80):
        inputs = [make(batch, s, heads, d).requires_grad_()
                  for s, d in ((seqlen_q, dim), (seqlen, dim), (seqlen, dim_v))]
        return inputs, lambda q, k, v: deepseek_attn.flash_attn_func(q, k, v, causal=causal)
    # The peer gets its preferred contiguous (B, H, S, D) layout.
    inputs = [make(batch, heads, s, d).requires_grad_()
              for s, d in ((seqlen_q, dim), (seqlen, dim), (seqlen, dim_v))]

    def sdpa(q, k, v):
        with sdpa_backend(impl):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return inputs, sdpa


def run_case(impl, shape, dtype, device, mode, timer, with_memory):
    if impl == OURS_SM80:  # our mma.sync kernels on the same GPU
        previous = deepseek_attn.set_hopper_kernels(False)
        try:
            result = run_case(OURS, shape, dtype, device, mode, timer, with_memory)
            return dataclasses.replace(result, impl=impl)
        finally:
            deepseek_attn.set_hopper_kernels(previous)
    inputs, forward = make_attention(impl, shape, dtype, device, shape["causal"])
    dout = torch.randn_like(forward(*inputs))

    if mode == "fwd":
        def step():
            with torch.no_grad():
                forward(*inputs)
    elif mode == "fwd+bwd":
        def step():
            torch.autograd.grad(forward(*inputs), inputs, dout)
    else:  # bwd: the graph is built once and replayed
        out = forward(*inputs)

        def step():
            torch.autograd.grad(out, inputs, dout, retain_graph=True)

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
        reference = F.scaled_dot_product_attention(
            *(t.transpose(1, 2).contiguous() for t in ours_inputs),
            is_causal=shape["causal"]).transpose(1, 2)
    tolerance = 1e-3 if dtype == torch.float32 else 3e-2
    error = (out.float() - reference.float()).abs().max().item()
    return error <= tolerance, error


def default_plan(device, quick):
    if device.type == "cuda":
        seqlens = [512, 1024] if quick else [512, 1024, 2048, 4096, 8192, 16384]
        shapes = [dict(B=max(1, 16384 // s), S=s, H=2048 // d, D=d, Dv=d, causal=c)
                  for d in (64, 128) for c in (False, True) for s in seqlens]
        peers = ["sdpa-flash", "sdpa-cudnn"]
        if torch.cuda.get_device_capability(device) == (9, 0):
            peers.append(OURS_SM80)
        return shapes, [torch.bfloat16], ["fwd", "bwd", "fwd+bwd"], peers


    seqlens = [256, 512] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    shapes = [dict(B=1, S=s, H=16, D=128, Dv=128, causal=True) for s in seqlens]
    return shapes, [torch.float32, torch.bfloat16], ["fwd", "fwd+bwd"], ["sdpa"]


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


def main(argv=None):
    parser = harness.sweep_parser(__doc__, "attention")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--modes", nargs="+", choices=["fwd", "bwd", "fwd+bwd"])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--check-up-to", type=int, default=4096,
                        help="compare our output with SDPA's for S up to this length")
    args, device = harness.sweep_args(parser, argv)
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
