"""Shared benchmark harness (SPEC §7): timing, peak memory, result records, a case runner that
turns failures into rows, tables, goal lines, JSON.

Every script measures our op and its peer in the same run on the same device, then reports
ratios. GPU timing: CUDA events, warm-up, L2 flushed before every run, median of >= 10 runs.
CPU timing: median of >= 5 runs after a warm-up.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import time

import torch

from deepseek_attn.testing import Timer  # noqa: F401  (the benchmarks' timer, harness.Timer)

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass
class Result:
    op: str
    impl: str
    mode: str
    dtype: str
    shape: dict
    ms: float
    tflops: float = None
    gbps: float = None
    peak_mib: float = None
    tokens_per_s: float = None
    error: str = None  # set when the impl could not run this case (and why)
    repeats: int = None  # timed runs behind the median, where a script lowers it for long cases


def sweep_parser(doc, result_name):
    """The options of every sequence-length sweep: --device, --quick, --seqlens, --threads,
    --out (default results/<device>-<result_name>.json); the script adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--seqlens", type=int, nargs="+", help="override the sequence lengths")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None,
                        help=f"JSON path (default: results/<device>-{result_name}.json)")
    return parser


def sweep_args(parser, argv):
    """(args, device) of a sweep_parser's command line, with the CPU threads set as asked."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, torch.device(args.device)


def results_path(out, device, result_name, isa=None):
    """`out`, or results/<device>-<result_name>.json; `isa` (a CPU ISA name, see cpu_isa) goes
    into a CPU device's part: cpu-amd-epyc-avx2-2t-attention.json."""
    return out or os.path.join(RESULTS_DIR, f"{device_slug(device, isa)}-{result_name}.json")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            match = re.search(r"model name\s*:\s*(.+)", handle.read())
        name = match.group(1).strip() if match else platform.processor()
    except OSError:
        name = platform.processor() or "cpu"
    return f"{name} ({torch.get_num_threads()} threads)"


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def device_slug(device, isa=None):
    """File-name form of the device: 'nvidia-h100-80gb-hbm3', 'cpu-amd-epyc-2t', or with a CPU
    `isa` 'cpu-amd-epyc-avx512bf16-2t'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        base = re.sub(r"\(.*\)", "", cpu_name()).strip()
        name = f"cpu {base} {isa + ' ' if isa else ''}{torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _resident_kib(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def peak_memory_mib(fn, device):
    """Extra memory at the peak of one call: CUDA allocator peak, or RSS high-water on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM (the peak RSS) to the current RSS
    except OSError:
        return None
    baseline = _resident_kib("VmRSS")
    fn()
    return max(0.0, (_resident_kib("VmHWM") - baseline) / 1024)


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_gemm_gflops():
    """fp32 2048^3 matmul throughput now: shared CPUs vary, so CPU results carry this probe."""
    a = torch.randn(2048, 2048)
    a @ a
    begin = time.perf_counter()
    for _ in range(3):
        a @ a
    return round(3 * 2 * 2048**3 / (time.perf_counter() - begin) / 1e9, 1)


# CPU ISA levels, lowest first, as result files name them.
ISA_LEVELS = ["default", "avx2", "avx512", "avx512bf16", "amx"]
# ONEDNN_MAX_CPU_ISA values (oneDNN's names, upper case) -> our level; unknown ones limit nothing.
_ONEDNN_ISA_LEVELS = {"SSE41": "default", "AVX": "default", "AVX2": "avx2", "AVX2_VNNI": "avx2",
                      "AVX2_VNNI_2": "avx2", "AVX512_CORE": "avx512",
                      "AVX512_CORE_VNNI": "avx512", "AVX512_CORE_BF16": "avx512bf16",
                      "AVX512_CORE_FP16": "avx512bf16", "AVX10_1_512": "avx512bf16",
                      "AVX512_CORE_AMX": "amx", "AVX512_CORE_AMX_FP16": "amx",
                      "AVX10_1_512_AMX": "amx", "AVX10_1_512_AMX_FP16": "amx", "ALL": "amx"}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as handle:
            match = re.search(r"^flags\s*:\s*(.*)$", handle.read(), re.MULTILINE)
        return set(match.group(1).split()) if match else set()
    except OSError:
        return set()


