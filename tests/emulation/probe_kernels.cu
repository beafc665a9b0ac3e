// Small kernels that each break one rule the emulator checks (or use one primitive), so the
// checks and primitives have direct tests (tests/test_emulated_runtime.py) beside the mutations
// of the real kernels. Compiled like csrc/*/kernels/inst/*.cu: as host C++ against the emulator.

#include <cstring>

#include "common/cuda_intrinsics.cuh"
#include "common/cuda_launch.cuh"

namespace deepseek_attn {
namespace cuda {

// Block 1 reads the value block 0 writes, with nothing ordering the two blocks.
__global__ void cross_block_read_kernel(float* data) {
  if (blockIdx.x == 0 && threadIdx.x == 0) data[0] = 1.f;
  if (blockIdx.x == 1 && threadIdx.x == 0) data[1] = data[0];
}

// Two threads of one block write the same address in one barrier interval.
__global__ void same_block_write_race_kernel(float* data) {
  if (threadIdx.x < 2) data[0] = float(threadIdx.x);
}

// Threads 0 and 1 read a value that thread 1 then overwrites, in one barrier interval.
__global__ void read_then_overwrite_race_kernel(float* data) {
  if (threadIdx.x < 2) data[1 + threadIdx.x] = data[0];
  if (threadIdx.x == 1) data[0] = 3.f;
}

// The same two writes separated by a barrier: legal.
__global__ void ordered_writes_kernel(float* data) {
  if (threadIdx.x == 0) data[0] = 1.f;
  __syncthreads();
  if (threadIdx.x == 1) data[0] = 2.f;
}

// Lane 0 shuffles with lane 16, which is not in the mask.
__global__ void shuffle_outside_mask_kernel(float* data) {
  if (threadIdx.x < 16) data[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.f, 16);
}

// Lane i gets lane i ^ 1's value; a ballot of odd lanes; __syncwarp orders shared writes.
__global__ void warp_primitives_kernel(float* data) {
  DSA_STATIC_SHARED_ARRAY(float, scratch, 32);
  const unsigned lane = threadIdx.x;
  data[lane] = __shfl_xor_sync(0xffffffffu, float(lane), 1);
  const unsigned odd = __ballot_sync(0xffffffffu, lane % 2);
  scratch[lane] = float(lane);
  __syncwarp();
  data[32 + lane] = scratch[31 - lane] + (odd == 0xaaaaaaaau ? 100.f : 0.f);
}

// Threads read the shared value their predecessor wrote, without a barrier.
__global__ void shared_read_race_kernel(float* data) {
  DSA_STATIC_SHARED_ARRAY(float, scratch, 64);
  scratch[threadIdx.x] = 1.f;
  if (threadIdx.x > 0) data[threadIdx.x % 32] = scratch[threadIdx.x - 1];
}

__global__ void trap_kernel(float* data) {
  if (threadIdx.x == 5) __trap();
  data[threadIdx.x] = 0.f;
}

__global__ void out_of_bounds_store_kernel(float* data) { data[threadIdx.x + 1] = 0.f; }

__global__ void dynamic_shared_kernel(float* data) {
  DSA_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  data[threadIdx.x] = float(shared_bytes[threadIdx.x]);  // never written
}

// 1024 back-to-back mma.sync per warp on register fragments: the emulator's mma throughput.
__global__ void mma_loop_kernel(float* data) {
  float acc[4] = {};
  const uint32_t a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};  // bf16 ones
  for (int i = 0; i < 1024; ++i) mma_16x8x16<true>(acc, a, 0x3f803f80u, 0x3f803f80u);
  if (threadIdx.x < 32) data[threadIdx.x] = acc[0];
}

// Runs the probe `name` over `data` (`count` floats); returns the launch status.
cudaError_t run_emulator_probe(const char* name, float* data, int count, int shared_bytes) {
  struct Probe {
    const char* name;
    void (*kernel)(float*);
    int blocks, threads;
  };
  const Probe probes[] = {
      {"cross_block_read", cross_block_read_kernel, 2, 32},
      {"same_block_write_race", same_block_write_race_kernel, 1, 32},
      {"ordered_writes", ordered_writes_kernel, 1, 32},
      {"read_then_overwrite_race", read_then_overwrite_race_kernel, 1, 32},
      {"shuffle_outside_mask", shuffle_outside_mask_kernel, 1, 32},
      {"warp_primitives", warp_primitives_kernel, 1, 32},
      {"shared_read_race", shared_read_race_kernel, 1, 64},
      {"trap", trap_kernel, 1, 32},
      {"out_of_bounds_store", out_of_bounds_store_kernel, 1, 32},
      {"dynamic_shared", dynamic_shared_kernel, 1, 32},
      {"mma_loop", mma_loop_kernel, 1, 128},
  };
  for (const Probe& probe : probes) {
    if (std::strcmp(probe.name, name) == 0) {
      return launch_kernel(probe.kernel, dim3(probe.blocks), probe.threads, shared_bytes, nullptr,
                           data);
    }
  }
  (void)count;
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace deepseek_attn
