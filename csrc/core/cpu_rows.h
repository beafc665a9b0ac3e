#pragma once
// The row kernels of the CPU attention core (forward and backward): logits from raw dot
// products, row maxima, exp2 in place, rescaling, the softmax gradient, and the column mask of
// index lists. fp32 versions get AVX2/AVX-512 clones (cpu_rows.cpp); fp64 ones serve gradcheck.

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace deepseek_attn::cpu {

// Turns raw q·k dot products of one row into log2-domain logits: scale, soft-cap, and -inf
// outside columns [visible_begin, visible_end). Writes tanh of the capped logits to `tanh_out`
// when soft-capping (the backward needs it).
void scores_to_logits(float* s, int64_t cols, float scale, float softcap, int64_t visible_begin,
                      int64_t visible_end, float* tanh_out);
void scores_to_logits(double* s, int64_t cols, double scale, double softcap, int64_t visible_begin,
                      int64_t visible_end, double* tanh_out);

float row_max(const float* s, int64_t cols);
double row_max(const double* s, int64_t cols);

// s <- 2^(s - shift) in place; returns the row sum. A shift of -inf means an empty row: zeros.
float exp2_shifted_inplace(float* s, int64_t cols, float shift);
double exp2_shifted_inplace(double* s, int64_t cols, double shift);

// The same with the probabilities rounded to bf16 into `out`; s is left as it was.
float exp2_shifted_to_bf16(float* s, int64_t cols, float shift, c10::BFloat16* out);

// Scores of a few query rows against key rows read where they lie: out[c * rows + r] =
// key c (ld_k apart) · query r (fp32, `dim` each), for rows <= kMaxDotRows. A decode with one
// query row per kv head (MHA) is a matrix-vector product, which GEMM micro-kernels waste.
constexpr int64_t kMaxDotRows = 4;
void key_dots(const float* keys, int64_t ld_k, int64_t cols, const float* queries, int64_t rows,
              int64_t dim, float* out);
void key_dots(const c10::BFloat16* keys, int64_t ld_k, int64_t cols, const float* queries,
              int64_t rows, int64_t dim, float* out);

// out[r] (dim fp32) += sum over c of probs[r * ld_p + c] * value row c (ld_v apart), for
// rows <= kMaxDotRows: the P·V of such a decode, V read where it lies.
void accumulate_values(const float* values, int64_t ld_v, int64_t cols, const float* probs,
                       int64_t ld_p, int64_t rows, int64_t dim, float* out);
void accumulate_values(const c10::BFloat16* values, int64_t ld_v, int64_t cols,
                       const c10::BFloat16* probs, int64_t ld_p, int64_t rows, int64_t dim,
                       float* out);

// fp32 to bf16, round to nearest even (finite values: probabilities and their gradients).
void round_to_bf16(const float* src, int64_t n, c10::BFloat16* dst);

// Two rows of 16-bit values as n pairs (first[d], second[d]): the VNNI pairing of a bf16/fp16
// B operand.
void interleave_rows(const uint16_t* first, const uint16_t* second, int64_t n, uint32_t* out);

void scale_row(float* x, int64_t n, float factor);
void scale_row(double* x, int64_t n, double factor);

// dS = P * (dP - delta) [* (1 - tanh^2) when soft-capped], in place over dP.
void softmax_grad_row(float* dp, const float* p, const float* tanh_row, int64_t cols, float delta);
void softmax_grad_row(double* dp, const double* p, const double* tanh_row, int64_t cols,
                      double delta);

}  // namespace deepseek_attn::cpu
