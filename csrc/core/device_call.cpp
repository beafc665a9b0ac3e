// See device_call.h. Plain ATen: no CUDA headers, so the CPU-only build compiles it too.

#include "core/device_call.h"

#include <limits>

#include "common/checks.h"
#include "common/vector_loads.h"
#include "core/head_dims.h"
#include "core/heuristics.h"

namespace deepseek_attn {
namespace {

void check_device_support(const CoreFwdParams& p, const CoreFwdInputs& in) {
  const CoreKv kv = p.kv.policy();
  bool supported = kv != CoreKv::kRows && p.head_dim_qk == cuda::kCoreLatentDimQK &&
                   p.head_dim_v == cuda::kCoreLatentDimV;
#define DEEPSEEK_ATTN_IS_SUPPORTED(QK, V) (p.head_dim_qk == QK && p.head_dim_v == V) ||
  supported = supported || (kv == CoreKv::kRows &&
                            (DEEPSEEK_ATTN_CORE_ROWS_HEAD_DIMS(DEEPSEEK_ATTN_IS_SUPPORTED) false));
#undef DEEPSEEK_ATTN_IS_SUPPORTED
  DEEPSEEK_ATTN_CHECK_VALUE(
      supported, "head dims (q/k ", p.head_dim_qk, ", v ", p.head_dim_v,
      kv == CoreKv::kRows ? ", separate v" : ", values in k",
      ") are not supported by the CUDA core; supported (Dqk/Dv): ", cuda::kCoreSupportedHeadDims);
  DEEPSEEK_ATTN_CHECK_TYPE(kv == CoreKv::kRows || in.q.scalar_type() == at::kBFloat16,
                           "q must be bfloat16 to read a latent cache on CUDA (got ",
                           in.q.scalar_type(), ")");
  DEEPSEEK_ATTN_CHECK_VALUE(kv != CoreKv::kRows || !in.indices.has_value() ||
                                cuda::core_lists_compiled(int(p.head_dim_qk), int(p.head_dim_v)),
                            "index lists over separate K/V rows take head dims ",
                            cuda::kCoreListedHeadDims, " on CUDA (got ", p.head_dim_qk, "/",
                            p.head_dim_v, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(p.heads_kv <= 16383 && p.batch <= 65535,
                            "at most 16383 kv heads and a batch of 65535 are supported on CUDA "
                            "(got ",
                            p.heads_kv, " and ", p.batch, ")");
}

}  // namespace

void allocate_split_partials(SplitKvParams& split, const AttentionShape& shape,
                             const at::TensorOptions& options, at::Tensor& partial_out,
                             at::Tensor& partial_lse) {
  if (split.num_splits <= 1) return;
  const auto fp32 = options.dtype(at::kFloat);
  // Uniform: (splits, B) slots; balanced: a slot per (part, batch) piece, part + batch.
  const int64_t slots =
      split.balanced ? split.num_splits + shape.batch - 1 : split.num_splits * shape.batch;
  partial_out = at::empty({slots, shape.heads_q, shape.seqlen_q, shape.head_dim_v}, fp32);
  partial_lse = at::empty({slots, shape.heads_q, shape.seqlen_q}, fp32);
  split.partial_out = partial_out.data_ptr<float>();
  split.partial_lse = partial_lse.data_ptr<float>();
}

CoreFwdCall prepare_attention_core_fwd(const CoreFwdInputs& in, double softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, double softcap,
                                       const DeviceArch& arch) {
  CoreFwdCall call;
  CoreFwdParams& p = call.params;
  p = check_core_fwd_inputs(in, softmax_scale, causal, window_left, window_right, softcap);
  check_device_support(p, in);
  if (index_value_checks_requested()) check_core_index_values(p, in);  // a debug switch: copies to the host
  call.q = aligned_for_vector_loads(in.q);
  call.k = aligned_for_vector_loads(in.k);
  if (in.v.has_value()) call.v = aligned_for_vector_loads(*in.v);
  call.out = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim_v}, in.q.options());
  call.lse = at::empty({p.batch, p.heads_q, p.seqlen_q}, in.q.options().dtype(at::kFloat));
  if (call.out.numel() == 0) return call;
  if (p.seqlen_k == 0) {  // every row sees nothing
    call.out.zero_();
    call.lse.fill_(-std::numeric_limits<float>::infinity());
    return call;
  }
  point_core_params(p, call.q, call.k, call.v, in, call.out, call.lse);

  if (!p.selection.listed()) {
    const bool latent = p.kv.policy() != CoreKv::kRows;
    const QueryTiles tiles(p.heads_per_kv(), 0, p.seqlen_q, cuda::core_block_m(latent));
    const int block_n = cuda::core_block_n(latent, p.head_dim_qk, p.head_dim_v);
    const int64_t ctas = p.heads_kv * tiles.token_tiles * tiles.head_chunks;
    const int64_t key_blocks = (p.seqlen_k + block_n - 1) / block_n;
    const int parts = latent && in.cache_seqlens.has_value()
                          ? cuda::choose_balanced_parts(ctas, p.batch * key_blocks, arch.sm_count)
                          : 1;
    if (parts > 1) {  // MLA decode: even work per part, whatever the cache_seqlens
      call.split.num_splits = parts;
      call.split.balanced = true;
    } else {
      call.split.num_splits =
          cuda::choose_split_count(p.batch * ctas, key_blocks, p.batch, arch.sm_count);
    }
  }
  allocate_split_partials(call.split, p, in.q.options(), call.partial_out, call.partial_lse);
  call.needs_launch = true;
  return call;
}

}  // namespace deepseek_attn
