#pragma once
// Grid and shared-memory choice of the FP8 GEMMs (mma.sync, and the sm90a kernel with its TMA
// maps); included by kernels/inst/gemm_out_*.cu only.

#include "common/cuda_launch.cuh"
#include "fp8/kernels/sm80/gemm.cuh"
#include "fp8/kernels/sm90/gemm.cuh"
#include "fp8/params.h"

namespace deepseek_attn {
namespace cuda {

// A (rows, k) row-major e4m3 matrix as a 2-D tensor map with 128 x 128 boxes, 128-byte swizzled.
inline bool encode_fp8_tensor_map(CUtensorMap* map, const uint8_t* base, int64_t rows,
                                  int64_t k) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0 || k % 16 != 0) return false;
  const cuuint64_t dims[2] = {cuuint64_t(k), cuuint64_t(rows)};
  const cuuint64_t byte_strides[1] = {cuuint64_t(k)};
  const cuuint32_t box[2] = {128, 128};
  const cuuint32_t element_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(base), dims,
                byte_strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Launches the Hopper GEMM; false (nothing launched) when TMA cannot address the operands or
// the kernel exceeds its register share.
template <DType kOut>
bool try_launch_fp8_gemm_hopper(const Fp8GemmParams& p, cudaStream_t stream, cudaError_t* status) {
  using Tile = Fp8GemmHopperTile;
  CUtensorMap a_map, b_map;
  if (!kernel_fits_register_share(fp8_gemm_hopper_kernel<kOut>, Tile::kThreads) ||
      !encode_fp8_tensor_map(&a_map, p.a, p.m, p.k) ||
      !encode_fp8_tensor_map(&b_map, p.b, p.n, p.k)) {
    return false;
  }
  const dim3 grid(ceil_div(p.m, Tile::kBlockM), ceil_div(p.n, Tile::kBlockN));
  *status = launch_kernel(fp8_gemm_hopper_kernel<kOut>, grid, Tile::kThreads, Tile::kSmemBytes,
                          stream, a_map, b_map, p);
  return true;
}

template <DType kOut>
cudaError_t launch_fp8_gemm(const Fp8GemmParams& p, bool hopper, cudaStream_t stream) {
  cudaError_t hopper_status = cudaSuccess;
  if (hopper && try_launch_fp8_gemm_hopper<kOut>(p, stream, &hopper_status)) return hopper_status;
  using Tile = Fp8GemmTile;
  const dim3 grid(ceil_div(p.m, Tile::kBlockM), ceil_div(p.n, Tile::kBlockN));
  return launch_kernel(fp8_gemm_kernel<kOut>, grid, Tile::kThreads, Tile::kSmemBytes, stream, p);
}

}  // namespace cuda
}  // namespace deepseek_attn
