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
  int compute_capability = 80;  // what cudaDeviceGetAttribute reports (major * 10 + minor)
  int sm_count = 108;
};
void set_device_properties(const DeviceProperties& properties);
const DeviceProperties& device_properties();

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
  uint64_t wgmma = 0;
  uint64_t tma = 0;
};
Counters counters();
// The kernel the latest launch ran (demangled, without our namespace), for tests that must know
// which of two paths the launch code took.
std::string last_kernel_name();

// --- Kernel builtins (called from kernel code on a fiber) ---------------------------------
Dim3 thread_idx();
Dim3 block_idx();
Dim3 block_dim();
Dim3 grid_dim();
void* dynamic_shared_memory();
// The static shared array `name` of the running kernel (allocated at its first use in a launch).
void* static_shared_array(const char* name, size_t bytes, size_t alignment);
void syncthreads(const char* file, int line);  // the call's source location names the barrier
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

// --- Hopper PTX twins (common/cuda_hopper_intrinsics.cuh) ---------------------------------
// cvta.to.shared: the address of `pointer` in the CTA's shared window (what descriptors and
// mbarrier/TMA operands hold); faults unless it points into shared memory.
uint32_t shared_window_address(const void* pointer);
// mbarrier.init / fence.mbarrier_init / arrive[.expect_tx] / try_wait.parity (as a wait loop).
void mbarrier_init(void* barrier, int arrivals);
void mbarrier_init_fence();
void mbarrier_arrive(void* barrier, uint32_t expect_tx_bytes);  // 0: a plain arrive
void mbarrier_wait(void* barrier, uint32_t parity);
// fence.proxy.async: this thread's earlier generic-proxy shared writes become visible to the
// async proxy (TMA, wgmma operand reads).
void fence_proxy_async();
// bar.sync id, threads (wait) / bar.arrive id, threads (no wait): named barriers 0..15 whose
// phase completes when `threads` threads have arrived; waiting threads acquire what every
// participant did before arriving.
void named_barrier(int id, int threads, bool wait);
// elect.sync: a warp collective over `mask` that is true in exactly one of its lanes (the lowest
// in index-order schedules, another when the schedule is shuffled: code must not care which).
bool elect_one(unsigned mask);

// What cuTensorMapEncodeTiled was given (the emulated tensor map holds exactly this).
struct TensorMapDescription {
  int rank = 0;           // 1..5
  int element_bytes = 0;  // 1, 2, 4 or 8
  const void* address = nullptr;
  uint64_t dims[5] = {};
  uint64_t byte_strides[5] = {};  // [0] is the element size; [1..rank) the encoder's strides
  uint32_t box[5] = {};
  uint32_t element_strides[5] = {};
  int swizzle_bytes = 0;  // 0, 32, 64 or 128
  bool interleaved = false;
  bool nan_fill = false;  // CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
};
// Validates like the driver and writes the 128-byte CUtensorMap; false for invalid arguments.
bool encode_tensor_map(void* tensor_map, const TensorMapDescription& description);
// cp.async.bulk.tensor.Nd.shared::cluster.global.mbarrier::complete_tx::bytes [shared], [map,
// coords], [barrier]: the box lands swizzled as the map says, out-of-bounds elements as zeros,
// and its bytes complete transactions on the barrier.
void tma_load(void* shared, const void* tensor_map, void* barrier, const int* coords, int rank);

// setmaxnreg.{inc,dec}.sync.aligned.u32: a warpgroup collective with a legal register count.
void set_max_registers(int registers, bool increase);

// wgmma.mma_async.sync.aligned.m64nNkK.f32.{bf16,f16,e4m3}: one warpgroup collective issue.
enum class WgmmaType { kBf16, kFp16, kE4m3 };
struct WgmmaIssue {
  int n = 0;  // 8..256, a multiple of 8
  WgmmaType type = WgmmaType::kBf16;
  float* accumulators = nullptr;          // this thread's n / 2 fp32 values, [n / 8][4]
  const uint32_t* a_registers = nullptr;  // this thread's A fragment (4 registers), or null: A
  uint64_t a_descriptor = 0;              // comes from shared memory through this descriptor
  uint64_t b_descriptor = 0;
  bool a_k_major = true, b_k_major = true;  // imm-trans-a / imm-trans-b == 0
  bool accumulate = true;                   // scale-d
};
void wgmma_fence();
void wgmma_mma_async(const WgmmaIssue& issue);
void wgmma_commit();
void wgmma_wait(int pending_groups);

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
