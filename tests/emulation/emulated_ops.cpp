// The test-only extension behind tests/test_emulated_*.py: deepseek_attn's CUDA ops running the
// real kernels and launch code (csrc/*/launch.cuh, kernels/inst/*.cu compiled as host C++) on
// the CPU emulator (csrc/emulation/), over CPU tensors. The torch-facing half is the CUDA back
// end's own (device_call.cpp); only the device guard and stream differ.

#include <torch/extension.h>

#include <map>
#include <string>
#include <tuple>

#include "attention/device_call.h"
#include "attention/launch.h"
#include "common/cuda_device.h"
#include "common/dtype_aten.h"
#include "core/device_call.h"
#include "core/launch.h"
#include "emulation/runtime.h"
#include "fp8/device_call.h"
#include "fp8/launch.h"
#include "mla/device_call.h"
#include "mla/launch.h"
#include "sparse/device_call.h"
#include "sparse/launch.h"

namespace deepseek_attn {
namespace {

// The tensors a launch may touch, registered as its global memory (whole storages, as a
// cudaMalloc'd buffer would be) for the lifetime of this object.
class DeviceMemory {
 public:
  void add(const at::Tensor& t, const std::string& name, bool read_only) {
    if (!t.defined() || t.storage().nbytes() == 0) return;
    const void* base = t.storage().data();
    auto [entry, inserted] =
        regions_.try_emplace(base, Region{name, read_only, t.storage().nbytes()});
    if (!inserted) {  // views of one buffer (q, k, v of a packed qkv) share an allocation
      entry->second.name += "/" + name;
      entry->second.read_only = entry->second.read_only && read_only;
    }
  }
  ~DeviceMemory() {
    for (const auto& [base, region] : regions_) dsa_emu::unregister_allocation(base);
  }
  void register_all() const {
    for (const auto& [base, region] : regions_) {
      dsa_emu::register_allocation(base, region.bytes, region.name, region.read_only);
    }
  }

 private:
  struct Region {
    std::string name;
    bool read_only;
    size_t bytes;
  };
  std::map<const void*, Region> regions_;
};

cudaStream_t emulated_stream() { return nullptr; }

// The emulated device's arch with the tests' SM count (it decides split-KV).
DeviceArch arch_with_sms(int64_t sm_count) {
  DeviceArch arch = device_arch(0);
  arch.sm_count = int(sm_count);
  return arch;
}

void check_launch(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "emulated launch failed: ", cudaGetErrorString(status));
}

void check_cuda_dtype(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
              "the emulated CUDA attention takes bfloat16 or float16 (got ", q.scalar_type(), ")");
}

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double softmax_scale,
                                                  bool causal, int64_t window_left,
                                                  int64_t window_right, double softcap,
                                                  int64_t sm_count) {
  check_cuda_dtype(q);
  const FlashFwdCall call = prepare_flash_attn_fwd(q, k, v, softmax_scale, causal, window_left,
                                                   window_right, softcap, arch_with_sms(sm_count));
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(call.q, "q", true);
    memory.add(call.k, "k", true);
    memory.add(call.v, "v", true);
    memory.add(call.out, "out", false);
    memory.add(call.lse, "lse", false);
    memory.add(call.partial_out, "partial_out", false);
    memory.add(call.partial_lse, "partial_lse", false);
    memory.register_all();
    check_launch(cuda::launch_flash_fwd_for(call.params, dtype_of(q.scalar_type()), call.split,
                                            call.hopper, emulated_stream()));
  }
  return {call.out, call.lse};
}

int64_t num_splits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                   int64_t sm_count) {
  const FlashFwdCall call = prepare_flash_attn_fwd(q, k, v, 1.0, causal, -1, causal ? 0 : -1, 0.0,
                                                   arch_with_sms(sm_count));
  return call.split.num_splits;
}

// attention_core_fwd's arguments, then the emulated device's SM count.
std::tuple<at::Tensor, at::Tensor> attention_core_fwd(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& block_table, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& indices, int64_t index_block_size, int64_t head_dim_v,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    int64_t sm_count) {
  check_cuda_dtype(q);
  const CoreFwdCall call = prepare_attention_core_fwd(
      {q, k, v, block_table, cache_seqlens, indices, index_block_size, head_dim_v}, softmax_scale,
      causal, window_left, window_right, softcap, arch_with_sms(sm_count));
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(call.q, "q", true);
    memory.add(call.k, "k", true);
    if (call.v.has_value()) memory.add(*call.v, "v", true);
    for (const auto& [tensor, name] :
         {std::pair{block_table, "block_table"}, std::pair{cache_seqlens, "cache_seqlens"},
          std::pair{indices, "indices"}}) {
      if (tensor.has_value()) memory.add(*tensor, name, true);
    }
    memory.add(call.out, "out", false);
    memory.add(call.lse, "lse", false);
    memory.add(call.partial_out, "partial_out", false);
    memory.add(call.partial_lse, "partial_lse", false);
    memory.register_all();
    check_launch(cuda::launch_core_fwd_for(call.params, dtype_of(q.scalar_type()), call.split,
                                           emulated_stream()));
  }
  return {call.out, call.lse};
}

