// Every op schema of deepseek_attn, one line each. Implementations register per device in
// csrc/<family>/cpu.cpp and cuda.cpp; fake (meta) kernels and autograd live in Python.

#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(deepseek_attn, m) {
  // SPEC §1 forward: (out (B,Sq,Hq,Dv), lse (B,Hq,Sq) fp32). causal implies window_right = 0.
  m.def("flash_attn_fwd(Tensor q, Tensor k, Tensor v, float softmax_scale, bool causal, "
        "int window_left, int window_right, float softcap) -> (Tensor, Tensor)");
  // SPEC §1 backward from the saved out and lse: (dq, dk, dv); dk/dv summed over GQA groups.
  m.def("flash_attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "float softmax_scale, bool causal, int window_left, int window_right, float softcap, "
        "bool deterministic) -> (Tensor, Tensor, Tensor)");
}

#ifndef DEEPSEEK_ATTN_CUDA_ARCHS
#define DEEPSEEK_ATTN_CUDA_ARCHS ""
#endif

// Importing deepseek_attn._C loads the op library; the module itself only carries build facts.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "deepseek_attn compiled ops (see torch.ops.deepseek_attn)",
                                          -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef DEEPSEEK_ATTN_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(module, "cuda_archs", DEEPSEEK_ATTN_CUDA_ARCHS);
  return module;
}
