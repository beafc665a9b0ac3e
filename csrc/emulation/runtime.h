#pragma once
// The CPU emulator's runtime: what the emulated twins of the CUDA headers (include/) call.
// A launch runs CTAs one after another; the threads of a CTA are cooperative fibers that switch
// at every synchronising primitive. Every global and shared access of the kernel code is checked
// (README.md lists the checks); the first fault ends the launch with a KernelFault naming kernel,
// block, thread and address. No torch and no CUDA headers here.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace dsa_emu {

struct Dim3 {
  unsigned x, y, z;
  constexpr Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Thrown by a launch whose kernel broke a rule; what() is the report.
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The emulated GPU's limits that launches are checked against (the code path it runs is chosen
// at compile time by __CUDA_ARCH__; SM counts are the caller's, as on a GPU).
struct DeviceProperties {
  int max_shared_bytes_optin = 163 * 1024;  // per block with cudaFuncSetAttribute (A100)
};
void set_device_properties(const DeviceProperties& properties);

// 0: threads of a CTA run in index order between synchronisations; any other value shuffles
// that order (deterministically per seed), so results must not depend on it.
void set_schedule_seed(uint64_t seed);

// Global memory a kernel may touch: everything else is out of bounds. Registered by the code
// that allocates (the test extension registers each tensor it passes to a launch).
void register_allocation(const void* base, size_t bytes, const std::string& name, bool read_only);
void unregister_allocation(const void* base);

// Counters since the process started (speed measurements and tests of the emulator itself).
struct Counters {
  uint64_t launches = 0;
  uint64_t ctas = 0;
  uint64_t mma = 0;
  uint64_t fiber_switches = 0;
};
Counters counters();

// --- Kernel builtins (called from kernel code on a fiber) ---------------------------------
Dim3 thread_idx();
Dim3 block_idx();
Dim3 block_dim();
Dim3 grid_dim();
void* dynamic_shared_memory();
// The static shared array `name` of the running kernel (allocated at its first use in a launch).
void* static_shared_array(const char* name, size_t bytes, size_t alignment);
void syncthreads();  // must be called directly from kernel code: its call site names the barrier
void syncwarp(unsigned mask);
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width);
unsigned ballot(unsigned mask, bool predicate);
float atomic_add(float* address, float value);
[[noreturn]] void trap();

// --- PTX twins (common/cuda_intrinsics.cuh) ------------------------------------------------
// cp.async.cg/ca: `src_bytes` of `copy_bytes` are read, the rest zero-filled; the copy lands at
// cp.async.wait_group, and its destination reads as a fault until then.
void cp_async(void* shared, const void* global, int copy_bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
void ldmatrix(uint32_t* registers, int matrices, bool transposed, const void* shared);
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 (d = c in place)
void mma_m16n8k16(float* accumulators, const uint32_t* a, uint32_t b0, uint32_t b1, bool bf16);
// mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32
void mma_m16n8k32_e4m3(float* accumulators, const uint32_t* a, uint32_t b0, uint32_t b1);

// --- Launch --------------------------------------------------------------------------------
// Runs `run_thread(context)` on every thread of every CTA. `kernel` identifies the kernel (for
// reports and the shared-memory opt-in); `parameters` is the argument block it reads.
// Returns 0 or a cudaError_t value for an invalid configuration; throws KernelFault.
int launch(const void* kernel, Dim3 grid, Dim3 block, size_t dynamic_shared_bytes,
           void (*run_thread)(void* context), void* context, const void* parameters,
           size_t parameter_bytes);
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
int set_max_dynamic_shared_bytes(const void* kernel, int bytes);

// Launches `kernel(args...)` with the arguments converted to the kernel's parameter types, as
// cudaLaunchKernelEx does; the converted values are the parameter block.
template <typename... Parameters, typename... Arguments>
int launch_with_arguments(void (*kernel)(Parameters...), Dim3 grid, Dim3 block, size_t shared_bytes,
                          Arguments&&... arguments) {
  static_assert(sizeof...(Parameters) == sizeof...(Arguments), "wrong number of kernel arguments");
  using Block = std::tuple<std::decay_t<Parameters>...>;
  struct Context {
    void (*kernel)(Parameters...);
    Block parameters;
  } context{kernel, Block(std::forward<Arguments>(arguments)...)};
  auto run_thread = [](void* opaque) {
    Context* c = static_cast<Context*>(opaque);
    std::apply(c->kernel, c->parameters);
  };
  return launch(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, run_thread,
                &context, &context, sizeof(Context));
}

}  // namespace dsa_emu
