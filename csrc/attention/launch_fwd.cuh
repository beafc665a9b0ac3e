#pragma once
// The attention forward's launch: the sm90a kernel and its TMA maps, or the shared core's sm80
// main loop over a dense source (split-KV and combine included); included by
// kernels/inst/flash_fwd_*.cu only, so an edit here rebuilds the forward instantiations alone.

#include "attention/kernels/sm90/flash_fwd.cuh"
#include "attention/params.h"
#include "common/cuda_launch.cuh"
#include "core/launch.h"

namespace deepseek_attn {
namespace cuda {

// A (batch, seqlen, heads, 128) BSHD view as a 4-D tensor map with 64 x 128-row boxes, 128-byte
// swizzled; false when TMA cannot address it (strides must be non-zero multiples of 16 bytes).
template <DType kDType>
bool encode_bshd_tensor_map(CUtensorMap* map, const void* base, int64_t batch, int64_t seqlen,
                            int64_t heads, const BshdStrides& strides) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  const cuuint64_t dims[4] = {128, cuuint64_t(seqlen), cuuint64_t(heads), cuuint64_t(batch)};
  const cuuint64_t byte_strides[3] = {cuuint64_t(strides.row) * 2, cuuint64_t(strides.head) * 2,
                                      cuuint64_t(strides.batch) * 2};
  for (const cuuint64_t stride : byte_strides) {
    if (stride == 0 || stride % 16 != 0 || stride >= (cuuint64_t(1) << 40)) return false;
  }
  const cuuint32_t box[4] = {64, HopperFwdTile::kBlockM, 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  return encode(map,
                kDType == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                           : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                4, const_cast<void*>(base), dims, byte_strides, box, element_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Launches the Hopper forward; returns false (nothing launched) when the tensors cannot be
// described to TMA or the kernel exceeds its register share, so the caller falls back to the
// sm80 kernel.
template <DType kDType>
bool try_launch_flash_fwd_hopper(const AttentionFwdParams& p, cudaStream_t stream,
                                 cudaError_t* status) {
  CUtensorMap q_map, k_map, v_map;
  if (!kernel_fits_register_share(flash_fwd_hopper_kernel<kDType>, HopperFwdTile::kThreads) ||
      !encode_bshd_tensor_map<kDType>(&q_map, p.q, p.batch, p.seqlen_q, p.heads_q, p.q_strides) ||
      !encode_bshd_tensor_map<kDType>(&k_map, p.k, p.batch, p.seqlen_k, p.heads_kv, p.k_strides) ||
      !encode_bshd_tensor_map<kDType>(&v_map, p.v, p.batch, p.seqlen_k, p.heads_kv, p.v_strides)) {
    return false;
  }
  const dim3 grid(ceil_div(p.seqlen_q, HopperFwdTile::kBlockM), static_cast<unsigned>(p.heads_q),
                  static_cast<unsigned>(p.batch));
  *status = launch_kernel(flash_fwd_hopper_kernel<kDType>, grid, HopperFwdTile::kThreads,
                          HopperFwdTile::kSmemBytes, stream, q_map, k_map, v_map, p);
  return true;
}

// The core's view of a dense flash_attn call: K/V rows with one page per sequence, the band.
inline CoreFwdParams dense_core_params(const AttentionFwdParams& p) {
  CoreFwdParams core(static_cast<const AttentionShape&>(p));
  core.q = p.q;
  core.out = p.out;
  core.lse = p.lse;
  core.q_strides = p.q_strides;
  core.out_strides = p.out_strides;
  core.kv.k = p.k;
  core.kv.v = p.v;
  core.kv.k_strides = p.k_strides;
  core.kv.v_strides = p.v_strides;
  core.kv.page_size = p.seqlen_k > 0 ? p.seqlen_k : 1;
  core.kv.num_pages = p.batch;
  return core;
}

template <int kDimQK, int kDimV, DType kDType>
cudaError_t launch_flash_fwd(const AttentionFwdParams& p, const SplitKvParams& split, bool hopper,
                             cudaStream_t stream) {
  if constexpr (kDimQK == kHopperForwardHeadDim && kDimV == kHopperForwardHeadDim) {
    cudaError_t status = cudaSuccess;
    if (hopper && try_launch_flash_fwd_hopper<kDType>(p, stream, &status)) return status;
  }
  // Everything else is the shared core's main loop (instantiated in core/kernels/inst/).
  return launch_core_fwd<kDimQK, kDimV, kDType, CoreKv::kRows>(dense_core_params(p), split, stream);
}

}  // namespace cuda
}  // namespace deepseek_attn
