#pragma once
// Emulated twin of <cudaTypedefs.h>: the driver entry point our launch code looks up, and the
// emulator's cuTensorMapEncodeTiled that cudaGetDriverEntryPointByVersion hands out.

#include <cuda.h>

#include "emulation/runtime.h"

typedef CUresult (*PFN_cuTensorMapEncodeTiled_v12000)(
    CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType, cuuint32_t tensorRank,
    void* globalAddress, const cuuint64_t* globalDim, const cuuint64_t* globalStrides,
    const cuuint32_t* boxDim, const cuuint32_t* elementStrides, CUtensorMapInterleave interleave,
    CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
    CUtensorMapFloatOOBfill oobFill);

namespace dsa_emu {
// The arguments as the emulator's TMA reads them; the checks are encode_tensor_map's.
inline CUresult emulated_tensor_map_encode_tiled(
    CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, void* address,
    const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
    const cuuint32_t* element_strides, CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
    CUtensorMapL2promotion, CUtensorMapFloatOOBfill fill) {
  static constexpr int kElementBytes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};
  const bool integer_type = type <= CU_TENSOR_MAP_DATA_TYPE_INT64;
  if (map == nullptr || dims == nullptr || box == nullptr || element_strides == nullptr ||
      unsigned(type) >= sizeof(kElementBytes) / sizeof(int) || rank < 1 || rank > 5 ||
      (rank > 1 && strides == nullptr) ||
      (integer_type && fill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)) {  // NaN fill: floats only
    return CUDA_ERROR_INVALID_VALUE;
  }
  TensorMapDescription d;
  d.rank = int(rank);
  d.element_bytes = kElementBytes[type];
  d.address = address;
  d.byte_strides[0] = uint64_t(d.element_bytes);
  for (int i = 0; i < d.rank; ++i) {
    d.dims[i] = dims[i];
    d.box[i] = box[i];
    d.element_strides[i] = element_strides[i];
    if (i > 0) d.byte_strides[i] = strides[i - 1];
  }
  static constexpr int kSwizzleBytes[] = {0, 32, 64, 128};
  d.swizzle_bytes = kSwizzleBytes[swizzle & 3];
  d.interleaved = interleave != CU_TENSOR_MAP_INTERLEAVE_NONE;
  d.nan_fill = fill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE;
  return encode_tensor_map(map, d) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
}  // namespace dsa_emu
