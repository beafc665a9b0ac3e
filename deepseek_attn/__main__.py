"""`python -m deepseek_attn`: what was built, a self-check of every op, a short benchmark.

Exit status 0 when every registered op matches its reference on the best available device.
"""

import argparse
import math
import sys

import torch
import torch.nn.functional as F

import deepseek_attn
from deepseek_attn.testing import Timer, spec6_error_ratio
from deepseek_attn import _C
from deepseek_attn.reference import (attention_ref, fp8_gemm_ref, quantize_act_ref,
                                     quantize_weight_ref)

NAMESPACE = "deepseek_attn"


def registered_ops():
    return sorted(name for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith(NAMESPACE + "::"))


def has_kernel(op_name, dispatch_key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(op_name, dispatch_key)


def best_device(op_name):
    if torch.cuda.is_available() and has_kernel(op_name, "CUDA"):
        return torch.device("cuda")
    return torch.device("cpu")


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def build_report():
    print(f"deepseek_attn {deepseek_attn.__version__}  (torch {torch.__version__}, "
          f"torch CUDA {torch.version.cuda or 'none'})")
    if _C.with_cuda:
        print(f"built with CUDA sources for archs {_C.cuda_archs}")
    else:
        print("built CPU-only (no CUDA sources compiled)")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        print(f"GPU: {torch.cuda.get_device_name()} (sm_{major}{minor})")
    else:
        print("GPU: none visible")
    print(f"CPU threads: {torch.get_num_threads()}")
    print(f"CPU tiles: {_C.cpu_tile_plan()}")
    print()
    rows = [(name, "yes" if has_kernel(name, "CPU") else "no",
             "yes" if has_kernel(name, "CUDA") else "no") for name in registered_ops()]
    print_table(["op", "CPU kernel", "CUDA kernel"], rows)
    print()


def check_flash_attn(device, backward):
    """Forward (out, lse) or backward (dq, dk, dv) of flash_attn_func on a few SPEC §1 cases."""
    dtypes = [torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.float32,
                                                                             torch.bfloat16]
    cases = [dict(shape=(2, 77, 4, 2, 64, 64), causal=True, window_size=(-1, -1), softcap=0.0),
             dict(shape=(1, 130, 6, 3, 128, 128), causal=False, window_size=(32, 16), softcap=0.0),
             dict(shape=(1, 65, 2, 2, 192, 128), causal=True, window_size=(-1, -1), softcap=5.0)]
    worst = 0.0
    for dtype in dtypes:
        for case in cases:
            batch, seqlen, heads_q, heads_kv, dim, dim_v = case["shape"]
            options = {k: case[k] for k in ("causal", "window_size", "softcap")}
            generator = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(batch, seqlen, h, d, generator=generator).to(device, dtype)
                       .requires_grad_() for h, d in ((heads_q, dim), (heads_kv, dim),
                                                      (heads_kv, dim_v)))
            out = deepseek_attn.flash_attn_func(q, k, v, **options)
            same, _ = attention_ref(q, k, v, **options)
            exact_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
            exact, _ = attention_ref(*exact_inputs, **options)
            if not backward:
                worst = max(worst, spec6_error_ratio(out, same, exact, factor=2))
                continue
            dout = torch.randn_like(out)
            ours = torch.autograd.grad(out, (q, k, v), dout)
            pytorch = torch.autograd.grad(same, (q, k, v), dout)
            exact_grads = torch.autograd.grad(exact, exact_inputs, dout.double())
            for a, b, c in zip(ours, pytorch, exact_grads):
                worst = max(worst, spec6_error_ratio(a, b, c, factor=3))
    return worst


def check_attention_core(device):
    """The core forward over a paged cache with token lists, and over the FP8 latent cache with
    the causal band: SPEC §6 error ratio against the fp64 reference."""
    from deepseek_attn.core import attention_core_fwd
    from deepseek_attn.reference import attention_core_ref, quantize_latent_fp8_ref

    generator = torch.Generator().manual_seed(4)
    randn = lambda *shape: torch.randn(*shape, generator=generator)
    table = torch.randperm(12, generator=generator)[:12].view(2, 6).int()
    lengths = torch.tensor([90, 37], dtype=torch.int32)
    indices = torch.randint(-1, 37, (2, 3, 2, 20), generator=generator).int()
    latent = quantize_latent_fp8_ref(randn(12, 16, 1, 576))
    cases = [(randn(2, 3, 8, 64), randn(12, 16, 2, 64), randn(12, 16, 2, 64),
              dict(indices=indices)),
             (randn(2, 3, 8, 576) * 0.3, latent, None, dict(causal=True))]
    worst = 0.0
    for q, k, v, options in cases:
        options.update(block_table=table, cache_seqlens=lengths)
        q = q.to(torch.bfloat16)
        k = k if k.dtype == torch.uint8 else k.to(torch.bfloat16)
        v = v.to(torch.bfloat16) if v is not None else None
        on_device = {name: value.to(device) if torch.is_tensor(value) else value
                     for name, value in options.items()}
        out, _ = attention_core_fwd(q.to(device), k.to(device),
                                    v.to(device) if v is not None else None, **on_device)
        same, _ = attention_core_ref(q, k, v, **options, dtype=torch.bfloat16)
        exact, _ = attention_core_ref(q, k, v, **options)
        worst = max(worst, spec6_error_ratio(out.cpu(), same, exact, factor=2))
    return worst


