#include "core/checks.h"

#include <cmath>
#include <vector>

#include "common/checks.h"

namespace deepseek_attn {

namespace {

bool is_latent_fp8(const at::Tensor& k) { return k.scalar_type() == at::kByte; }

void check_int32_tensor(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t rank,
                        const char* layout) {
  check_rank(t, name, rank, layout);
  check_same_device(t, name, q, "q");
  check_dtype(t, name, at::kInt);
  check_last_dim_contiguous(t, name);
}

// The K/V part: storage, head dims, pages.
void check_kv_source(const CoreFwdInputs& in, CoreFwdParams& p) {
  const at::Tensor& q = in.q;
  const at::Tensor& k = in.k;
  const bool paged = in.block_table.has_value();
  check_rank(k, "k", 4,
             paged ? "(num_pages, page_size, heads_kv, head_dim)"
                   : "(batch, seqlen_k, heads_kv, head_dim)");
  check_same_device(k, "k", q, "q");
  check_last_dim_contiguous(k, "k");
  p.heads_kv = k.size(2);
  p.kv.separate_values = in.v.has_value();
  if (is_latent_fp8(k)) {
    constexpr int64_t kRowBytes = LatentFp8Layout::kRowBytes;
    p.kv.storage = KvStorage::kLatentFp8;
    check_size(k, "k", 3, kRowBytes, "bytes of an FP8 latent row, SPEC §3");
    check_size(k, "k", 2, 1, "heads_kv: the latent cache has one head");
    DEEPSEEK_ATTN_CHECK_VALUE(p.head_dim_qk == LatentFp8Layout::kDim,
                              "q head_dim must be 576 to read the FP8 latent cache (got ",
                              p.head_dim_qk, ")");
    DEEPSEEK_ATTN_CHECK_VALUE(!in.v.has_value(),
                              "v must be None with the FP8 latent cache: its values are the "
                              "first 512 columns of each row");
    DEEPSEEK_ATTN_CHECK_VALUE(in.head_dim_v == -1 || in.head_dim_v == LatentFp8Layout::kQuantized,
                              "head_dim_v must be -1 or 512 with the FP8 latent cache (got ",
                              in.head_dim_v, ")");
    p.head_dim_v = LatentFp8Layout::kQuantized;
  } else {
    check_same_dtype(k, "k", q, "q");
    check_size(k, "k", 3, p.head_dim_qk, "head_dim, as in q");
    if (in.v.has_value()) {
      const at::Tensor& v = *in.v;
      check_rank(v, "v", 4, "like k, with head_dim_v last");
      check_same_device(v, "v", q, "q");
      check_same_dtype(v, "v", q, "q");
      check_last_dim_contiguous(v, "v");
      for (int64_t dim = 0; dim < 3; ++dim) check_size(v, "v", dim, k.size(dim), "as in k");
      DEEPSEEK_ATTN_CHECK_VALUE(in.head_dim_v == -1 || in.head_dim_v == v.size(3),
                                "head_dim_v must be -1 or v's head dim ", v.size(3), " (got ",
                                in.head_dim_v, ")");
      p.head_dim_v = v.size(3);
    } else {
      DEEPSEEK_ATTN_CHECK_VALUE(in.head_dim_v > 0 && in.head_dim_v <= p.head_dim_qk,
                                "head_dim_v must be in [1, ", p.head_dim_qk,
                                "] when v is None (values are the first head_dim_v columns of "
                                "k) (got ",
                                in.head_dim_v, ")");
      p.head_dim_v = in.head_dim_v;
    }
  }
  DEEPSEEK_ATTN_CHECK_VALUE(
      p.heads_kv > 0 && p.heads_q % p.heads_kv == 0, "the number of query heads (", p.heads_q,
      ") must be a multiple of the number of key/value heads (", p.heads_kv, ")");
  if (paged) {
    const at::Tensor& table = *in.block_table;
    check_int32_tensor(table, "block_table", q, 2, "(batch, max_pages)");
    check_size(table, "block_table", 0, p.batch, "batch, as in q");
    DEEPSEEK_ATTN_CHECK_VALUE(k.size(1) > 0, "k.size(1) (page_size) must be positive (got ",
                              k.size(1), ")");
    p.kv.page_size = k.size(1);
    p.kv.num_pages = k.size(0);
    p.kv.max_pages = table.size(1);
    p.seqlen_k = p.kv.max_pages * p.kv.page_size;
  } else {
    check_size(k, "k", 0, p.batch, "batch, as in q");
    p.seqlen_k = k.size(1);
    p.kv.page_size = std::max<int64_t>(p.seqlen_k, 1);
    p.kv.num_pages = p.batch;
  }
  if (in.cache_seqlens.has_value()) {
    check_int32_tensor(*in.cache_seqlens, "cache_seqlens", q, 1, "(batch,)");
    check_size(*in.cache_seqlens, "cache_seqlens", 0, p.batch, "batch, as in q");
  }
}

void check_selection(const CoreFwdInputs& in, const CoreFwdParams& p) {
  if (!in.indices.has_value()) return;
  const at::Tensor& indices = *in.indices;
  check_int32_tensor(indices, "indices", in.q, 4, "(batch, seqlen_q, heads_kv, num_indices)");
  check_size(indices, "indices", 0, p.batch, "batch, as in q");
  check_size(indices, "indices", 1, p.seqlen_q, "seqlen_q, as in q");
  check_size(indices, "indices", 2, p.heads_kv, "heads_kv, as in k");
  DEEPSEEK_ATTN_CHECK_VALUE(in.index_block_size >= 1,
                            "index_block_size must be >= 1 (1: token indices) (got ",
                            in.index_block_size, ")");
}

}  // namespace

void check_supported_attention_dtype(const at::Tensor& q) {
  const auto dtype = q.scalar_type();
  const bool low_or_single = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  if (q.is_cpu()) {
    // fp64 is accepted on CPU so gradients can be checked numerically.
    DEEPSEEK_ATTN_CHECK_TYPE(low_or_single || dtype == at::kDouble,
                             "q must have dtype float32, bfloat16, float16 or float64 (got ", dtype,
                             ")");
  } else {
    DEEPSEEK_ATTN_CHECK_TYPE(dtype == at::kBFloat16 || dtype == at::kHalf,
                             "q must have dtype bfloat16 or float16 on ", q.device().type(),
                             " (got ", dtype, ")");
  }
}

void check_attention_scalars(AttentionShape& p, double softmax_scale, bool causal,
                             int64_t window_left, int64_t window_right, double softcap) {
  DEEPSEEK_ATTN_CHECK_VALUE(std::isfinite(softmax_scale) && softmax_scale > 0,
                            "softmax_scale must be a positive finite number (got ", softmax_scale,
                            ")");
  DEEPSEEK_ATTN_CHECK_VALUE(std::isfinite(softcap) && softcap >= 0,
                            "softcap must be >= 0 (0 disables it) (got ", softcap, ")");
  DEEPSEEK_ATTN_CHECK_VALUE(window_left >= -1 && window_right >= -1,
                            "window_size entries must be >= -1 (-1 = unbounded) (got (",
                            window_left, ", ", window_right, "))");
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.softcap = static_cast<float>(softcap);
  p.window_left = window_left;
  // Causal is the window (window_left, 0), as in flash-attn.
  p.window_right = causal ? 0 : window_right;
}

BshdStrides bshd_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

CoreFwdParams check_core_fwd_inputs(const CoreFwdInputs& in, double softmax_scale, bool causal,
                                    int64_t window_left, int64_t window_right, double softcap) {
  const at::Tensor& q = in.q;
  check_defined(q, "q");
  check_defined(in.k, "k");
  check_rank(q, "q", 4, "(batch, seqlen_q, heads_q, head_dim)");
  check_supported_attention_dtype(q);
  check_last_dim_contiguous(q, "q");
  AttentionShape shape;
  shape.batch = q.size(0);
  shape.seqlen_q = q.size(1);
  shape.heads_q = q.size(2);
  shape.head_dim_qk = q.size(3);
  DEEPSEEK_ATTN_CHECK_VALUE(shape.head_dim_qk > 0, "q head_dim must be positive (got ",
                            shape.head_dim_qk, ")");
  check_attention_scalars(shape, softmax_scale, causal, window_left, window_right, softcap);
  CoreFwdParams p(shape);
  check_kv_source(in, p);
  check_selection(in, p);
  return p;
}

void check_core_index_values(const CoreFwdParams& p, const CoreFwdInputs& in) {
  std::vector<int64_t> seqlens(p.batch, p.seqlen_k);
  if (in.cache_seqlens.has_value()) {
    const at::Tensor lengths = in.cache_seqlens->cpu().contiguous();
    const int32_t* data = lengths.data_ptr<int32_t>();
    for (int64_t b = 0; b < p.batch; ++b) {
      DEEPSEEK_ATTN_CHECK_VALUE(data[b] >= 0 && data[b] <= p.seqlen_k, "cache_seqlens[", b,
                                "] must be in [0, ", p.seqlen_k,
                                "] (the keys the cache holds for a sequence) (got ", data[b], ")");
      seqlens[b] = data[b];
    }
  }
  if (in.block_table.has_value()) {
    const at::Tensor table_cpu = in.block_table->cpu();
    const auto table = table_cpu.accessor<int32_t, 2>();
    for (int64_t b = 0; b < p.batch; ++b) {
      const int64_t used = (seqlens[b] + p.kv.page_size - 1) / p.kv.page_size;
      for (int64_t slot = 0; slot < used; ++slot) {
        DEEPSEEK_ATTN_CHECK_VALUE(table[b][slot] >= 0 && table[b][slot] < p.kv.num_pages,
                                  "block_table[", b, ", ", slot, "] must be a page of k in [0, ",
                                  p.kv.num_pages, ") since sequence ", b, " has ", seqlens[b],
                                  " keys (got ", table[b][slot], ")");
      }
    }
  }
  if (in.indices.has_value()) {
    const at::Tensor indices_cpu = in.indices->cpu();
    const auto indices = indices_cpu.accessor<int32_t, 4>();
    const int64_t block = in.index_block_size;
    for (int64_t b = 0; b < indices.size(0); ++b) {
      for (int64_t i = 0; i < indices.size(1); ++i) {
        for (int64_t h = 0; h < indices.size(2); ++h) {
          for (int64_t n = 0; n < indices.size(3); ++n) {
            const int64_t index = indices[b][i][h][n];
            DEEPSEEK_ATTN_CHECK_VALUE(
                index >= -1 && index * block < seqlens[b], "indices[", b, ", ", i, ", ", h, ", ", n,
                "] = ", index, " is out of range: sequence ", b, " has ", seqlens[b],
                " keys (index_block_size ", block, "); -1 marks an empty slot");
          }
        }
      }
    }
  }
}

void point_core_params(CoreFwdParams& p, const at::Tensor& q, const at::Tensor& k,
                       const std::optional<at::Tensor>& v, const CoreFwdInputs& in,
                       const at::Tensor& out, const at::Tensor& lse) {
  p.q = q.data_ptr();
  p.q_strides = bshd_strides(q);
  p.out = out.data_ptr();
  p.out_strides = bshd_strides(out);
  p.lse = lse.data_ptr<float>();
  p.kv.k = k.data_ptr();
  p.kv.k_strides = bshd_strides(k);
  if (v.has_value()) {
    p.kv.v = v->data_ptr();
    p.kv.v_strides = bshd_strides(*v);
  } else {
    p.kv.v = nullptr;
    p.kv.v_strides = p.kv.k_strides;
  }
  if (in.block_table.has_value()) {
    p.kv.block_table = in.block_table->data_ptr<int32_t>();
    p.kv.block_table_stride = in.block_table->stride(0);
  }
  if (in.cache_seqlens.has_value()) {
    p.kv.cache_seqlens = in.cache_seqlens->data_ptr<int32_t>();
  }
  if (in.indices.has_value()) {
    const at::Tensor& indices = *in.indices;
    p.selection.indices = indices.data_ptr<int32_t>();
    p.selection.index_strides = bshd_strides(indices);
    p.selection.num_indices = indices.size(3);
    p.selection.index_block_size = in.index_block_size;
  }
}

}  // namespace deepseek_attn