def cpu_isa():
    """The CPU's ISA level from /proc/cpuinfo (amx_bf16 -> amx, avx512_bf16 -> avx512bf16,
    avx512f -> avx512, avx2 -> avx2) and the level this process may use once the user's
    limits apply: ATEN_CPU_CAPABILITY (read back as torch's effective capability; ATen has no
    level above AVX512, so 'avx512' limits nothing) and ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA;
    oneDNN runs torch's matmuls and the brgemm tiles). Returns a dict: hardware, effective,
    limited, aten_capability, the environment values and a note for the results."""
    flags = cpu_flags()
    hardware = next((level for flag, level in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"),
                                               ("avx512f", "avx512"), ("avx2", "avx2"))
                     if flag in flags), "default")
    try:
        aten = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        aten = "unknown"
    limits = [hardware, {"DEFAULT": "default", "AVX2": "avx2"}.get(aten.upper(), "amx")]
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if onednn:
        limits.append(_ONEDNN_ISA_LEVELS.get(onednn.strip().upper(), "amx"))
    effective = min(limits, key=ISA_LEVELS.index)
    environment = {name: os.environ.get(name) for name in
                   ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
                   if os.environ.get(name)}
    limited = effective != hardware
    settings = ", ".join(f"{k}={v}" for k, v in environment.items()) or "no ISA variables"
    note = (f"ISA-limited run: {effective} on an {hardware} machine ({settings}; ATen capability "
            f"{aten})" if limited else f"full ISA of the machine: {hardware} ({settings})")
    return dict(hardware=hardware, effective=effective, limited=limited, aten_capability=aten,
                environment=environment, note=note)


def median_seconds(fn, repeats, warmup=1):
    """Median wall time (s) of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def cpu_gemm_roofline(dtype, max_size=2048, max_seconds=0.75, repeats=5):
    """torch.mm GFLOP/s on square matrices of `dtype`: n doubles from 256 up to max_size unless
    a product would then take over max_seconds (a dtype the CPU emulates slowly, fp16 without
    avx512_fp16, stays small), then the median of `repeats` runs. Returns a dict."""
    size = 256
    while True:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        first = median_seconds(lambda: torch.mm(a, b), 1, warmup=1)
        if size >= max_size or 8 * first > max_seconds:
            break
        size *= 2
    seconds = median_seconds(lambda: torch.mm(a, b), repeats, warmup=0)
    return dict(gflops=round(2 * size**3 / seconds / 1e9, 1), size=size, repeats=repeats,
                method=f"torch.mm {size}x{size}x{size} {str(dtype).split('.')[-1]}, median")


def cpu_memory_bandwidth(gib=1.0, repeats=5):
    """Read bandwidth (GB/s, 1e9 B/s) of `x.sum()` over `gib` GiB of fp32 and copy bandwidth of
    `y.copy_(x)` into a preallocated y (bytes read + written), medians of `repeats`."""
    x = torch.ones(int(gib * 2**30) // 4)
    nbytes = x.numel() * 4
    read = median_seconds(lambda: x.sum(), repeats)
    y = torch.empty_like(x)
    copy = median_seconds(lambda: y.copy_(x), repeats)
    return dict(read_gbps=round(nbytes / read / 1e9, 2),
                copy_gbps=round(2 * nbytes / copy / 1e9, 2), bytes=nbytes, repeats=repeats,
                read_method=f"x.sum() over {gib:g} GiB fp32 (bytes read / time), median",
                copy_method=f"y.copy_(x) of {gib:g} GiB fp32 (bytes read + written / time), median")


def write_json(results, device, path, extra=None):
    payload = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        **({"cpu_fp32_matmul_gflops": cpu_gemm_gflops()} if device.type == "cpu" else {}),
        **(extra or {}),
        "results": [dataclasses.asdict(r) for r in results],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=1)
    return path


def ratio_rows(results, ours, peers, key_fields):
    """For every (mode, dtype, shape) case: our result and each peer's, with peer_ms / our_ms."""
    by_case = {}
    for r in results:
        case = (r.mode, r.dtype, tuple(r.shape[f] for f in key_fields))
        by_case.setdefault(case, {})[r.impl] = r
    rows = []
    for case, impls in by_case.items():
        mine = impls.get(ours)
        row = {"mode": case[0], "dtype": case[1], **dict(zip(key_fields, case[2])), "ours": mine}
        for peer in peers:
            other = impls.get(peer)
            row[peer] = other
            usable = mine and other and mine.error is None and other.error is None
            row[f"speedup_vs_{peer}"] = other.ms / mine.ms if usable else None
        rows.append(row)
    return rows