def _bitwise_mismatch_ratio(payload, scales, expected_payload, expected_scales):
    """0 when the e4m3 payload and the scales match the reference bit for bit, else inf."""
    same_payload = torch.equal(payload.cpu().view(torch.uint8), expected_payload.view(torch.uint8))
    same_scales = torch.equal(scales.cpu(), expected_scales)
    return 0.0 if same_payload and same_scales else float("inf")


def check_quantize_act(device):
    worst = 0.0
    for dtype in (torch.float32, torch.bfloat16):
        for ue8m0 in (False, True):
            x = torch.randn(37, 1000, generator=torch.Generator().manual_seed(1)).to(dtype)
            payload, scales = deepseek_attn.quantize_act(x.to(device), 128,
                                                         "ue8m0" if ue8m0 else None)
            worst = max(worst, _bitwise_mismatch_ratio(payload, scales,
                                                       *quantize_act_ref(x, 128, ue8m0)))
    return worst


def check_quantize_weight(device):
    w = torch.randn(300, 520, generator=torch.Generator().manual_seed(2)) * 0.02
    payload, scales = deepseek_attn.quantize_weight(w.to(device))
    return _bitwise_mismatch_ratio(payload, scales, *quantize_weight_ref(w))


def check_fp8_gemm(device):
    """SPEC §6 FP8 rule against the dequantised reference: difference / 1e-3."""
    generator = torch.Generator().manual_seed(3)
    a, a_scales = quantize_act_ref(torch.randn(70, 1000, generator=generator))
    b, b_scales = quantize_weight_ref(torch.randn(300, 1000, generator=generator))
    out = deepseek_attn.fp8_gemm(a.to(device), a_scales.to(device), b.to(device),
                                 b_scales.to(device), torch.float32).cpu().double()
    reference = fp8_gemm_ref(a, a_scales, b, b_scales, torch.float32).double()
    difference = 1 - 2 * (out * reference).sum() / (out * out + reference * reference).sum()
    return difference.item() / 1e-3


def check_mla_norm_rope(device, backward):
    """The fused latent epilogue on [c_kv | k_pe] rows (bf16): y, or (dx, dweight), against
    RMSNorm and interleaved RoPE of reference/mla.py (SPEC §6 rule), and its FP8 cache rows
    against SPEC §3's quantisation of y (bitwise: 0, or inf)."""
    from deepseek_attn.mla import mla_norm_rope
    from deepseek_attn.reference import (quantize_latent_fp8_ref, rms_norm_ref,
                                         rope_interleaved_ref, yarn_inv_freq)

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 9, 576, generator=generator).to(torch.bfloat16)
    weight = (1 + 0.2 * torch.randn(512, generator=generator)).to(torch.bfloat16)
    positions = torch.arange(3, 12)[None]
    inv_freq = yarn_inv_freq(64, 10000.0, 163840, 4096, 40.0, 32, 1)
    angles = positions[..., None].double() * inv_freq

    def reference(x, weight):
        return torch.cat([rms_norm_ref(x[..., :512], weight, 1e-6),
                          rope_interleaved_ref(x[..., 512:], positions, inv_freq)], dim=-1)

    x_device = x.to(device).requires_grad_(backward)
    weight_device = weight.to(device).requires_grad_(backward)
    cache, slots = torch.zeros(12, 656, dtype=torch.uint8, device=device), torch.arange(9) + 2
    y = mla_norm_rope(x_device, weight_device, angles.cos().float().to(device),
                      angles.sin().float().to(device), 1e-6, cache, slots.to(device))
    inputs = [t.detach().requires_grad_() for t in (x, weight)]
    exact_inputs = [t.detach().double().requires_grad_() for t in (x, weight)]
    same, exact = reference(*inputs), reference(*exact_inputs)
    if not backward:
        packed = quantize_latent_fp8_ref(y.detach().cpu()[0])
        cache_ratio = 0.0 if torch.equal(cache.cpu()[2:11], packed) else float("inf")
        return max(spec6_error_ratio(y.detach().cpu(), same, exact, factor=2), cache_ratio)
    dy = torch.randn(y.shape, generator=generator).to(torch.bfloat16)
    ours = torch.autograd.grad(y, (x_device, weight_device), dy.to(device))
    pytorch = torch.autograd.grad(same, inputs, dy)
    exact_grads = torch.autograd.grad(exact, exact_inputs, dy.double())
    return max(spec6_error_ratio(a.cpu(), b, c, factor=3)
               for a, b, c in zip(ours, pytorch, exact_grads))


