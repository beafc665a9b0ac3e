// See device_call.h. Plain ATen: no CUDA headers, so the CPU-only build compiles it too.

#include "attention/device_call.h"

#include <algorithm>
#include <limits>

#include "attention/checks.h"
#include "attention/head_dims.h"
#include "attention/heuristics.h"
#include "common/checks.h"
#include "common/vector_loads.h"
#include "core/device_call.h"

namespace deepseek_attn {
namespace {

void check_device_support(const AttentionShape& p) {
#define DEEPSEEK_ATTN_IS_SUPPORTED(QK, V) (p.head_dim_qk == QK && p.head_dim_v == V) ||
  const bool supported = DEEPSEEK_ATTN_ATTENTION_HEAD_DIMS(DEEPSEEK_ATTN_IS_SUPPORTED) false;
#undef DEEPSEEK_ATTN_IS_SUPPORTED
  DEEPSEEK_ATTN_CHECK_VALUE(
      supported, "head dims (q/k ", p.head_dim_qk, ", v ", p.head_dim_v,
      ") are not supported on CUDA; supported (Dqk/Dv): ", cuda::kSupportedHeadDims);
  DEEPSEEK_ATTN_CHECK_VALUE(p.heads_q <= 65535 && p.heads_kv <= 65535,
                            "at most 65535 heads are supported on CUDA (got ", p.heads_q, ")");
  // The batch is the grid's z dimension (times the KV splits, which are capped to fit).
  DEEPSEEK_ATTN_CHECK_VALUE(p.batch <= 65535,
                            "q.shape[0] (batch) must be at most 65535 on CUDA (got ", p.batch, ")");
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

}  // namespace

FlashFwdCall prepare_flash_attn_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    double softmax_scale, bool causal, int64_t window_left,
                                    int64_t window_right, double softcap,
                                    const DeviceArch& arch) {
  FlashFwdCall call;
  AttentionFwdParams& p = call.params;
  p = AttentionFwdParams(check_attention_fwd_inputs(q, k, v, softmax_scale, causal, window_left,
                                                    window_right, softcap));
  check_device_support(p);
  call.q = aligned_for_vector_loads(q);
  call.k = aligned_for_vector_loads(k);
  call.v = aligned_for_vector_loads(v);
  call.out = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim_v}, q.options());
  call.lse = at::empty({p.batch, p.heads_q, p.seqlen_q}, q.options().dtype(at::kFloat));
  if (call.out.numel() == 0) return call;
  if (p.seqlen_k == 0) {  // every row sees nothing
    call.out.zero_();
    call.lse.fill_(-std::numeric_limits<float>::infinity());
    return call;
  }
  fill_fwd_pointers(p, call.q, call.k, call.v, call.out, call.lse);

  call.split.num_splits = cuda::choose_num_splits(p, arch.sm_count);
  call.hopper = cuda::use_hopper_forward(p, call.split.num_splits, arch);
  allocate_split_partials(call.split, p, q.options(), call.partial_out, call.partial_lse);
  call.needs_launch = true;
  return call;
}

FlashBwdCall prepare_flash_attn_bwd(const at::Tensor& dout, const at::Tensor& q,
                                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                    const at::Tensor& lse, double softmax_scale, bool causal,
                                    int64_t window_left, int64_t window_right, double softcap,
                                    bool deterministic) {
  FlashBwdCall call;
  const AttentionShape shape = check_attention_fwd_inputs(q, k, v, softmax_scale, causal,
                                                          window_left, window_right, softcap);
  check_device_support(shape);
  check_attention_bwd_inputs(shape, q, dout, out, lse);
  call.q = aligned_for_vector_loads(q);
  call.k = aligned_for_vector_loads(k);
  call.v = aligned_for_vector_loads(v);
  call.dout = aligned_for_vector_loads(dout);
  call.out = out;
  call.lse = lse.contiguous();
  call.dq = at::empty_like(call.q, at::MemoryFormat::Contiguous);
  call.dk = at::empty_like(call.k, at::MemoryFormat::Contiguous);
  call.dv = at::empty_like(call.v, at::MemoryFormat::Contiguous);
  if (shape.batch == 0 || shape.seqlen_q == 0 || shape.seqlen_k == 0) {
    call.dq.zero_();
    call.dk.zero_();
    call.dv.zero_();
    return call;
  }

  AttentionBwdParams& p = call.params;
  static_cast<AttentionShape&>(p) = shape;
  fill_fwd_pointers(p, call.q, call.k, call.v, call.out, call.lse);
  p.dout = call.dout.data_ptr();
  p.dq = call.dq.data_ptr();
  p.dk = call.dk.data_ptr();
  p.dv = call.dv.data_ptr();
  p.dout_strides = bshd_strides(call.dout);
  p.dq_strides = bshd_strides(call.dq);
  p.dk_strides = bshd_strides(call.dk);
  p.dv_strides = bshd_strides(call.dv);
  p.deterministic = deterministic;
  call.delta = at::empty({p.batch, p.heads_q, p.seqlen_q}, q.options().dtype(at::kFloat));
  if (!deterministic) {  // O(S·D) fp32 scratch of the atomic dQ path
    call.dq_accum =
        at::zeros({p.batch, p.heads_q, p.seqlen_q, p.head_dim_qk}, q.options().dtype(at::kFloat));
    p.dq_accum = call.dq_accum.data_ptr<float>();
  }
  call.needs_launch = true;
  return call;
}

}  // namespace deepseek_attn