class CaseRunner:
    """Times one impl on one case (op, mode, shape): the timer, an optional peak-memory run, a
    tick of the progress bar. A failure (an op this device lacks, no memory) becomes a row with
    the reason. `make_step` builds the timed callable (inside the try: allocating the operands
    may fail too); `flops` None leaves TFLOP/s empty; tokens/s counts B·Sq (Sq default S);
    `catch` adds exception types that also become rows (say, an API still changing)."""

    def __init__(self, timer, with_memory, progress, dtype):
        self.timer, self.with_memory, self.progress = timer, with_memory, progress
        self.dtype = str(dtype).split(".")[-1]

    def __call__(self, case, impl, make_step, flops, catch=()):
        op, mode, shape = case
        self.progress.set_postfix_str(f"{mode} S={shape['S']} {impl}")
        try:
            step = make_step()
            ms = self.timer(step)
            peak = peak_memory_mib(step, self.timer.device) if self.with_memory else None
        except (RuntimeError, NotImplementedError, *catch) as failure:
            return failed_result(case, impl, first_line(failure), self.dtype)
        finally:
            self.progress.update()
        return Result(op=op, impl=impl, mode=mode, dtype=self.dtype, shape=shape, ms=ms,
                      tflops=None if flops is None else flops / ms / 1e9, peak_mib=peak,
                      tokens_per_s=shape["B"] * shape.get("Sq", shape["S"]) / ms * 1e3)

    def skip(self, case, impl, reason):
        """The row of an impl that cannot run on this case (its tick still counts)."""
        self.progress.update()
        return failed_result(case, impl, reason, self.dtype)


def first_line(failure, limit=200):
    """An exception's message cut to its first line (its type's name when it has none)."""
    lines = str(failure).strip().splitlines()
    return (lines[0] if lines else type(failure).__name__)[:limit]


def failed_result(case, impl, reason, dtype):
    """The row of an impl that did not run on case (op, mode, shape): ms NaN, error = reason."""
    op, mode, shape = case
    return Result(op=op, impl=impl, mode=mode, dtype=str(dtype).split(".")[-1], shape=shape,
                  ms=float("nan"), error=reason)


def measured(result, field):
    """A field of a result that ran; None for a missing or failed one."""
    return getattr(result, field) if result is not None and result.error is None else None


def report_failures(results):
    """One line per result that did not run, with its reason."""
    for result in results:
        if result.error:
            print(f"could not run {result.impl} {result.mode} {result.shape}: {result.error}")


def report_goals(goals):
    """Prints one line per (goal, value, target) -- value None: not measured in this run -- and
    returns the records for the JSON."""
    records = []
    for goal, value, target in goals:
        met = None if value is None else value >= target
        status = {None: "not measured in this run", True: "met", False: "not met"}[met]
        print(f"goal: {goal}: {'-' if value is None else f'{value:.2f}'} -> {status}")
        records.append(dict(goal=goal, value=value, target=target, met=met))
    return records


def format_table(headers, rows):
    cells = [[("-" if value is None else (f"{value:.3g}" if isinstance(value, float) else
                                          str(value))) for value in row] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])
