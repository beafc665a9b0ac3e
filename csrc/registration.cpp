// Every op schema of deepseek_attn, one line each. Implementations register per device in
// csrc/<family>/cpu.cpp and cuda.cpp; fake (meta) kernels and autograd live in Python.

#include <Python.h>
#include <torch/library.h>

#include "common/cpu_tiles.h"
#include "common/device_arch.h"

TORCH_LIBRARY(deepseek_attn, m) {
  // SPEC §1 forward: (out (B,Sq,Hq,Dv), lse (B,Hq,Sq) fp32). causal implies window_right = 0.
  // `deterministic` only reaches the backward that the op's registered autograd runs.
  m.def(
      "flash_attn_fwd(Tensor q, Tensor k, Tensor v, float softmax_scale, bool causal, "
      "int window_left, int window_right, float softcap, bool deterministic=False) -> "
      "(Tensor, Tensor)");
  // SPEC §1 backward from the saved out and lse: (dq, dk, dv); dk/dv summed over GQA groups.
  m.def(
      "flash_attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "float softmax_scale, bool causal, int window_left, int window_right, float softcap, "
      "bool deterministic) -> (Tensor, Tensor, Tensor)");
  // The shared attention core's forward (csrc/core/): (out (B,Sq,Hq,Dv), lse (B,Hq,Sq) fp32)
  // over a dense, paged (block_table, cache_seqlens) or latent (v=None; uint8 k: FP8 rows)
  // source, and the window band, optionally intersected with token/block index lists.
  m.def(
      "attention_core_fwd(Tensor q, Tensor k, Tensor? v, Tensor? block_table, "
      "Tensor? cache_seqlens, Tensor? indices, int index_block_size, int head_dim_v, "
      "float softmax_scale, bool causal, int window_left, int window_right, float softcap) -> "
      "(Tensor, Tensor)");
  // SPEC §2 activations: (e4m3 payload like x, fp32 scales (..., ceil(K/group_size))).
  m.def("quantize_act(Tensor x, int group_size, bool ue8m0) -> (Tensor, Tensor)");
  // SPEC §2 weights (N, K): (e4m3 payload, fp32 scales (ceil(N/block), ceil(K/block))).
  m.def("quantize_weight(Tensor w, int block_size, bool ue8m0) -> (Tensor, Tensor)");
  // SPEC §2 block-scaled "NT" GEMM a @ b.T; b_scales per 128x128 block or per 1x128 row.
  m.def("fp8_gemm(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, ScalarType out_dtype) "
        "-> Tensor");
  // SPEC §3 fused latent epilogue on x (tokens, groups, dim): RMSNorm(cols < norm_dim)·weight,
  // interleaved RoPE on the last 2·rope_cos.size(1) cols, and, given cache_slots, each token's row
  // written into `cache` (rows in x's dtype or 656-byte FP8 rows): (y, rstd (tokens, groups)).
  m.def(
      "mla_norm_rope(Tensor x, Tensor? norm_weight, Tensor? rope_cos, Tensor? rope_sin, "
      "float eps, Tensor(a!)? cache=None, Tensor? cache_slots=None) -> (Tensor, Tensor)");
  // Its backward: (dx, dnorm_weight ((0,) without a weight)).
  m.def(
      "mla_norm_rope_bwd(Tensor dy, Tensor x, Tensor? norm_weight, Tensor rstd, "
      "Tensor? rope_cos, Tensor? rope_sin) -> (Tensor, Tensor)");
  // SPEC §4 sparse attention backward from the core forward's (out, lse) over token lists
  // indices (B, Sq, Hkv, n): (dq, dk, dv); v=None: latent rows (dk holds the value gradient in
  // its first head_dim_v columns, dv is empty).
  m.def(
      "sparse_attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor? v, Tensor out, Tensor lse, "
      "Tensor indices, int head_dim_v, float softmax_scale) -> (Tensor, Tensor, Tensor)");
  // SPEC §5 block-sparse attention backward over block lists (B, Sq, Hkv, n) of block_size keys
  // (causal inside the blocks), from the core forward's (out, lse): (dq, dk, dv).
  m.def(
      "block_sparse_attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor block_indices, int block_size, bool causal, float softmax_scale) "
      "-> (Tensor, Tensor, Tensor)");
  // SPEC §4 lightning indexer logits (B, Sq, Sk) fp32, -inf where masked, from q (B, Sq, H, d),
  // k (B, Sk, d), weights (B, Sq, H) fp32 (FP8 q's scales folded in), k_scale (B, Sk).
  m.def(
      "indexer_logits(Tensor q, Tensor k, Tensor weights, Tensor? k_scale, Tensor? seqlens_k, "
      "float softmax_scale, bool causal) -> Tensor");
  // Its backward (no FP8): (dq, dk, dweights).
  m.def(
      "indexer_logits_bwd(Tensor dlogits, Tensor q, Tensor k, Tensor weights, Tensor? seqlens_k, "
      "float softmax_scale, bool causal) -> (Tensor, Tensor, Tensor)");
  // The indexer's top-k keys per query row (B, Sq, topk) int32, best first, ties to the lower
  // key, -1 padded; streaming: the (Sq, Sk) logits are never stored.
  m.def(
      "indexer_topk(Tensor q, Tensor k, Tensor weights, Tensor? k_scale, Tensor? seqlens_k, "
      "int topk, float softmax_scale, bool causal) -> Tensor");
}

#ifndef DEEPSEEK_ATTN_CUDA_ARCHS
#define DEEPSEEK_ATTN_CUDA_ARCHS ""
#endif

namespace {
// _C.set_hopper_kernels_allowed(bool) -> bool: the previous value (common/device_arch.h).
PyObject* set_hopper_kernels_allowed_from_python(PyObject*, PyObject* allowed) {
  const int truth = PyObject_IsTrue(allowed);
  if (truth < 0) return nullptr;
  return PyBool_FromLong(deepseek_attn::set_hopper_kernels_allowed(truth != 0));
}

// The CPU tile plan of this host (probed on first use): the description, as a str.
PyObject* cpu_tile_plan_from_python(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(deepseek_attn::cpu::cpu_tile_plan().describe().c_str());
  } catch (const c10::Error& error) {  // a malformed DEEPSEEK_ATTN_CPU_* variable
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
}

PyMethodDef module_methods[] = {
    {"cpu_tile_plan", cpu_tile_plan_from_python, METH_NOARGS,
     "How CPU attention tiles multiply on this host (probed once per process)."},
    {"set_hopper_kernels_allowed", set_hopper_kernels_allowed_from_python, METH_O,
     "Allows or forbids the sm90a kernels from now on; returns the previous setting."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

// Importing deepseek_attn._C loads the op library; the module itself carries build facts and
// the Hopper kernel switch.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "deepseek_attn compiled ops (see torch.ops.deepseek_attn)", -1,
      module_methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef DEEPSEEK_ATTN_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(module, "cuda_archs", DEEPSEEK_ATTN_CUDA_ARCHS);
  PyModule_AddIntConstant(module, "hopper_kernels_built", deepseek_attn::build_has_sm90a());
  return module;
}
