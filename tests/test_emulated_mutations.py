"""Mutation tests: deliberately broken variants of our kernels that the emulator must catch, by
a report (race, missing wait, out of bounds, deadlock, misalignment, uninitialised read) or by
a wrong answer against the reference. Each mutant is the real source with one edit, built into
its own module (tests/emulation/build.py recompiles only the named instantiation).
"""

import os

import pytest
import torch

from deepseek_attn.testing import assert_spec6_close
from test_attention import Case, reference_pair
from deepseek_attn.reference import fp8_gemm_ref, quantize_weight_ref

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
WRONG_ANSWER = "wrong answer"
BUILD_FAILS = "build: "  # prefix of an expected compile error (a static_assert catches it)


class Mutation:
    def __init__(self, name, path, old, new, rebuild, run, expect, arch=80):
        self.name, self.path, self.old, self.new = name, path, old, new
        self.rebuild, self.run, self.expect, self.arch = rebuild, run, expect, arch

    def __repr__(self):
        return self.name

    def source(self):
        with open(os.path.join(CSRC, self.path)) as handle:
            text = handle.read()
        assert text.count(self.old) == 1, f"{self.name}: the mutated text must occur once in {self.path}"
        return text.replace(self.old, self.new)


def run_attention_forward(module, case=Case(200, 300, heads_q=4, heads_kv=2, head_dim=64)):
    q, k, v = case.inputs(torch.bfloat16, "cpu")
    # One SM: no split-KV, so the kernel's own epilogue runs (split-KV runs under test_emulated_kernels).
    out, lse = module.flash_attn_fwd(q, k, v, 64 ** -0.5, case.causal, -1, -1, 0.0, 1)
    (out_pt, _), (out_64, lse_64), _ = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    torch.testing.assert_close(lse.double(), lse_64.double(), atol=1e-3, rtol=1e-4)


def run_attention_backward(module):
    case = Case(150, 200, heads_q=4, heads_kv=2, head_dim=64, causal=True)
    q, k, v = case.inputs(torch.bfloat16, "cpu", requires_grad=True)
    out, lse = module.flash_attn_fwd(q.detach(), k.detach(), v.detach(), 64 ** -0.5, True, -1, -1,
                                     0.0, 108)
    (out_pt, _), (out_64, _), inputs_64 = reference_pair(case, q, k, v)
    dout = torch.randn_like(out)
    grads = module.flash_attn_bwd(dout, q.detach(), k.detach(), v.detach(), out, lse, 64 ** -0.5,
                                  True, -1, -1, 0.0, False)
    grads_pt = torch.autograd.grad(out_pt, (q, k, v), dout)
    grads_64 = torch.autograd.grad(out_64, inputs_64, dout.double())
    for name, ours, same, exact in zip(("dq", "dk", "dv"), grads, grads_pt, grads_64):
        assert_spec6_close(name, ours, same, exact, factor=3)


