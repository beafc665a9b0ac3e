#pragma once
// The torch-facing half of the sparse family's launches on a GPU-style device, shared by the CUDA
// back end (cuda.cpp) and the emulated test extension (tests/emulation/): checks, outputs and
// params. The caller guards the device and launches.

#include <ATen/ATen.h>

#include <optional>

#include "common/dtype.h"
#include "sparse/params.h"

namespace deepseek_attn {

struct IndexerCall {
  IndexerParams params;
  DType input = DType::kBFloat16;
  at::Tensor q, k, weights, k_scale, output;  // output: logits or indices
  bool needs_launch = false;  // false: nothing to compute, the output is final
};

// No topk: the logits kernel; else the top-k kernel.
IndexerCall prepare_indexer(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weights,
                            const std::optional<at::Tensor>& k_scale,
                            const std::optional<at::Tensor>& seqlens_k, std::optional<int64_t> topk,
                            double softmax_scale, bool causal);

struct IndexerBwdCall {
  IndexerBwdParams params;
  DType type = DType::kBFloat16;
  at::Tensor q, k, weights, dlogits, dq, dk, dweights;  // the kernels' operands, outputs
  bool needs_launch = false;
};

IndexerBwdCall prepare_indexer_bwd(const at::Tensor& dlogits, const at::Tensor& q,
                                   const at::Tensor& k, const at::Tensor& weights,
                                   const std::optional<at::Tensor>& seqlens_k,
                                   double softmax_scale, bool causal);

// sparse_attn's backward over token lists, or block_sparse_attn's over lists of blocks of
// index_block_size keys (causal inside them).
struct SparseBwdCall {
  SparseBwdParams params;
  DType type = DType::kBFloat16;
  // Contiguous inputs, the inverse index and the outputs (dv empty for latent rows).
  at::Tensor q, k, v, dout, lse, delta, indices, key_offsets, key_tokens, dq, dk, dv;
  bool needs_launch = false;
};

SparseBwdCall prepare_sparse_attn_bwd(const at::Tensor& dout, const at::Tensor& q,
                                      const at::Tensor& k, const std::optional<at::Tensor>& v,
                                      const at::Tensor& out, const at::Tensor& lse,
                                      const at::Tensor& indices, int64_t head_dim_v,
                                      double softmax_scale, int64_t index_block_size = 1,
                                      bool causal = false);
SparseBwdCall prepare_block_sparse_attn_bwd(const at::Tensor& dout, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& out, const at::Tensor& lse,
                                            const at::Tensor& block_indices, int64_t block_size,
                                            bool causal, double softmax_scale);

}  // namespace deepseek_attn
