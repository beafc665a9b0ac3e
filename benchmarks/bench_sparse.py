"""DeepSeek Sparse Attention beside dense causal attention, same run, same device (SPEC §4, §7).

Prefill (B = 1, causal, S tokens): the lightning indexer (`indexer_topk`, 64 index heads of 128
dims), `sparse_attn` of Hq query heads over the selected MLA latent rows (Hkv = 1, Dqk 576,
Dv 512) and their sum ("dsa"), beside dense causal attention on MLA's naive per-head shapes
(Dqk 192, Dv 128): our `flash_attn_func` and SDPA (v padded to 192, see dense_prefill_step).
Decode (one new token per sequence over S cached tokens): the indexer for that token over the
index-key cache plus `sparse_attn` over its selected latent rows, beside `mla_decode` (dense
absorbed attention over all S latent rows).
TFLOP/s (SPEC §7): sparse_attn counts 2·B·Hq·(576+512) per selected valid pair, flash_attn_func
and SDPA 2·B·Hq·(192+128) per causal pair, mla_decode 2·B·Hq·(576+512) per cached key, the
indexer 2·B·64·128 per causal pair (its score GEMM), dsa the sum of its two parts' counts.
Everything runs in bf16: the CPU indexer converts its tiles to fp32 for the GEMMs, so fp32 inputs
were no faster there (measured on 2 threads at S = 2k and 4k).

    python benchmarks/bench_sparse.py            # the sweep for the best device
    python benchmarks/bench_sparse.py --quick    # a smoke run (tiny S, topk 64, 4 heads)

Writes benchmarks/results/<device>-sparse.json and a PNG beside it.
"""

import functools
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import measured  # noqa: E402
import bench_attention  # noqa: E402
from bench_mla import NOPE, ROPE, V_DIM  # noqa: E402

import deepseek_attn  # noqa: E402
from deepseek_attn import mla_decode, sparse  # noqa: E402
from deepseek_attn.mla import LATENT_DIM, LATENT_VALUES  # noqa: E402

OURS = "deepseek_attn"  # the DSA pipeline: indexer_topk, then sparse_attn over its selection
INDEXER = "deepseek_attn-indexer_topk"
SPARSE = "deepseek_attn-sparse_attn"
DENSE_OURS = "flash_attn_func-dense"
DENSE_SDPA = "sdpa-dense"
DENSE_DECODE = "mla_decode-dense"
IMPLS = [INDEXER, SPARSE, DENSE_OURS, DENSE_SDPA, DENSE_DECODE]
INDEX_HEADS, INDEX_DIM = 64, 128  # SPEC §4
DTYPE = torch.bfloat16
SCALE = (NOPE + ROPE) ** -0.5  # MLA's scale, for the latent and the per-head shapes alike
PREFILL, DECODE = "fwd", "decode"
CASE_FIELDS = ["B", "Sq", "S", "Hq", "topk"]


def causal_pairs(shape):
    """Visible (query, key) pairs per head over the batch (bottom-right causal, SPEC §0)."""
    return shape["B"] * bench_attention.visible_pairs(shape["Sq"], shape["S"], causal=True)


def dsa_inputs(device, shape):
    """Random operands of one DSA call: indexer q, k and weights; latent q and cache rows."""
    generator = torch.Generator(device=device).manual_seed(0)
    batch, seqlen_q, seqlen_k = shape["B"], shape["Sq"], shape["S"]

    def make(*size):
        return torch.randn(*size, generator=generator, device=device, dtype=DTYPE)

    return dict(index_q=make(batch, seqlen_q, INDEX_HEADS, INDEX_DIM),
                index_k=make(batch, seqlen_k, INDEX_DIM),
                index_weights=make(batch, seqlen_q, INDEX_HEADS) * INDEX_HEADS ** -0.5,
                q=make(batch, seqlen_q, shape["Hq"], LATENT_DIM),
                latent=make(batch, seqlen_k, 1, LATENT_DIM))