def check_sparse_attn_bwd(device, block_size=None):
    """Gradients of sparse_attn (GQA token lists with -1 slots and a duplicated key) or, with a
    block_size, of block_sparse_attn (causal, lists of blocks, one duplicated) against the
    masked dense formula of reference/core.py: SPEC §6 error ratio, factor 3."""
    from deepseek_attn.reference import attention_core_ref

    generator = torch.Generator().manual_seed(6)
    seqlen_k = 9 if block_size is None else 40
    q = torch.randn(2, 9, 4, 64, generator=generator).to(torch.bfloat16)
    k, v = (torch.randn(2, seqlen_k, 2, 64, generator=generator).to(torch.bfloat16)
            for _ in range(2))
    buckets = seqlen_k if block_size is None else math.ceil(seqlen_k / block_size)
    indices = torch.randint(-1, buckets, (2, 9, 2, 12 if block_size is None else 3),
                            generator=generator, dtype=torch.int32)
    indices[1, 3, 0, :2] = 2
    inputs = [t.to(device).requires_grad_() for t in (q, k, v)]
    same_inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    exact_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    dout = torch.randn(2, 9, 4, 64, generator=generator).to(torch.bfloat16)
    if block_size is None:
        out = deepseek_attn.sparse_attn(*inputs, indices.to(device))
        lists = dict(indices=indices)
    else:
        out = deepseek_attn.block_sparse_attn(*inputs, indices.to(device), block_size)
        lists = dict(indices=indices, index_block_size=block_size, causal=True)
    ours = torch.autograd.grad(out, inputs, dout.to(device))
    same = torch.autograd.grad(attention_core_ref(*same_inputs, **lists, dtype=torch.bfloat16)[0],
                               same_inputs, dout)
    exact = torch.autograd.grad(attention_core_ref(*exact_inputs, **lists)[0], exact_inputs,
                                dout.double())
    return max(spec6_error_ratio(a.cpu(), b, c, factor=3) for a, b, c in zip(ours, same, exact))


def check_indexer(device, what):
    """The lightning indexer on bf16 inputs (4 heads of 64, 9 queries, 40 keys, causal): logits
    against reference/sparse.py's fp64 formula (max error / 1e-3 of their range), their
    gradients against autograd through it (relative error / 2e-2: dz is rounded to bf16 on
    CUDA), or the top-k against a stable sort of the op's own logits (0, or inf)."""
    from deepseek_attn import sparse
    from deepseek_attn.reference import indexer_logits_ref, indexer_topk_ref

    generator = torch.Generator().manual_seed(7)
    q, k, w = (torch.randn(*shape, generator=generator) for shape in ((1, 9, 4, 64), (1, 40, 64),
                                                                         (1, 9, 4)))
    q, k = q.to(torch.bfloat16), k.to(torch.bfloat16)
    inputs = [t.to(device).requires_grad_(what == "backward") for t in (q, k, w)]
    logits = sparse.indexer_logits(*inputs)
    if what == "topk":
        topk = sparse.indexer_topk(*inputs[:3], topk=16).cpu()
        return 0.0 if torch.equal(topk, indexer_topk_ref(logits.detach().cpu(), 16)) else math.inf
    exact_inputs = [t.detach().double().requires_grad_() for t in (q, k, w)]
    exact = indexer_logits_ref(*exact_inputs)
    visible = torch.isfinite(exact)
    if what == "forward":
        error = (logits.detach().cpu().double()[visible] - exact[visible]).abs().max()
        return error.item() / (1e-3 * exact[visible].abs().max().item())
    upstream = torch.randn(exact.shape, generator=generator).masked_fill(~visible, 0)
    ours = torch.autograd.grad(logits, inputs, upstream.to(device))
    theirs = torch.autograd.grad(exact.masked_fill(~visible, 0), exact_inputs, upstream.double())
    return max(((a.cpu().double() - b).abs().max() / b.abs().max()).item() / 2e-2
               for a, b in zip(ours, theirs))


