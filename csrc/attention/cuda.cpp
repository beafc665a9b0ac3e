// CUDA implementation of flash_attn_fwd / flash_attn_bwd: the checks shared with the CPU path,
// device guard, allocation through torch (no cudaMalloc, so CUDA graphs can capture it), params,
// and a launch on the current stream with no host synchronisation.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "attention/checks.h"
#include "attention/launch.h"
#include "attention/params.h"
#include "common/checks.h"

namespace deepseek_attn {
namespace {

void check_cuda_support(const AttentionFwdParams& p) {
#define DSA_IS_SUPPORTED(QK, V) (p.head_dim_qk == QK && p.head_dim_v == V) ||
  const bool supported = DSA_ATTENTION_HEAD_DIMS(DSA_IS_SUPPORTED) false;
#undef DSA_IS_SUPPORTED
  DSA_CHECK_VALUE(supported, "head dims (q/k ", p.head_dim_qk, ", v ", p.head_dim_v,
                  ") are not supported on CUDA; supported (Dqk/Dv): ", cuda::kSupportedHeadDims);
  DSA_CHECK_VALUE(p.heads_q <= 65535 && p.heads_kv <= 65535,
                  "at most 65535 heads are supported on CUDA (got ", p.heads_q, ")");
}

// The kernels copy 16-byte chunks: rows must start 16-byte aligned. Others get a compact copy.
at::Tensor aligned_for_vector_loads(const at::Tensor& t) {
  const bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 &&
                       t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0;
  return aligned ? t : t.contiguous();
}

void fill_fwd_pointers(AttentionFwdParams& p, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_strides = bshd_strides(q);
  p.k_strides = bshd_strides(k);
  p.v_strides = bshd_strides(v);
  p.out_strides = bshd_strides(out);
}

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Split the keys across CTAs when (batch, heads, query blocks) alone cannot fill the GPU.
int choose_num_splits(const AttentionFwdParams& p, int device) {
  const int sm_count = multiprocessor_count(device);
  const int64_t ctas = p.batch * p.heads_q * ((p.seqlen_q + 63) / 64);
  const int64_t key_blocks =
      (p.seqlen_k + cuda::fwd_block_n(p.head_dim_qk, p.head_dim_v) - 1) /
      cuda::fwd_block_n(p.head_dim_qk, p.head_dim_v);
  if (ctas >= sm_count || key_blocks < 4) return 1;
  int64_t splits = (2 * sm_count + ctas - 1) / ctas;
  splits = std::min<int64_t>({splits, key_blocks / 2, 64, 65535 / p.batch});
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

template <typename Fwd>
cudaError_t dispatch_head_dims(const AttentionFwdParams& p, bool is_bf16, Fwd&& launch) {
#define DSA_DISPATCH(QK, V)                                       \
  if (p.head_dim_qk == QK && p.head_dim_v == V) {                 \
    return is_bf16 ? launch(std::integral_constant<int, QK>(),    \
                            std::integral_constant<int, V>(),     \
                            std::true_type())                     \
                   : launch(std::integral_constant<int, QK>(),    \
                            std::integral_constant<int, V>(),     \
                            std::false_type());                   \
  }
  DSA_ATTENTION_HEAD_DIMS(DSA_DISPATCH)
#undef DSA_DISPATCH
  return cudaErrorInvalidValue;  // unreachable: check_cuda_support ran first
}

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd_cuda(const at::Tensor& q_in,
                                                       const at::Tensor& k_in,
                                                       const at::Tensor& v_in,
                                                       double softmax_scale, bool causal,
                                                       int64_t window_left,
                                                       int64_t window_right, double softcap) {
  AttentionFwdParams p = check_attention_fwd_inputs(q_in, k_in, v_in, softmax_scale, causal,
                                                    window_left, window_right, softcap);
  check_cuda_support(p);
  const c10::cuda::CUDAGuard device_guard(q_in.device());
  const at::Tensor q = aligned_for_vector_loads(q_in);
  const at::Tensor k = aligned_for_vector_loads(k_in);
  const at::Tensor v = aligned_for_vector_loads(v_in);
  at::Tensor out = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim_v}, q.options());
  at::Tensor lse = at::empty({p.batch, p.heads_q, p.seqlen_q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  if (p.seqlen_k == 0) {  // every row sees nothing
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, lse};
  }
  fill_fwd_pointers(p, q, k, v, out, lse);

  SplitKvParams split;
  split.num_splits = choose_num_splits(p, q.get_device());
  at::Tensor partial_out, partial_lse;
  if (split.num_splits > 1) {
    const auto fp32 = q.options().dtype(at::kFloat);
    partial_out = at::empty({split.num_splits, p.batch, p.heads_q, p.seqlen_q, p.head_dim_v}, fp32);
    partial_lse = at::empty({split.num_splits, p.batch, p.heads_q, p.seqlen_q}, fp32);
    split.partial_out = partial_out.data_ptr<float>();
    split.partial_lse = partial_lse.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(dispatch_head_dims(p, q.scalar_type() == at::kBFloat16, [&](auto qk, auto dv,
                                                                              auto bf16) {
    return cuda::launch_flash_fwd<decltype(qk)::value, decltype(dv)::value, decltype(bf16)::value>(
        p, split, stream);
  }));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attn_bwd_cuda(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    bool deterministic) {
  const AttentionFwdParams shape = check_attention_fwd_inputs(
      q_in, k_in, v_in, softmax_scale, causal, window_left, window_right, softcap);
  check_cuda_support(shape);
  check_attention_bwd_inputs(shape, q_in, dout_in, out_in, lse_in);
  const c10::cuda::CUDAGuard device_guard(q_in.device());
  const at::Tensor q = aligned_for_vector_loads(q_in);
  const at::Tensor k = aligned_for_vector_loads(k_in);
  const at::Tensor v = aligned_for_vector_loads(v_in);
  const at::Tensor dout = aligned_for_vector_loads(dout_in);
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor dq = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor dk = at::empty_like(k, at::MemoryFormat::Contiguous);
  at::Tensor dv = at::empty_like(v, at::MemoryFormat::Contiguous);
  if (shape.batch == 0 || shape.seqlen_q == 0 || shape.seqlen_k == 0) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }

  AttentionBwdParams p;
  static_cast<AttentionFwdParams&>(p) = shape;
  fill_fwd_pointers(p, q, k, v, out_in, lse);
  p.dout = dout.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dout_strides = bshd_strides(dout);
  p.dq_strides = bshd_strides(dq);
  p.dk_strides = bshd_strides(dk);
  p.dv_strides = bshd_strides(dv);
  p.deterministic = deterministic;
  at::Tensor delta = at::empty({p.batch, p.heads_q, p.seqlen_q}, q.options().dtype(at::kFloat));
  at::Tensor dq_accum;  // O(S·D) fp32 scratch of the atomic dQ path
  if (!deterministic) {
    dq_accum = at::zeros({p.batch, p.heads_q, p.seqlen_q, p.head_dim_qk},
                         q.options().dtype(at::kFloat));
    p.dq_accum = dq_accum.data_ptr<float>();
  }

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(dispatch_head_dims(p, q.scalar_type() == at::kBFloat16, [&](auto qk, auto dv_dim,
                                                                              auto bf16) {
    return cuda::launch_flash_bwd<decltype(qk)::value, decltype(dv_dim)::value,
                                  decltype(bf16)::value>(p, delta.data_ptr<float>(), stream);
  }));
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepseek_attn, CUDA, m) {
  m.impl("flash_attn_fwd", &flash_attn_fwd_cuda);
  m.impl("flash_attn_bwd", &flash_attn_bwd_cuda);
}

}  // namespace deepseek_attn