def dsa_results(run, case, inputs):
    """Rows of indexer_topk, of sparse_attn over the selection it made, and of their sum."""
    shape = case[2]
    select = functools.partial(sparse.indexer_topk, inputs["index_q"], inputs["index_k"],
                               inputs["index_weights"], topk=shape["topk"])
    indexer = run(case, INDEXER, lambda: select,
                  2 * INDEX_HEADS * INDEX_DIM * causal_pairs(shape))
    if indexer.error:
        attention = run.skip(case, SPARSE, f"needs the indexer's selection ({indexer.error})")
    else:
        indices = select()[:, :, None]  # (B, Sq, Hkv = 1, topk), -1 past the visible keys
        selected_pairs = int((indices >= 0).sum())
        attention = run(case, SPARSE,
                        lambda: functools.partial(deepseek_attn.sparse_attn, inputs["q"],
                                                  inputs["latent"], None, indices, SCALE,
                                                  head_dim_v=LATENT_VALUES),
                        2 * shape["Hq"] * (LATENT_DIM + LATENT_VALUES) * selected_pairs)
    return [indexer, attention, pipeline_result(case, indexer, attention)]


def pipeline_result(case, indexer, attention):
    """The DSA row: the two parts' times added, and their FLOP counts."""
    failed = [part for part in (indexer, attention) if part.error]
    if failed:
        return harness.failed_result(case, OURS, f"{failed[0].impl} did not run", DTYPE)
    ms = indexer.ms + attention.ms
    peaks = [part.peak_mib for part in (indexer, attention) if part.peak_mib is not None]
    shape = case[2]
    return harness.Result(op=case[0], impl=OURS, mode=case[1], dtype=attention.dtype,
                          shape=shape, ms=ms,
                          tflops=(indexer.tflops * indexer.ms + attention.tflops * attention.ms)
                          / ms, peak_mib=max(peaks) if peaks else None,
                          tokens_per_s=shape["B"] * shape["Sq"] / ms * 1e3)


def dense_prefill_step(attention_impl, shape, device):
    """flash_attn_func or SDPA (each in its own layout) on MLA's naive per-head shapes. SDPA gets
    v padded to 192 columns and its output sliced back: with Dv != Dqk its CPU path is the math
    fallback, O(S²) memory (10 GB at S = 8k, out of memory at 16k)."""
    padded = attention_impl == "sdpa"
    dense_shape = dict(B=shape["B"], S=shape["S"], H=shape["Hq"], D=NOPE + ROPE,
                       Dv=NOPE + ROPE if padded else V_DIM)
    inputs, forward = bench_attention.make_attention(attention_impl, dense_shape, DTYPE, device,
                                                     causal=True)
    if padded:
        return lambda: forward(*inputs)[..., :V_DIM]
    return functools.partial(forward, *inputs)


@torch.no_grad()
def prefill_case(run, device, seqlen, heads, topk):
    shape = dict(B=1, Sq=seqlen, S=seqlen, Hq=heads, topk=topk, H_I=INDEX_HEADS, d_I=INDEX_DIM)
    case = ("dsa_prefill", PREFILL, shape)
    # The DSA operands are freed before the dense ones exist: at 128k and 128 heads each
    # side holds about 20 GB.
    results = dsa_results(run, case, dsa_inputs(device, shape))
    flops = 2 * heads * (NOPE + ROPE + V_DIM) * causal_pairs(shape)
    for impl, attention_impl in ((DENSE_OURS, bench_attention.OURS), (DENSE_SDPA, "sdpa")):
        results.append(run(case, impl, functools.partial(dense_prefill_step, attention_impl,
                                                         shape, device), flops))
    return results


