#pragma once
// Emulated twin of <cuda_runtime_api.h>: the same declarations as the emulated cuda_runtime.h.
#include <cuda_runtime.h>
