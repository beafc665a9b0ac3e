// Small kernels that each break one rule the emulator checks (or use one primitive), so the
// checks and primitives have direct tests (tests/test_emulated_runtime.py) beside the mutations
// of the real kernels. Compiled like csrc/*/kernels/inst/*.cu: as host C++ against the emulator.

#include <cstring>

#include "common/cuda_hopper.cuh"
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
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(float, scratch, 32);
  const unsigned lane = threadIdx.x;
  data[lane] = __shfl_xor_sync(0xffffffffu, float(lane), 1);
  const unsigned odd = __ballot_sync(0xffffffffu, lane % 2);
  scratch[lane] = float(lane);
  __syncwarp();
  data[32 + lane] = scratch[31 - lane] + (odd == 0xaaaaaaaau ? 100.f : 0.f);
}

// Lane 0 writes global memory, __syncwarp, lane 1 reads it: ordered within the warp (legal);
// thread 32 reading it after its own warp's __syncwarp is not ordered (a race).
__global__ void syncwarp_global_kernel(float* data) {
  if (threadIdx.x == 0) data[0] = 5.f;
  __syncwarp();
  if (threadIdx.x == 1) data[1] = data[0];
  if (threadIdx.x == 32) data[2] = data[0];
}

// Threads read the shared value their predecessor wrote, without a barrier.
__global__ void shared_read_race_kernel(float* data) {
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(float, scratch, 64);
  scratch[threadIdx.x] = 1.f;
  if (threadIdx.x > 0) data[threadIdx.x % 32] = scratch[threadIdx.x - 1];
}

__global__ void trap_kernel(float* data) {
  if (threadIdx.x == 5) __trap();
  data[threadIdx.x] = 0.f;
}

__global__ void out_of_bounds_store_kernel(float* data) { data[threadIdx.x + 1] = 0.f; }

__global__ void dynamic_shared_kernel(float* data) {
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_bytes);
  data[threadIdx.x] = float(shared_bytes[threadIdx.x]);  // never written
}

// 1024 back-to-back mma.sync per warp on register fragments: the emulator's mma throughput.
__global__ void mma_loop_kernel(float* data) {
  float acc[4] = {};
  const uint32_t a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};  // bf16 ones
  for (int i = 0; i < 1024; ++i) mma_16x8x16<DType::kBFloat16>(acc, a, 0x3f803f80u, 0x3f803f80u);
  if (threadIdx.x < 32) data[threadIdx.x] = acc[0];
}

#if defined(DEEPSEEK_ATTN_HOPPER_DEVICE)
// --- Hopper probes (the sm90 module compiles this file with the sm90a code paths) -----------

constexpr int kTmaRows = 8, kTmaColumns = 32;  // the box: 8 rows x 32 fp32 = 1024 bytes

// One TMA box of a (rows x 16) fp32 matrix at the start of `data`, placed at columns -8 and
// rows - 4 (so both dimensions run out of bounds), lands 128-byte swizzled; the block copies
// the raw shared bytes to the output after the matrix.
__global__ void tma_box_kernel(const __grid_constant__ CUtensorMap map, float* output, int rows) {
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_raw);
  unsigned char* box = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(box + 1024);
  if (threadIdx.x == 0) {
    mbarrier_init(full, 1);
    mbarrier_init_fence();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_bytes(full, kTmaRows * kTmaColumns * 4);
    tma_load_2d(box, &map, full, -8, rows - 4);
  }
  mbarrier_wait(full, 0);
  const float* landed = reinterpret_cast<const float*>(box);
  for (int i = threadIdx.x; i < kTmaRows * kTmaColumns; i += blockDim.x) output[i] = landed[i];
}

// mbarrier protocol probes (one warp, or two where a producer and a consumer warp are needed).
__global__ void mbarrier_probe_kernel(float* data, int variant) {
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(uint64_t, barrier, 1);
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(float, values, 32);
  const int thread = threadIdx.x;
  if (thread == 0) {
    mbarrier_init(barrier, variant == 3 || variant == 4 ? 32 : 1);
    mbarrier_init_fence();
  }
  __syncthreads();
  switch (variant) {
    case 0:  // over-arrival: the phase still expects bytes, a second thread arrives
      if (thread == 0) mbarrier_arrive_expect_bytes(barrier, 16);
      __syncwarp();
      if (thread == 1) mbarrier_arrive(barrier);
      break;
    case 1:  // transaction bytes that never arrive
      if (thread == 0) mbarrier_arrive_expect_bytes(barrier, 64);
      mbarrier_wait(barrier, 0);
      break;
    case 2:  // parity 1 before any phase completed
      mbarrier_wait(barrier, 1);
      break;
    case 3:  // warp 0 writes and arrives; warp 1 waits, then reads: ordered
    case 4:  // ... warp 1 reads without waiting: a race
      if (thread < 32) {
        values[thread] = float(thread);
        mbarrier_arrive(barrier);
      } else {
        if (variant == 3) mbarrier_wait(barrier, 0);
        data[thread - 32] = values[63 - thread];
      }
      break;
  }
}