@torch.no_grad()
def decode_case(run, device, batch, seqlen, heads, topk):
    shape = dict(B=batch, Sq=1, S=seqlen, Hq=heads, topk=topk, H_I=INDEX_HEADS, d_I=INDEX_DIM)
    case = ("dsa_decode", DECODE, shape)
    inputs = dsa_inputs(device, shape)
    cache_seqlens = torch.full((batch,), seqlen, dtype=torch.int32, device=device)
    dense = functools.partial(mla_decode, inputs["q"], inputs["latent"], None, cache_seqlens,
                              softmax_scale=SCALE, causal=True)
    return dsa_results(run, case, inputs) + [
        run(case, DENSE_DECODE, lambda: dense,
            2 * heads * (LATENT_DIM + LATENT_VALUES) * causal_pairs(shape))]


def prefill_table(rows):
    headers = ["S", "Hq", "topk", "indexer ms", "sparse_attn ms", "dsa ms", "flash ms",
               "sdpa ms", "indexer TFLOP/s", "sparse TFLOP/s", "flash TFLOP/s",
               "sparse/flash TFLOP/s", f"x vs {DENSE_OURS}", f"x vs {DENSE_SDPA}"]
    table = []
    for r in rows:
        sparse_tflops = measured(r[SPARSE], "tflops")
        flash_tflops = measured(r[DENSE_OURS], "tflops")
        table.append([r["S"], r["Hq"], r["topk"]]
                     + [measured(r[key], "ms") for key in (INDEXER, SPARSE, "ours", DENSE_OURS,
                                                            DENSE_SDPA)]
                     + [measured(r[INDEXER], "tflops"), sparse_tflops, flash_tflops,
                        sparse_tflops / flash_tflops if sparse_tflops and flash_tflops else None,
                        r[f"speedup_vs_{DENSE_OURS}"], r[f"speedup_vs_{DENSE_SDPA}"]])
    return harness.format_table(headers, table)


def decode_table(rows):
    headers = ["B", "S", "Hq", "topk", "indexer ms", "sparse_attn ms", "dsa ms", "dsa TFLOP/s",
               "dsa tokens/s", "mla_decode ms", "mla_decode TFLOP/s", f"x vs {DENSE_DECODE}"]
    table = [[r["B"], r["S"], r["Hq"], r["topk"], measured(r[INDEXER], "ms"),
              measured(r[SPARSE], "ms"), measured(r["ours"], "ms"), measured(r["ours"], "tflops"),
              measured(r["ours"], "tokens_per_s"), measured(r[DENSE_DECODE], "ms"),
              measured(r[DENSE_DECODE], "tflops"), r[f"speedup_vs_{DENSE_DECODE}"]]
             for r in rows]
    return harness.format_table(headers, table)


def dense_speedup(row):
    """DSA prefill's speed-up over the faster of the dense impls that ran (None: none did)."""
    ratios = [row[f"speedup_vs_{peer}"] for peer in (DENSE_OURS, DENSE_SDPA)] if row else []
    ratios = [ratio for ratio in ratios if ratio is not None]
    return min(ratios) if ratios else None