int64_t core_num_splits(const at::Tensor& q, const at::Tensor& k,
                        const std::optional<at::Tensor>& v,
                        const std::optional<at::Tensor>& block_table, int64_t head_dim_v,
                        int64_t sm_count) {
  return prepare_attention_core_fwd(
             {q, k, v, block_table, std::nullopt, std::nullopt, 1, head_dim_v}, 1.0, true, -1, -1,
             0.0, arch_with_sms(sm_count))
      .split.num_splits;
}

// (number of splits or balanced parts, balanced?) that attention_core_fwd's launch would take.
std::tuple<int64_t, bool> core_split_plan(const at::Tensor& q, const at::Tensor& k,
                                          const std::optional<at::Tensor>& block_table,
                                          const std::optional<at::Tensor>& cache_seqlens,
                                          int64_t head_dim_v, bool causal, int64_t sm_count) {
  const CoreFwdCall call = prepare_attention_core_fwd(
      {q, k, std::nullopt, block_table, cache_seqlens, std::nullopt, 1, head_dim_v}, 1.0, causal,
      -1, -1, 0.0, arch_with_sms(sm_count));
  return {call.split.num_splits, call.split.balanced};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attn_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, double softmax_scale, bool causal,
    int64_t window_left, int64_t window_right, double softcap, bool deterministic) {
  check_cuda_dtype(q);
  const FlashBwdCall call =
      prepare_flash_attn_bwd(dout, q, k, v, out, lse, softmax_scale, causal, window_left,
                             window_right, softcap, deterministic);
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(call.q, "q", true);
    memory.add(call.k, "k", true);
    memory.add(call.v, "v", true);
    memory.add(call.out, "out", true);
    memory.add(call.dout, "dout", true);
    memory.add(call.lse, "lse", true);
    memory.add(call.dq, "dq", false);
    memory.add(call.dk, "dk", false);
    memory.add(call.dv, "dv", false);
    memory.add(call.delta, "delta", false);
    memory.add(call.dq_accum, "dq_accum", false);
    memory.register_all();
    check_launch(cuda::launch_flash_bwd_for(call.params, dtype_of(q.scalar_type()),
                                            call.delta.data_ptr<float>(), emulated_stream()));
  }
  return {call.dq, call.dk, call.dv};
}

std::tuple<at::Tensor, at::Tensor> run_quantizer(const Fp8QuantizeCall& call, bool weight) {
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(call.x, "x", true);
    memory.add(call.payload, "payload", false);
    memory.add(call.scales, "scales", false);
    memory.register_all();
    check_launch(weight
                     ? cuda::launch_quantize_weight_for(call.source, call.params, emulated_stream())
                     : cuda::launch_quantize_act_for(call.source, call.params, emulated_stream()));
  }
  return {call.payload, call.scales};
}

std::tuple<at::Tensor, at::Tensor> quantize_act(const at::Tensor& x, int64_t group_size,
                                                bool ue8m0) {
  return run_quantizer(prepare_quantize_act(x, group_size, ue8m0), false);
}

std::tuple<at::Tensor, at::Tensor> quantize_weight(const at::Tensor& w, int64_t block_size,
                                                   bool ue8m0) {
  return run_quantizer(prepare_quantize_weight(w, block_size, ue8m0), true);
}

at::Tensor fp8_gemm(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b,
                    const at::Tensor& b_scales, at::ScalarType out_dtype) {
  const Fp8GemmCall call = prepare_fp8_gemm(a, a_scales, b, b_scales, out_dtype, device_arch(0));
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(call.a, "a", true);
    memory.add(call.b, "b", true);
    memory.add(call.a_scales, "a_scales", true);
    memory.add(call.b_scales, "b_scales", true);
    memory.add(call.out, "out", false);
    memory.register_all();
    check_launch(
        cuda::launch_fp8_gemm_for(call.out_type, call.params, call.hopper, emulated_stream()));
  }
  return call.out;
}