def run_fp8_gemm(module):
    a_fp8, a_scales = quantize_weight_ref(torch.randn(130, 384), 128)
    a_scales = a_scales.repeat_interleave(128, 0)[:130]  # 1x128 activation scales per row
    b_fp8, b_scales = quantize_weight_ref(torch.randn(70, 384) * 0.05, 128)
    out = module.fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    reference = fp8_gemm_ref(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    torch.testing.assert_close(out, reference, atol=1e-4 * reference.abs().max().item(), rtol=1e-4)


def run_hopper_attention_forward(module):
    """Four 128-key tiles: the 2-stage K/V ring is refilled twice."""
    case = Case(200, 400, heads_q=2, heads_kv=1, head_dim=128, causal=False)
    q, k, v = case.inputs(torch.bfloat16, "cpu")
    out, lse = module.flash_attn_fwd(q, k, v, 128 ** -0.5, False, -1, -1, 0.0, 1)
    assert module.last_kernel_name().startswith("flash_fwd_hopper_kernel<")
    (out_pt, _), (out_64, lse_64), _ = reference_pair(case, q, k, v)
    assert_spec6_close("out", out, out_pt, out_64, factor=2)
    torch.testing.assert_close(lse.double(), lse_64.double(), atol=1e-3, rtol=1e-4)


def run_hopper_fp8_gemm(module):
    """Five 128-wide K blocks: the 4-stage ring wraps."""
    a_fp8, a_scales = quantize_weight_ref(torch.randn(130, 640), 128)
    a_scales = a_scales.repeat_interleave(128, 0)[:130]
    b_fp8, b_scales = quantize_weight_ref(torch.randn(200, 640) * 0.05, 128)
    out = module.fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    assert module.last_kernel_name().startswith("fp8_gemm_hopper_kernel<")
    reference = fp8_gemm_ref(a_fp8, a_scales, b_fp8, b_scales, torch.float32)
    torch.testing.assert_close(out, reference, atol=1e-4 * reference.abs().max().item(), rtol=1e-4)


def run_quantize_weight(module):
    w = torch.randn(300, 200)
    payload, scales = module.quantize_weight(w, 128, False)
    ref_payload, ref_scales = quantize_weight_ref(w, 128)
    assert torch.equal(scales, ref_scales)
    assert torch.equal(payload.view(torch.uint8), ref_payload.view(torch.uint8))


def run_norm_rope_fp8_cache_write(module):
    """The latent epilogue's FP8 cache rows against SPEC §3's quantisation of its own y rows."""
    from deepseek_attn.reference.core import quantize_latent_fp8_ref
    from test_mla import norm_rope_inputs

    x, weight, cos, sin = norm_rope_inputs(20, 1, 576, 512, 64, torch.bfloat16)
    cache = torch.zeros(24, 656, dtype=torch.uint8)
    y, _ = module.mla_norm_rope(x, weight, cos, sin, 1e-6, cache, torch.arange(20) + 2)
    assert torch.equal(cache[2:22], quantize_latent_fp8_ref(y[:, 0]))


def run_balanced_mla_decode(module):
    from test_emulated_mla import check_balanced_decode

    check_balanced_decode(module, False, 5)


def run_core_forward(case):
    """The core forward on the emulated module against the fp64 reference (test_core.py)."""
    from test_core import check_core_forward
    from test_emulated_core import emulated_core

    return lambda module: check_core_forward(emulated_core(module, sm_count=1), case,
                                             torch.bfloat16, "cpu")


def core_cases():
    from test_core import CoreCase, latent_case

    return {"fp8_band": latent_case("band", batch=1, seqlen_k=300)[1],
            "causal_tokens": CoreCase("dense", "tokens", seqlen_q=5, causal=True, num_indices=40),
            "dense_blocks": CoreCase("dense", "blocks", causal=True, seqlen_q=20, seqlen_k=100,
                                     num_indices=3, index_block_size=16)}


CORE_SOURCE = "core/kernels/sm80/core_fwd.cuh"
FWD = "core_fwd_rows_d64x64_bf16.cu"  # flash_attn's sm80 forward is the core's main loop
HOPPER_FWD = "flash_fwd_d128x128_bf16.cu"
HOPPER_FWD_SOURCE = "attention/kernels/sm90/flash_fwd.cuh"
BWD = "flash_bwd_d64x64_bf16.cu"
def run_indexer_topk(module):
    from test_emulated_sparse import test_emulated_indexer_topk_equals_sorted_logits

    test_emulated_indexer_topk_equals_sorted_logits(module, 50)


def run_indexer_topk_ties(module):
    from test_emulated_sparse import test_emulated_indexer_topk_ties_and_fp8

    test_emulated_indexer_topk_ties_and_fp8(module)


INDEXER_SOURCE = "sparse/kernels/indexer.cuh"
SPARSE_BWD_SOURCE = "sparse/kernels/sparse_bwd.cuh"
BLOCK_BWD_SOURCE = "sparse/kernels/block_bwd.cuh"


def run_latent_sparse_attn_backward(module):
    from test_emulated_sparse import test_emulated_sparse_attn_forward_and_backward

    test_emulated_sparse_attn_forward_and_backward(module, (1, 4, 90, 16, 1, 576, -1, 40),
                                                   torch.bfloat16)


def run_block_lists_of_several_tokens(module):
    from test_emulated_sparse import test_emulated_block_lists_of_several_tokens_share_a_tile

    test_emulated_block_lists_of_several_tokens_share_a_tile(module, 3)


def run_simt_block_backward(module):
    from test_emulated_sparse import test_emulated_block_sparse_bwd_of_other_block_sizes_matches_cpu

    test_emulated_block_sparse_bwd_of_other_block_sizes_matches_cpu(module, 8)


def run_block_sparse_backward(module):
    from test_emulated_sparse import test_emulated_block_sparse_attn_forward_and_backward

    test_emulated_block_sparse_attn_forward_and_backward(
        module, (2, 37, 150, 4, 2, 64, 64, 3, 16), torch.bfloat16)


def run_indexer_backward(module):
    from test_emulated_sparse import test_emulated_indexer_backward_matches_cpu

    test_emulated_indexer_backward_matches_cpu(
        module, (2, 7, 150, 20, 64, torch.bfloat16, True, [150, 5]))


def run_sparse_attn_backward(module):
    from test_emulated_sparse import test_emulated_sparse_attn_forward_and_backward

    test_emulated_sparse_attn_forward_and_backward(module, (2, 17, 40, 4, 2, 64, 64, 24),
                                                   torch.bfloat16)
NORM_ROPE_SOURCE = "mla/kernels/norm_rope.cuh"
MUTATIONS = [
    Mutation("balanced_pieces_share_a_slot", CORE_SOURCE,
             "run_piece(b, begin + lo - prefix, begin + hi - prefix, part + b);",
             "run_piece(b, begin + lo - prefix, begin + hi - prefix, part);",
             "core_fwd_latent_bf16.cu", run_balanced_mla_decode, WRONG_ANSWER),
    Mutation("balanced_combine_misses_the_last_part", CORE_SOURCE,
             "const int64_t last = end > begin ? (prefix + end - begin - 1) / per_part : first - 1;",
             "const int64_t last = end > begin ? (prefix + end - begin - 2) / per_part : first - 1;",
             "core_fwd_latent_bf16.cu", run_balanced_mla_decode, WRONG_ANSWER),
    Mutation("norm_rope_reads_y_back_without_syncwarp", NORM_ROPE_SOURCE,
             "  __syncwarp();  // the row's y values, written by every lane, are read back below\n",
             "", "norm_rope_bf16.cu", run_norm_rope_fp8_cache_write,
             r"global-memory race: load at offset \d+ of 'y' and a write by thread"),
    Mutation("indexer_ties_to_the_higher_key", INDEXER_SOURCE,
             "| uint64_t(~uint32_t(key));", "| uint64_t(uint32_t(key));",
             "indexer_d64_bf16.cu", run_indexer_topk_ties, WRONG_ANSWER),
    Mutation("indexer_topk_merges_too_late", INDEXER_SOURCE,
             "if (admitted[0] > capacity - kIndexerBlockKeys) merge();",
             "if (admitted[0] > capacity) merge();",
             "indexer_d64_bf16.cu", run_indexer_topk, "shared-memory race"),
    Mutation("indexer_reads_partial_sums_without_barrier", INDEXER_SOURCE,
             "2 * lane + c] = sum;\n      }\n    }\n    __syncthreads();\n",
             "2 * lane + c] = sum;\n      }\n    }\n",
             "indexer_d64_bf16.cu", run_indexer_topk, "shared-memory race"),
    Mutation("indexer_bwd_dk_skips_the_last_token", INDEXER_SOURCE,
             "key0 < keys ? f.seqlen_q - first_token : 0;",
             "key0 < keys ? f.seqlen_q - first_token - 1 : 0;",
             "indexer_d64_bf16.cu", run_indexer_backward, WRONG_ANSWER),
    Mutation("sparse_bwd_reads_gathered_rows_without_barrier", SPARSE_BWD_SOURCE,
             "      *reinterpret_cast<uint4*>(target) = *reinterpret_cast<const uint4*>(source);\n"
             "    }\n    __syncthreads();\n",
             "      *reinterpret_cast<uint4*>(target) = *reinterpret_cast<const uint4*>(source);\n"
             "    }\n",
             "sparse_bwd_latent_bf16.cu", run_latent_sparse_attn_backward,
             "which no thread has written|shared-memory race"),
    Mutation("block_bwd_dq_drops_delta", BLOCK_BWD_SOURCE,
             "[&](int, int e, float p, float dp) { return p * (dp - delta[e / 2]); });",
             "[&](int, int e, float p, float dp) { return p * dp; });",
             "sparse_bwd_d64x64_bf16.cu", run_sparse_attn_backward, WRONG_ANSWER),
    Mutation("sparse_bwd_dk_without_softmax_scale", SPARSE_BWD_SOURCE,
             "    sum *= p.scale;\n", "",
             "sparse_bwd_d64x64_bf16.cu", run_sparse_attn_backward, WRONG_ANSWER),
    Mutation("sparse_bwd_dkv_ignores_causality_inside_blocks", SPARSE_BWD_SOURCE,
             "    if (!p.sees(t, key)) continue;", "",
             "sparse_bwd_d64x64_bf16.cu", run_simt_block_backward, WRONG_ANSWER),
    Mutation("block_bwd_ignores_causality_inside_blocks", BLOCK_BWD_SOURCE,
             "key <= last_key[column];  // last_key < seqlen_k",
             "key < p.seqlen_k;",
             "sparse_bwd_d64x64_bf16.cu", run_block_sparse_backward, WRONG_ANSWER),
    Mutation("block_bwd_streams_one_block_of_a_cta", BLOCK_BWD_SOURCE,
             "const int buckets = int((key_end - 1) / block - first_bucket + 1);",
             "const int buckets = 1;",
             "sparse_bwd_d64x64_bf16.cu", run_block_sparse_backward, WRONG_ANSWER),
    Mutation("norm_rope_fp8_scale_of_one_lane", NORM_ROPE_SOURCE,
             "fp8_scale_from_amax(warp_amax(amax), true)", "fp8_scale_from_amax(amax, true)",
             "norm_rope_bf16.cu", run_norm_rope_fp8_cache_write, WRONG_ANSWER),
    Mutation("core_fp8_dequantised_with_the_wrong_scale", CORE_SOURCE,
             "4 * (column / LatentFp8Layout::kGroup)", "4 * (column / 256)",
             "core_fwd_latent_fp8_bf16.cu", run_core_forward(core_cases()["fp8_band"]), WRONG_ANSWER),
    Mutation("core_list_ignores_the_band", CORE_SOURCE,
             "if (key < 0 || !band.visible(token_of_row(row), key)) return false;",
             "if (key < 0) return false;", "core_fwd_rows_d64x64_bf16.cu",
             run_core_forward(core_cases()["causal_tokens"]), WRONG_ANSWER),
    Mutation("core_blocks_lose_causality_inside", CORE_SOURCE,
             "kListed || p.kv.block_table != nullptr ||", "p.kv.block_table != nullptr ||",
             "core_fwd_rows_d64x64_bf16.cu", run_core_forward(core_cases()["dense_blocks"]),
             WRONG_ANSWER),
    Mutation("core_list_union_ignores_copies", CORE_SOURCE,
             "if (count >= copy) {", "if (count > 0) {",
             "core_fwd_rows_d64x64_bf16.cu", run_block_lists_of_several_tokens, WRONG_ANSWER),
    Mutation("core_list_union_rows_use_the_first_tokens_list", CORE_SOURCE,
             "(lists.tokens[slot / p.selection.index_block_size] >> (row / heads)) & 1u;",
             "(lists.tokens[slot / p.selection.index_block_size] >> 0) & 1u;",
             "core_fwd_rows_d64x64_bf16.cu", run_block_lists_of_several_tokens, WRONG_ANSWER),
    Mutation("core_skips_a_partly_filled_warp", CORE_SOURCE,
             "const bool warp_has_rows = warp * 16 < work.rows;",
             "const bool warp_has_rows = warp * 16 + 16 <= work.rows;",
             "core_fwd_rows_d64x64_bf16.cu", run_core_forward(core_cases()["dense_blocks"]),
             WRONG_ANSWER),
    Mutation("core_column_groups_share_one_chunk", CORE_SOURCE,
             "const int column0 = (thread / 32 / Tile::kRowWarps) * kVColumns;",
             "const int column0 = 0;", "core_fwd_latent_fp8_bf16.cu",
             run_core_forward(core_cases()["fp8_band"]),
             r"(shared|global)-memory race: store"),
    Mutation("missing_syncthreads_before_stage_refill", CORE_SOURCE,
             "      __syncthreads();  // this stage is refilled by the prefetch two iterations on\n",
             "", FWD, run_attention_forward, r"shared-memory race: cp\.async overwrites"),
    Mutation("wait_group_1_where_0_is_needed", "common/cuda_mma.cuh",
             "  } else {\n    cp_async_wait<0>();", "  } else {\n    cp_async_wait<1>();",
             FWD, run_attention_forward, r"destination of a cp\.async .* has not landed"),
    Mutation("tile_load_reads_one_row_past_the_end", "core/kernels/sm80/tile_copy.cuh",
             "const bool valid = source_row < seqlen;", "const bool valid = source_row <= seqlen;",
             BWD, run_attention_backward, r"cp\.async source at 0x[0-9a-f]+ is \d+ bytes past the end of '"),
    Mutation("tail_mask_off_by_one", CORE_SOURCE,
             "tile_fully_visible(token_begin, token_end, slot0, slot0 + kBlockN)",
             "tile_fully_visible(token_begin, token_end, slot0, slot0 + kBlockN - 1)", FWD,
             lambda module: run_attention_forward(module, Case(100, 64 * 4 + 63, causal=False)),
             WRONG_ANSWER),
    Mutation("wrong_fragment_index", "core/kernels/sm80/tile_mma.cuh",
             "a[k][1] = pack_pair<kDType>(acc[2 * k][2], acc[2 * k][3]);",
             "a[k][1] = pack_pair<kDType>(acc[2 * k + 1][0], acc[2 * k + 1][1]);",
             FWD, run_attention_forward, WRONG_ANSWER),
    Mutation("barrier_in_divergent_code", CORE_SOURCE,
             "      T* out_tile = q_tile;\n      __syncthreads();",
             "      T* out_tile = q_tile;\n      if (warp == 0) __syncthreads();",
             FWD, run_attention_forward, r"barrier divergence"),
    Mutation("early_exit_before_a_barrier", CORE_SOURCE,
             "      T* out_tile = q_tile;\n      __syncthreads();",
             "      T* out_tile = q_tile;\n      if (warp == 3) return;\n      __syncthreads();",
             FWD, run_attention_forward, r"deadlock: __syncthreads is not reached by every thread"),
    Mutation("tile_pitch_breaks_16_byte_alignment", "core/kernels/sm80/tile_copy.cuh",
             "static constexpr int value = kDim + 8;", "static constexpr int value = kDim + 4;",
             FWD, run_attention_forward, r"misaligned"),
    Mutation("q_tile_never_loaded", CORE_SOURCE,
             "      cp_async_16(q_tile + row * Tile::kPitchQK + column, source, valid);\n",
             "", FWD, run_attention_forward, r"which no thread has written"),
    Mutation("dq_accumulated_without_atomics", "attention/kernels/sm80/flash_bwd.cuh",
             "      atomicAdd(target, part[0][e]);", "      *target += part[0][e];",
             BWD, run_attention_backward, r"global-memory race"),
    Mutation("gemm_missing_syncthreads_before_stage_refill", "fp8/kernels/sm80/gemm.cuh",
             "    __syncthreads();  // the stage is refilled by the prefetch of the next iteration\n",
             "", "gemm_out_fp32.cu", run_fp8_gemm, r"shared-memory race", arch=89),
    Mutation("gemm_sm80_wrong_k_half", "fp8/kernels/sm80/gemm.cuh",
             "        a[mt][2] = e4m3_pair_to_half2(row + 8);",
             "        a[mt][2] = e4m3_pair_to_half2(row + 16);",
             "gemm_out_fp32.cu", run_fp8_gemm, r"reads dynamic shared memory\+0x[0-9a-f]+, which no thread has written",
             arch=80),
    Mutation("quantizer_reads_warp_maxima_before_the_barrier", "fp8/kernels/quantize.cuh",
             "  if (threadIdx.x % 32 == 0) warp_maxima[threadIdx.x / 32] = amax;\n  __syncthreads();",
             "  if (threadIdx.x % 32 == 0) warp_maxima[threadIdx.x / 32] = amax;",
             "quantize_fp32.cu", run_quantize_weight, r"shared-memory race|which no thread has written"),
] + [  # Hopper (sm90a): the four, then one per other check the kernels could trip
    Mutation("sm90_attention_v_descriptor_lbo_sbo_swapped", HOPPER_FWD_SOURCE,
             "swizzle128_descriptor(v_tile + k * 16 * 128, Tile::kHalfBytes, 1024);",
             "swizzle128_descriptor(v_tile + k * 16 * 128, 1024, Tile::kHalfBytes);",
             HOPPER_FWD, run_hopper_attention_forward,
             WRONG_ANSWER, arch=90),
    Mutation("sm90_attention_consumer_waits_wrong_parity", HOPPER_FWD_SOURCE,
             "const uint32_t parity = uint32_t((use / Tile::kStages) & 1);",
             "const uint32_t parity = uint32_t(((use / Tile::kStages) & 1) ^ 1);",
             HOPPER_FWD, run_hopper_attention_forward,
             r"try_wait\.parity 1 .* before it completed any phase|an mbarrier wait never completes",
             arch=90),
    Mutation("sm90_attention_missing_wgmma_wait", HOPPER_FWD_SOURCE,
             "      wgmma_commit();\n      wgmma_wait_all();\n      wgmma_pin(scores);",
             "      wgmma_commit();\n      wgmma_pin(scores);",
             HOPPER_FWD, run_hopper_attention_forward,
             r"load of the accumulators of a wgmma in group 1 before a wgmma\.wait_group", arch=90),
    Mutation("sm90_attention_consumer_frees_stage_early", HOPPER_FWD_SOURCE,
             "      wgmma_commit();\n      wgmma_wait_all();\n      wgmma_pin(out_acc);\n"
             "      __syncwarp();\n      if (lane == 0) mbarrier_arrive(&kv_empty[stage]);",
             "      wgmma_commit();\n      __syncwarp();\n"
             "      if (lane == 0) mbarrier_arrive(&kv_empty[stage]);\n"
             "      wgmma_wait_all();\n      wgmma_pin(out_acc);",
             HOPPER_FWD, run_hopper_attention_forward,
             r"TMA write overwrites .* an operand of wgmma group \d+ of warpgroup [12] that it does "
             r"not know complete", arch=90),
    Mutation("sm90_gemm_consumer_frees_stage_early", "fp8/kernels/sm90/gemm.cuh",
             "    wgmma_commit();\n    wgmma_wait_all();\n    wgmma_pin(block);\n    __syncwarp();\n"
             "    if (lane == 0) mbarrier_arrive(&empty[stage]);",
             "    wgmma_commit();\n    __syncwarp();\n    if (lane == 0) mbarrier_arrive(&empty[stage]);\n"
             "    wgmma_wait_all();\n    wgmma_pin(block);",
             "gemm_out_fp32.cu", run_hopper_fp8_gemm,
             r"TMA write overwrites .* an operand of wgmma group", arch=90),
    Mutation("sm90_gemm_producer_waits_wrong_parity", "fp8/kernels/sm90/gemm.cuh",
             "mbarrier_wait(&empty[stage], uint32_t((kb / Tile::kStages - 1) & 1));",
             "mbarrier_wait(&empty[stage], uint32_t((kb / Tile::kStages) & 1));",
             "gemm_out_fp32.cu", run_hopper_fp8_gemm,
             r"an mbarrier wait never completes|try_wait\.parity 1 .* before it completed any phase",
             arch=90),
    Mutation("sm90_attention_missing_wgmma_fence", HOPPER_FWD_SOURCE,
             "      mbarrier_wait(&v_full[stage], parity);\n      wgmma_pin(out_acc);\n      wgmma_fence();",
             "      mbarrier_wait(&v_full[stage], parity);\n      wgmma_pin(out_acc);",
             HOPPER_FWD, run_hopper_attention_forward, r"no wgmma\.fence since its registers", arch=90),
    Mutation("sm90_attention_reads_v_before_its_barrier", HOPPER_FWD_SOURCE,
             "      mbarrier_wait(&v_full[stage], parity);\n", "",
             HOPPER_FWD, run_hopper_attention_forward,
             r"wgmma operand read at .* is not ordered after its write by the TMA completing on the "
             r"mbarrier", arch=90),
    Mutation("sm90_attention_q_expects_half_its_bytes", HOPPER_FWD_SOURCE,
             "mbarrier_arrive_expect_bytes(q_full, Tile::kTileBytes);",
             "mbarrier_arrive_expect_bytes(q_full, Tile::kHalfBytes);",
             HOPPER_FWD, run_hopper_attention_forward,
             r"not ordered after its write by the TMA|still expects -?\d+ transaction bytes", arch=90),
    Mutation("sm90_attention_tiles_not_1024_aligned", HOPPER_FWD_SOURCE,
             "(reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t(1023));",
             "reinterpret_cast<uintptr_t>(shared_raw));",
             HOPPER_FWD, run_hopper_attention_forward,
             r"TMA destination at shared 0x[0-9a-f]+ is not 1024-byte aligned", arch=90),
    Mutation("sm90_attention_missing_mbarrier_init_fence", HOPPER_FWD_SOURCE,
             "    mbarrier_init_fence();\n", "",
             HOPPER_FWD, run_hopper_attention_forward, r"no fence\.mbarrier_init made visible", arch=90),
    Mutation("sm90_attention_setmaxnreg_in_one_warp_only", HOPPER_FWD_SOURCE,
             "    warpgroup_registers_decrease<Tile::kProducerRegisters>();",
             "    if (thread < 32) warpgroup_registers_decrease<Tile::kProducerRegisters>();",
             HOPPER_FWD, run_hopper_attention_forward,
             r"warpgroup divergence: .* waits at setmaxnreg .* has exited", arch=90),
    Mutation("sm90_gemm_illegal_register_count", "fp8/kernels/sm90/gemm.cuh",
             "kProducerRegisters = 40,", "kProducerRegisters = 36,",
             "gemm_out_fp32.cu", run_hopper_fp8_gemm,
             BUILD_FAILS + r"static assertion failed: setmaxnreg: the consumers take more", arch=90),
]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=repr)
def test_emulated_mutation_is_caught(mutation):
    from emulation.build import build_module

    if mutation.expect.startswith(BUILD_FAILS):
        with pytest.raises(RuntimeError, match=mutation.expect[len(BUILD_FAILS):]):
            build_module(mutation.arch, name=f"deepseek_attn_mutant_{mutation.name}",
                         overlay={mutation.path: mutation.source()}, rebuild=[mutation.rebuild])
        return
    try:
        module = build_module(mutation.arch, name=f"deepseek_attn_mutant_{mutation.name}",
                              overlay={mutation.path: mutation.source()},
                              rebuild=[mutation.rebuild])
    except (OSError, RuntimeError) as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"the emulated extension could not be built here: {error}")
    if mutation.expect == WRONG_ANSWER:
        with pytest.raises(AssertionError):
            mutation.run(module)
    else:
        with pytest.raises(RuntimeError, match=mutation.expect) as caught:
            mutation.run(module)
        assert "deepseek_attn emulator:" in str(caught.value)
        assert "block (" in str(caught.value) and "thread (" in str(caught.value)
        assert "kernel<" in str(caught.value)  # the report names the kernel instantiation