def goals(prefill_rows, decode_rows, device):
    """Issue 15's targets for this device: (goal, value, target); value None: not measured."""
    prefill = {r["S"]: r for r in prefill_rows}
    if device.type != "cuda":
        return [("DSA prefill >= 2x faster than the faster dense impl at S = 16k",
                 dense_speedup(prefill.get(16384)), 2.0)]
    per_pair = [measured(r[SPARSE], "tflops") / measured(r[DENSE_OURS], "tflops")
                for r in prefill_rows
                if measured(r[SPARSE], "tflops") and measured(r[DENSE_OURS], "tflops")]
    decode_long = next((r for r in decode_rows if r["S"] == 131072), None)
    return [("sparse_attn TFLOP/s >= 50% of flash_attn_func's (per computed pair, worst S)",
             min(per_pair) if per_pair else None, 0.5),
            ("DSA prefill >= 3.5x faster than the faster dense impl at S = 128k",
             dense_speedup(prefill.get(131072)), 3.5),
            ("DSA decode >= 8x faster than mla_decode at S = 128k",
             decode_long[f"speedup_vs_{DENSE_DECODE}"] if decode_long else None, 8.0)]


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ((PREFILL, "prefill, B = 1"), (DECODE, "decode, one new token per sequence"))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (mode, label) in zip(axes, panels):
        for impl in [OURS] + IMPLS:
            points = sorted((r.shape["S"], r.ms) for r in results
                            if r.mode == mode and r.impl == impl and r.error is None)
            if points:
                axis.plot(*zip(*points), marker="o",
                          label="dsa (indexer_topk + sparse_attn)" if impl == OURS else impl,
                          linestyle="--" if impl in (INDEXER, SPARSE) else "-")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("sequence length S")
        axis.set_ylabel("ms")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = harness.sweep_parser(__doc__, "sparse")
    parser.add_argument("--heads", type=int,
                        help="query heads (default: 128 on CUDA as DeepSeek-V3, 16 on CPU)")
    parser.add_argument("--topk", type=int, help="keys selected per query (default: 2048)")
    parser.add_argument("--batch", type=int, help="decode batch (default: 4 on CUDA, 1 on CPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args, device = harness.sweep_args(parser, argv)
    cuda = device.type == "cuda"
    if args.quick:
        seqlens, heads, topk = [256, 512], 4, 64
    else:
        seqlens = [4096, 16384, 32768, 65536, 131072] if cuda else [4096, 16384]
        heads, topk = (128 if cuda else 16), 2048
    seqlens, heads = args.seqlens or seqlens, args.heads or heads
    topk, batch = args.topk or topk, args.batch or (4 if cuda else 1)
    timer = harness.Timer(device, warmup=1 if args.quick else None,
                          repeats=3 if args.quick else None)
    print(f"device: {harness.device_name(device)}; torch {torch.__version__}")

    results = []
    # A tick per timed impl: prefill runs four (indexer, sparse_attn, two dense), decode three.
    with tqdm(total=7 * len(seqlens), desc="sparse", unit="run", dynamic_ncols=True) as progress:
        run = harness.CaseRunner(timer, not args.no_memory, progress, DTYPE)
        for seqlen in seqlens:
            results += prefill_case(run, device, seqlen, heads, topk)
            results += decode_case(run, device, batch, seqlen, heads, topk)
            if cuda:
                torch.cuda.empty_cache()

    rows = harness.ratio_rows(results, OURS, IMPLS, CASE_FIELDS)
    prefill_rows = [r for r in rows if r["mode"] == PREFILL]
    decode_rows = [r for r in rows if r["mode"] == DECODE]
    print(prefill_table(prefill_rows))
    print(decode_table(decode_rows))
    print("x vs <peer> = peer time / DSA time (> 1 means DSA is faster); dsa = indexer + sparse")
    harness.report_failures(results)
    goal_records = harness.report_goals(goals(prefill_rows, decode_rows, device))

    path = harness.results_path(args.out, device, "sparse")
    harness.write_json(results, device, path, extra={
        "benchmark": "bench_sparse.py", "threads": torch.get_num_threads(), "heads": heads,
        "topk": topk, "decode_batch": batch, "index_heads": INDEX_HEADS, "index_dim": INDEX_DIM,
        "indexer_dtype": str(DTYPE).split(".")[-1],
        "indexer_dtype_reason": "bf16 as in DeepSeek-V3.2; the CPU indexer computes in fp32 "
                                "tiles either way, fp32 inputs were no faster",
        "goals": goal_records})
    plot(results, path.replace(".json", ".png"),
         f"DeepSeek Sparse Attention vs dense, Hq = {heads}, topk = {topk}, decode B = {batch}"
         f" — {harness.device_name(device)}")
    print(f"wrote {path} and {path.replace('.json', '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
