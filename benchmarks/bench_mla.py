"""MLA absorbed decode (`mla_decode`) beside its peers, same run, same device (SPEC §7).

Decode of Sq new tokens per sequence over a paged latent cache (64-token pages, shuffled), bf16
and FP8 (656-byte) rows, H query heads. Peers: a plain PyTorch absorbed implementation (gather
the pages, dequantise, two einsums in fp32) and SDPA over per-head K/V expanded to MHA's
192/128 dims (what the cache would cost without MLA; skipped where it would not fit in memory).
GB/s counts the cache bytes read, beside a copy of the same bytes measured in the same run.
Also prints the KV-cache bytes per token of MHA, GQA-8, MLA bf16 and MLA FP8, and prefill
tokens/s of nn.MultiHeadLatentAttention (causal forward without a cache: the naive path through
flash_attn_func and the fused latent epilogue) beside the same module with SDPA as its attention.

    python benchmarks/bench_mla.py            # the sweep for the best device
    python benchmarks/bench_mla.py --quick    # a smoke run

Writes benchmarks/results/<device>-mla.json and a PNG beside it.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from deepseek_attn import MLAKVCache, mla_decode  # noqa: E402
from deepseek_attn.nn import MultiHeadLatentAttention  # noqa: E402
from deepseek_attn.mla import FP8_ROW_BYTES, LATENT_DIM, LATENT_VALUES  # noqa: E402
from deepseek_attn.reference import dequantize_latent_fp8_ref  # noqa: E402

OURS = "deepseek_attn"
TORCH_ABSORBED = "torch-absorbed"
SDPA_MHA = "sdpa-mha-expanded"
SDPA_MODULE = "module-with-sdpa"
NOPE, ROPE, V_DIM = 128, 64, 128  # DeepSeek-V3's per-head dims (SPEC §3)
MHA_BYTES_LIMIT = 4 * 2**30


def torch_absorbed_decode(q, kv_cache, block_table, cache_seqlens, scale, fp8):
    """The peer: every sequence's pages gathered (padded to the longest), FP8 rows dequantised,
    scores and values as two fp32 einsums with a length mask, bottom-right causal."""
    page_size = kv_cache.shape[1]
    longest = int(cache_seqlens.max())
    pages = block_table[:, : -(-longest // page_size)].long()
    rows = kv_cache[pages].flatten(1, 2)[:, :longest, 0]  # (B, L, row)
    rows = dequantize_latent_fp8_ref(rows.view(torch.uint8)) if fp8 else rows.float()
    scores = torch.einsum("bqhd,bld->bhql", q.float(), rows) * scale
    keys = torch.arange(longest, device=q.device)
    limit = cache_seqlens[:, None].long() - q.shape[1] + torch.arange(q.shape[1], device=q.device)
    masked = keys[None, None, :] > limit[:, :, None]  # (B, Sq, L)
    scores = scores.masked_fill(masked[:, None], float("-inf"))
    out = torch.einsum("bhql,bld->bqhd", torch.softmax(scores, dim=-1), rows[..., :LATENT_VALUES])
    return out.to(q.dtype)


def decode_case(device, batch, heads, seqlen_q, length, fp8, timer):
    generator = torch.Generator().manual_seed(0)
    cache = MLAKVCache(batch, length, page_size=64, fp8=fp8, device=device)
    order = torch.randperm(cache.kv_cache.shape[0], generator=generator).int().to(device)
    cache.block_table = order[cache.block_table.flatten().long()].view_as(cache.block_table)
    chunk = 4096  # append in chunks: the FP8 packing's temporaries stay small
    for begin in range(0, length, chunk):
        tokens = min(chunk, length - begin)
        cache.append(torch.randn(batch, tokens, LATENT_VALUES, device=device),
                     torch.randn(batch, tokens, LATENT_DIM - LATENT_VALUES, device=device))
    q = torch.randn(batch, seqlen_q, heads, LATENT_DIM, device=device, dtype=torch.bfloat16) * 0.3
    scale = (NOPE + ROPE) ** -0.5
    shape = dict(B=batch, H=heads, Sq=seqlen_q, L=length, cache="fp8" if fp8 else "bf16")
    cache_bytes = batch * length * cache.bytes_per_token
    dtype = "fp8" if fp8 else "bfloat16"
    results = []

    def record(impl, ms, moved=cache_bytes, error=None):
        gbps = moved / ms / 1e6 if ms else None
        results.append(harness.Result(op="mla_decode", impl=impl, mode="decode", dtype=dtype,
                                      shape=shape, ms=ms, gbps=gbps, error=error))

    args = (q, cache.kv_cache, cache.block_table, cache.cache_seqlens)
    record(OURS, timer(lambda: mla_decode(*args, softmax_scale=scale, causal=True,
                                          is_fp8_kvcache=fp8)))
    record(TORCH_ABSORBED, timer(lambda: torch_absorbed_decode(*args, scale, fp8)))
    used = cache.kv_cache.view(torch.uint8).flatten()[:cache_bytes]
    record("device-copy", timer(lambda: used.clone()))
    mha_bytes = batch * heads * length * (NOPE + ROPE + V_DIM) * 2
    if mha_bytes <= MHA_BYTES_LIMIT and not fp8:
        k = torch.randn(batch, heads, length, NOPE + ROPE, device=device, dtype=torch.bfloat16)
        v = torch.randn(batch, heads, length, V_DIM, device=device, dtype=torch.bfloat16)
        q_mha = torch.randn(batch, heads, seqlen_q, NOPE + ROPE, device=device,
                            dtype=torch.bfloat16)
        record(SDPA_MHA, timer(lambda: F.scaled_dot_product_attention(q_mha, k, v, scale=scale)),
               moved=mha_bytes)
        del k, v
    elif not fp8:
        record(SDPA_MHA, None, error=f"MHA K/V would take {mha_bytes / 2**30:.1f} GiB")
    return results


class SdpaMultiHeadLatentAttention(MultiHeadLatentAttention):
    """The prefill peer: the same module and weights, SDPA as its causal attention."""

    def _naive_attention(self, q, latent):
        k, v = self.expand_latent(latent)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=True,
                                             scale=self.softmax_scale)
        return out.transpose(1, 2)


def prefill_cases(device, config, lengths, timer):
    """Prefill tokens/s of the module and of its SDPA twin (same weights), bf16, batch 1."""
    torch.manual_seed(0)
    ours = MultiHeadLatentAttention(**config, device=device, dtype=torch.bfloat16)
    peer = SdpaMultiHeadLatentAttention(**config, device=device, dtype=torch.bfloat16)
    peer.load_state_dict(ours.state_dict())
    results = []
    for length in tqdm(lengths, desc="prefill", unit="case", dynamic_ncols=True):
        x = torch.randn(1, length, config["dim"], device=device, dtype=torch.bfloat16)
        shape = dict(B=1, S=length, **{k: config[k] for k in ("dim", "n_heads", "q_lora_rank")})
        for impl, module in ((OURS, ours), (SDPA_MODULE, peer)):
            with torch.no_grad():
                ms = timer(lambda: module(x))
            results.append(harness.Result(op="MultiHeadLatentAttention", impl=impl, mode="prefill",
                                          dtype="bfloat16", shape=shape, ms=ms,
                                          tokens_per_s=length / ms * 1e3))
    return results


def bytes_per_token_table(layers=61, heads=128):
    """KV-cache bytes per token per layer, and for a 61-layer DeepSeek-V3-sized model."""
    per_layer = {"MHA (128 heads, K 192 + V 128, bf16)": heads * (NOPE + ROPE + V_DIM) * 2,
                 "GQA-8 (8 kv heads, 128 + 128, bf16)": 8 * 256 * 2,
                 "MLA bf16 (576 values)": LATENT_DIM * 2,
                 "MLA FP8 (SPEC §3 row)": FP8_ROW_BYTES}
    return [[name, value, value * layers] for name, value in per_layer.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--heads", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        batches, lengths = [1, 16, 64, 128], [1024, 4096, 16384, 65536]
    else:
        batches, lengths = [1, 16], [1024, 4096]
    # DeepSeek-V3's attention layer on a GPU; fewer heads and a narrower model on a CPU.
    prefill_config = dict(dim=7168, n_heads=128, q_lora_rank=1536, max_seq_len=16384)
    prefill_lengths = [4096, 8192]
    if device.type != "cuda":
        prefill_config = dict(dim=2048, n_heads=16, q_lora_rank=512, max_seq_len=4096)
        prefill_lengths = [1024, 2048]
    if args.quick:
        batches, lengths, prefill_lengths = [1], [1024], [256]
    batches, lengths = args.batches or batches, args.lengths or lengths
    timer = harness.Timer(device, warmup=1 if args.quick else None,
                          repeats=3 if args.quick else None)
    print(f"device: {harness.device_name(device)}; torch {torch.__version__}")

    cases = [(b, sq, length, fp8) for fp8 in (False, True) for b in batches for sq in (1, 2)
             for length in lengths]
    results = []
    for batch, seqlen_q, length, fp8 in tqdm(cases, desc="mla_decode", unit="case",
                                             dynamic_ncols=True):
        results += decode_case(device, batch, args.heads, seqlen_q, length, fp8, timer)

    rows = []
    for case in cases:
        batch, seqlen_q, length, fp8 = case
        impls = {r.impl: r for r in results if (r.shape["B"], r.shape["Sq"], r.shape["L"],
                                                r.shape["cache"]) ==
                 (batch, seqlen_q, length, "fp8" if fp8 else "bf16")}
        ours, copy = impls[OURS], impls["device-copy"]
        peer = impls[TORCH_ABSORBED]
        mha = impls.get(SDPA_MHA)
        rows.append([impls[OURS].shape["cache"], batch, seqlen_q, length, ours.ms, ours.gbps,
                     ours.gbps / copy.gbps, peer.ms / ours.ms,
                     mha.ms / ours.ms if mha and mha.ms else None])
    print(harness.format_table(["cache", "B", "Sq", "L", "ours ms", "GB/s", "of copy",
                                f"x vs {TORCH_ABSORBED}", f"x vs {SDPA_MHA}"], rows))
    print("x vs <peer> = peer time / our time (> 1 means we are faster)")
    prefill = prefill_cases(device, prefill_config, prefill_lengths, timer)
    prefill_rows = []
    for length in prefill_lengths:
        ours, peer = [r for r in prefill if r.shape["S"] == length]
        prefill_rows.append([length, ours.ms, ours.tokens_per_s, peer.tokens_per_s,
                             peer.ms / ours.ms])
    print(harness.format_table(["prefill S", "ours ms", "ours tokens/s", f"{SDPA_MODULE} tokens/s",
                                f"x vs {SDPA_MODULE}"], prefill_rows))
    results += prefill
    table = bytes_per_token_table()
    print(harness.format_table(["KV cache", "bytes/token/layer", "bytes/token (61 layers)"],
                               table))

    path = harness.results_path(args.out, device, "mla")
    harness.write_json(results, device, path, extra={"benchmark": "bench_mla.py",
                                                     "heads": args.heads,
                                                     "prefill_config": prefill_config,
                                                     "bytes_per_token": table})
    plot(rows, path.replace(".json", ".png"), harness.device_name(device))
    print(f"wrote {path} and {path.replace('.json', '.png')}")
    return 0


def plot(rows, path, device_label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 4))
    labels = [f"{r[0]} B{r[1]} q{r[2]} L{r[3] // 1024}k" for r in rows]
    axis.bar(range(len(rows)), [r[7] for r in rows], color="tab:blue")
    axis.axhline(1.0, color="gray", linewidth=0.8)
    axis.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    axis.set_ylabel(f"speed-up vs {TORCH_ABSORBED}")
    axis.set_title(f"mla_decode, H = 128 — {device_label}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