SELF_CHECKS = {
    f"{NAMESPACE}::indexer_logits": lambda device: check_indexer(device, "forward"),
    f"{NAMESPACE}::indexer_logits_bwd": lambda device: check_indexer(device, "backward"),
    f"{NAMESPACE}::indexer_topk": lambda device: check_indexer(device, "topk"),
    f"{NAMESPACE}::sparse_attn_bwd": check_sparse_attn_bwd,
    f"{NAMESPACE}::block_sparse_attn_bwd": lambda device: check_sparse_attn_bwd(device, 16),
    f"{NAMESPACE}::mla_norm_rope": lambda device: check_mla_norm_rope(device, backward=False),
    f"{NAMESPACE}::mla_norm_rope_bwd": lambda device: check_mla_norm_rope(device, backward=True),
    f"{NAMESPACE}::attention_core_fwd": check_attention_core,
    f"{NAMESPACE}::quantize_act": check_quantize_act,
    f"{NAMESPACE}::quantize_weight": check_quantize_weight,
    f"{NAMESPACE}::fp8_gemm": check_fp8_gemm,
    f"{NAMESPACE}::flash_attn_fwd": lambda device: check_flash_attn(device, backward=False),
    f"{NAMESPACE}::flash_attn_bwd": lambda device: check_flash_attn(device, backward=True),
}


def self_check():
    rows, all_passed = [], True
    for name in registered_ops():
        device = best_device(name)
        check = SELF_CHECKS.get(name)
        if check is None:
            rows.append((name, device.type, "-", "FAIL (no self-check written for this op)"))
            all_passed = False
            continue
        try:
            ratio = check(device)
            passed = ratio <= 1.0
            rows.append((name, device.type, f"{ratio:.3f}", "pass" if passed else "FAIL"))
        except Exception as error:  # a crash is a failed check, reported in the table
            passed = False
            rows.append((name, device.type, "-", f"FAIL ({type(error).__name__}: {error})"))
        all_passed &= passed
    print("self-check against deepseek_attn.reference (error / SPEC §6 bound, <= 1 passes)")
    print_table(["op", "device", "error/bound", "result"], rows)
    print()
    return all_passed


def short_benchmark(seqlen):
    device = best_device(f"{NAMESPACE}::flash_attn_fwd")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    heads, dim = 16, 128
    batch = max(1, 8192 // seqlen) if device.type == "cuda" else 1
    make = lambda *shape: torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
    ours = [make(batch, seqlen, heads, dim) for _ in range(3)]
    peer = [make(batch, heads, seqlen, dim) for _ in range(3)]
    forward_flops = 2 * batch * heads * 2 * dim * seqlen * (seqlen + 1) / 2
    run_ours = lambda: deepseek_attn.flash_attn_func(*ours, causal=True)
    run_peer = lambda: F.scaled_dot_product_attention(*peer, is_causal=True)
    rows = []
    timer = Timer(device, warmup=1, repeats=5)
    for mode, factor in (("fwd", 1.0), ("fwd+bwd", 3.5)):
        def timed(run, inputs):
            if mode == "fwd":
                with torch.no_grad():
                    return timer(run)
            return timer(lambda: run().sum().backward())

        ours_ms, peer_ms = timed(run_ours, ours), timed(run_peer, peer)
        gflops = lambda ms: f"{forward_flops * factor / ms / 1e6:.1f}"
        rows.append((mode, f"{ours_ms:.2f}", gflops(ours_ms), f"{peer_ms:.2f}", gflops(peer_ms),
                     f"{peer_ms / ours_ms:.2f}x"))
    print(f"short benchmark: causal attention, {device.type}, {str(dtype)[6:]}, B={batch}, "
          f"S={seqlen}, H={heads}, D={dim} (full sweep: benchmarks/bench_attention.py)")
    print_table(["mode", "ours ms", "ours GFLOP/s", "SDPA ms", "SDPA GFLOP/s",
                 "speed-up vs SDPA"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m deepseek_attn", description=__doc__)
    parser.add_argument("--no-bench", action="store_true", help="skip the short benchmark")
    parser.add_argument("--seqlen", type=int, default=2048, help="benchmark sequence length")
    args = parser.parse_args(argv)
    build_report()
    passed = self_check()
    if not args.no_bench:
        short_benchmark(args.seqlen)
    if not passed:
        print("SELF-CHECK FAILED", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