std::tuple<at::Tensor, at::Tensor> mla_norm_rope(
    const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double eps, const std::optional<at::Tensor>& cache,
    const std::optional<at::Tensor>& cache_slots) {
  const NormRopeCall call =
      prepare_mla_norm_rope(x, norm_weight, rope_cos, rope_sin, eps, cache, cache_slots);
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(x, "x", true);
    for (const auto& [tensor, name] :
         {std::pair{norm_weight, "norm_weight"}, std::pair{rope_cos, "rope_cos"},
          std::pair{rope_sin, "rope_sin"}, std::pair{cache_slots, "cache_slots"}}) {
      if (tensor.has_value()) memory.add(*tensor, name, true);
    }
    if (cache.has_value()) memory.add(*cache, "cache", false);
    memory.add(call.y, "y", false);
    memory.add(call.rstd, "rstd", false);
    memory.register_all();
    check_launch(cuda::launch_norm_rope_for(call.type, call.params, emulated_stream()));
  }
  return {call.y, call.rstd};
}

std::tuple<at::Tensor, at::Tensor> mla_norm_rope_bwd(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
    const at::Tensor& rstd, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin) {
  const NormRopeBwdCall call =
      prepare_mla_norm_rope_bwd(dy, x, norm_weight, rstd, rope_cos, rope_sin);
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(call.dy, "dy", true);
    memory.add(x, "x", true);
    memory.add(rstd, "rstd", true);
    for (const auto& [tensor, name] :
         {std::pair{norm_weight, "norm_weight"}, std::pair{rope_cos, "rope_cos"},
          std::pair{rope_sin, "rope_sin"}}) {
      if (tensor.has_value()) memory.add(*tensor, name, true);
    }
    memory.add(call.dx, "dx", false);
    memory.add(call.dweight_partials, "dweight_partials", false);
    memory.register_all();
    check_launch(cuda::launch_norm_rope_bwd_for(call.type, call.params, emulated_stream()));
  }
  return {call.dx, finish_mla_norm_rope_bwd(call, x)};
}

at::Tensor run_indexer(const IndexerCall& call, const std::optional<at::Tensor>& seqlens_k) {
  if (call.needs_launch) {
    DeviceMemory memory;
    memory.add(call.q, "q", true);
    memory.add(call.k, "k", true);
    memory.add(call.weights, "weights", true);
    if (call.k_scale.defined()) memory.add(call.k_scale, "k_scale", true);
    if (seqlens_k.has_value()) memory.add(*seqlens_k, "seqlens_k", true);
    memory.add(call.output, "output", false);
    memory.register_all();
    check_launch(cuda::launch_indexer_for(call.input, call.params, emulated_stream()));
  }
  return call.output;
}

at::Tensor indexer_logits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                          const std::optional<at::Tensor>& k_scale,
                          const std::optional<at::Tensor>& seqlens_k, double softmax_scale,
                          bool causal) {
  return run_indexer(
      prepare_indexer(q, k, weights, k_scale, seqlens_k, std::nullopt, softmax_scale, causal),
      seqlens_k);
}