// A 64x128x16 bf16 wgmma over operands the block wrote through the generic proxy. Variants:
// 0 legal (fence.proxy.async, barrier, wait before reading D), 1 reads D before the wait,
// 2 leaves out fence.proxy.async.
__global__ void wgmma_probe_kernel(float* data, int variant) {
  DEEPSEEK_ATTN_DYNAMIC_SHARED_MEMORY(unsigned char, shared_raw);
  unsigned char* tiles = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t(1023));
  const int thread = threadIdx.x;
  // A: 64 rows, B: 128 rows, each row 128 bytes (64 bf16, K-major); bf16 1.0 everywhere.
  for (int i = thread; i < (64 + 128) * 64; i += blockDim.x) {
    reinterpret_cast<uint16_t*>(tiles)[i] = 0x3f80;
  }
  if (variant != 2) dsa_emu::fence_proxy_async();
  __syncthreads();
  float d[16][4];
  wgmma_fence();
  wgmma_m64n128k16_ss<DType::kBFloat16>(d, swizzle128_descriptor(tiles, 16, 1024),
                            swizzle128_descriptor(tiles + 64 * 128, 16, 1024), false);
  wgmma_commit();
  if (variant == 1) data[thread] = d[0][0];
  wgmma_wait_all();
  data[thread] = d[0][0];
}
// Named barriers between two warpgroups (warpgroup 0 writes, warpgroup 1 reads). Variants:
// 0 bar.arrive / bar.sync 1 over 256 threads: ordered; 1 the reader syncs with a count of 128
// (mismatch); 2 only the reader syncs (never completes); 3 no barrier (a race).
__global__ void named_barrier_probe_kernel(float* data, int variant) {
  DEEPSEEK_ATTN_STATIC_SHARED_ARRAY(float, values, 128);
  const int thread = threadIdx.x;
  if (thread < 128) {
    values[thread] = float(thread);
    if (variant != 2 && variant != 3) dsa_emu::named_barrier(1, 256, false);
  } else {
    if (variant != 3) dsa_emu::named_barrier(1, variant == 1 ? 128 : 256, true);
    data[thread - 128] = values[255 - thread];
  }
}

// setmaxnreg with a count the ISA forbids (36: not a multiple of 8).
__global__ void setmaxnreg_probe_kernel(float* data) {
  warpgroup_registers_decrease<36>();
  data[threadIdx.x] = 1.f;
}

// elect.sync over the whole warp: exactly one lane is elected; every lane writes what it saw.
__global__ void elect_probe_kernel(float* data) {
  const bool elected = dsa_emu::elect_one(0xffffffffu);
  data[threadIdx.x] = elected ? 1.f : 0.f;
}
#endif  // DEEPSEEK_ATTN_HOPPER_DEVICE

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
      {"syncwarp_orders_global", syncwarp_global_kernel, 1, 32},
      {"syncwarp_other_warp_race", syncwarp_global_kernel, 1, 64},
      {"shared_read_race", shared_read_race_kernel, 1, 64},
      {"trap", trap_kernel, 1, 32},
      {"out_of_bounds_store", out_of_bounds_store_kernel, 1, 32},
      {"dynamic_shared", dynamic_shared_kernel, 1, 32},
      {"mma_loop", mma_loop_kernel, 1, 128},
  };
#if defined(DEEPSEEK_ATTN_HOPPER_DEVICE)
  const int matrix_rows = (count - kTmaRows * kTmaColumns) / 16;
  const bool nan_fill = std::strcmp(name, "tma_box_nan_fill") == 0;
  if (std::strcmp(name, "tma_box") == 0 || nan_fill) {
    CUtensorMap map;
    const cuuint64_t dims[2] = {16, cuuint64_t(matrix_rows)};
    const cuuint64_t strides[1] = {16 * sizeof(float)};
    const cuuint32_t box[2] = {kTmaColumns, kTmaRows}, element_strides[2] = {1, 1};
    if (tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, data, dims, strides, box,
                             element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                             nan_fill ? CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
                                      : CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
      return cudaErrorInvalidValue;
    }
    return launch_kernel(tma_box_kernel, dim3(1), 128, 1024 + 1024 + 8, nullptr, map,
                         data + matrix_rows * 16, matrix_rows);
  }
  const char* mbarrier_probes[] = {"mbarrier_over_arrival", "mbarrier_tx_never_completes",
                                   "mbarrier_wrong_parity", "mbarrier_orders_warps",
                                   "mbarrier_missing_wait"};
  for (int variant = 0; variant < 5; ++variant) {
    if (std::strcmp(name, mbarrier_probes[variant]) == 0) {
      return launch_kernel(mbarrier_probe_kernel, dim3(1), 64, 0, nullptr, data, variant);
    }
  }
  const char* named_barrier_probes[] = {"named_barrier", "named_barrier_count_mismatch",
                                        "named_barrier_never_completes", "named_barrier_missing"};
  for (int variant = 0; variant < 4; ++variant) {
    if (std::strcmp(name, named_barrier_probes[variant]) == 0) {
      return launch_kernel(named_barrier_probe_kernel, dim3(1), 256, 0, nullptr, data, variant);
    }
  }
  if (std::strcmp(name, "setmaxnreg_illegal_count") == 0) {
    return launch_kernel(setmaxnreg_probe_kernel, dim3(1), 128, 0, nullptr, data);
  }
  if (std::strcmp(name, "elect_one") == 0) {
    return launch_kernel(elect_probe_kernel, dim3(1), 32, 0, nullptr, data);
  }
  const char* wgmma_probes[] = {"wgmma", "wgmma_early_accumulator_read",
                                "wgmma_without_proxy_fence"};
  for (int variant = 0; variant < 3; ++variant) {
    if (std::strcmp(name, wgmma_probes[variant]) == 0) {
      return launch_kernel(wgmma_probe_kernel, dim3(1), 128, 1024 + 192 * 128, nullptr, data,
                           variant);
    }
  }
#endif
  for (const Probe& probe : probes) {
    if (std::strcmp(probe.name, name) == 0) {
      return launch_kernel(probe.kernel, dim3(probe.blocks), probe.threads, shared_bytes, nullptr,
                           data);
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace deepseek_attn