at::Tensor indexer_topk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                        const std::optional<at::Tensor>& k_scale,
                        const std::optional<at::Tensor>& seqlens_k, int64_t topk,
                        double softmax_scale, bool causal) {
  return run_indexer(
      prepare_indexer(q, k, weights, k_scale, seqlens_k, topk, softmax_scale, causal), seqlens_k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> indexer_logits_bwd(
    const at::Tensor& dlogits, const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
    const std::optional<at::Tensor>& seqlens_k, double softmax_scale, bool causal) {
  const IndexerBwdCall call =
      prepare_indexer_bwd(dlogits, q, k, weights, seqlens_k, softmax_scale, causal);
  if (call.needs_launch) {
    DeviceMemory memory;
    for (const auto& [tensor, name] : {std::pair{call.q, "q"}, {call.k, "k"},
                                       {call.weights, "weights"}, {call.dlogits, "dlogits"}}) {
      memory.add(tensor, name, true);
    }
    if (seqlens_k.has_value()) memory.add(*seqlens_k, "seqlens_k", true);
    memory.add(call.dq, "dq", false);
    memory.add(call.dk, "dk", false);
    memory.add(call.dweights, "dweights", false);
    memory.register_all();
    check_launch(cuda::launch_indexer_bwd_for(call.type, call.params, emulated_stream()));
  }
  return {call.dq, call.dk, call.dweights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_sparse_attn_bwd(const SparseBwdCall& call) {
  if (call.needs_launch) {
    DeviceMemory memory;
    for (const auto& [tensor, name] :
         {std::pair{call.q, "q"}, {call.k, "k"}, {call.v, "v"}, {call.dout, "dout"},
          {call.lse, "lse"}, {call.delta, "delta"}, {call.indices, "indices"},
          {call.key_offsets, "key_offsets"}, {call.key_tokens, "key_tokens"}}) {
      memory.add(tensor, name, true);
    }
    memory.add(call.dq, "dq", false);
    memory.add(call.dk, "dk", false);
    memory.add(call.dv, "dv", false);
    memory.register_all();
    check_launch(cuda::launch_sparse_attn_bwd_for(call.type, call.params, emulated_stream()));
  }
  return {call.dq, call.dk, call.dv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attn_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
    const std::optional<at::Tensor>& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& indices, int64_t head_dim_v, double softmax_scale) {
  return run_sparse_attn_bwd(
      prepare_sparse_attn_bwd(dout, q, k, v, out, lse, indices, head_dim_v, softmax_scale));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attn_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& block_indices,
    int64_t block_size, bool causal, double softmax_scale) {
  return run_sparse_attn_bwd(prepare_block_sparse_attn_bwd(
      dout, q, k, v, out, lse, block_indices, block_size, causal, softmax_scale));
}

}  // namespace

namespace cuda {
cudaError_t run_emulator_probe(const char* name, float* data, int count, int shared_bytes);
}  // namespace cuda

namespace {

// Runs one of tests/emulation/probe_kernels.cu over `data` (fp32, contiguous).
void run_probe(const std::string& name, const at::Tensor& data, int64_t shared_bytes) {
  TORCH_CHECK(data.scalar_type() == at::kFloat && data.is_contiguous(),
              "data must be contiguous fp32");
  DeviceMemory memory;
  memory.add(data, "data", false);
  memory.register_all();
  check_launch(cuda::run_emulator_probe(name.c_str(), data.data_ptr<float>(), int(data.numel()),
                                        int(shared_bytes)));
}

}  // namespace
}  // namespace deepseek_attn

// Called by the module's PYBIND11_MODULE (tests/emulation/build.py writes it per module name).
void define_emulated_ops(pybind11::module_& m, int arch) {
  using namespace deepseek_attn;
  dsa_emu::DeviceProperties device;
  device.compute_capability = arch;
  device.sm_count = arch == 89 ? 142 : arch == 90 ? 132 : 108;  // L40, H100 SXM, A100
  // Per-block opt-in limits of an L40-class GPU, an A100 and an H100.
  device.max_shared_bytes_optin = arch == 89 ? 99 * 1024 : arch == 90 ? 227 * 1024 : 163 * 1024;
  dsa_emu::set_device_properties(device);
  m.attr("arch") = arch;
  m.def("flash_attn_fwd", &flash_attn_fwd);
  m.def("flash_attn_bwd", &flash_attn_bwd);
  m.def("attention_core_fwd", &attention_core_fwd);
  m.def("core_num_splits", &core_num_splits);
  m.def("core_split_plan", &core_split_plan);
  m.def("num_splits", &num_splits);
  m.def("quantize_act", &quantize_act);
  m.def("quantize_weight", &quantize_weight);
  m.def("fp8_gemm", &fp8_gemm);
  m.def("mla_norm_rope", &mla_norm_rope);
  m.def("mla_norm_rope_bwd", &mla_norm_rope_bwd);
  m.def("indexer_logits", &indexer_logits);
  m.def("indexer_topk", &indexer_topk);
  m.def("sparse_attn_bwd", &sparse_attn_bwd);
  m.def("block_sparse_attn_bwd", &block_sparse_attn_bwd);
  m.def("indexer_logits_bwd", &indexer_logits_bwd);
  m.def("set_schedule_seed", &dsa_emu::set_schedule_seed);
  m.def("run_probe", &run_probe);
  m.def("last_kernel_name", &dsa_emu::last_kernel_name);
  m.def("set_hopper_kernels_allowed", &set_hopper_kernels_allowed);
  m.def("counters", [] {
    const dsa_emu::Counters c = dsa_emu::counters();
    return std::map<std::string, uint64_t>{
        {"launches", c.launches}, {"ctas", c.ctas},
        {"mma", c.mma},           {"fiber_switches", c.fiber_switches},
        {"wgmma", c.wgmma},       {"tma", c.tma}};
  });
}
