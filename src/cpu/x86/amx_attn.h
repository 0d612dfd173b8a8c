/* The pieces of cpu-amx shared by its files: the tile GEMM every product runs on, the packers that
 * bring blocks to tile layouts, and the forward and backward tile engines (plugged into the shared
 * drivers of src/cpu/attn_tiled*.c). Operands are padded to whole tiles with zeros:
 *   A: rows of 16-bit values (bf16 or fp16), lda elements apart, K padded to a multiple of 32;
 *   B: VNNI pairs, B[p][n] = (B(2p, n), B(2p + 1, n)) as one uint32, ldb pairs apart, N padded to
 *      a multiple of 16;
 *   C: fp32 rows, ldc apart, M and N multiples of 16. */
#ifndef CFLASH_CPU_X86_AMX_ATTN_H
#define CFLASH_CPU_X86_AMX_ATTN_H

#include <stdint.h>

#include "cpu/attn_cpu.h"

static inline int64_t cf_amx_round(int64_t x, int64_t m) {
    return (x + m - 1) / m * m;
}

/* C (+)= A B over tiles: C is mt x nt tiles of 16 x 16 fp32, A mt row tiles of 16 rows, B nt column
 * tiles; k-chunks [kc0, kc1) of 32 elements (16 pairs): A columns [32 kc0, 32 kc1), B pair rows
 * [16 kc0, 16 kc1). acc = 0 starts from 0. fp16: tdpfp16ps, else tdpbf16ps. Needs the thread's
 * tile configuration (cf_amx_thread_begin). */
void cf_amx_mm(float* C, int64_t ldc, const uint16_t* A, int64_t lda, const uint32_t* B,
               int64_t ldb, int64_t mt, int64_t nt, int64_t kc0, int64_t kc1, int acc, int fp16);

/* cf_attn_kernels.gemm_bf16 on the tiles (cpu-amx's table: the tiled backward's dbias tasks):
 * any M, N, P and strides, operands padded through buffers where they are no whole tiles (out of
 * memory: 16 x 16 pieces through stack copies, cf_amx_gemm_bf16_pieces, which tests call too).
 * Needs the thread's tile configuration. */
void cf_amx_gemm_bf16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                      const uint32_t* B, int64_t ldb, float* C, int64_t ldc, int acc);
void cf_amx_gemm_bf16_pieces(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                             int64_t csa, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                             int acc);
/* fp16 pairs for cpu-amx's dbias tasks on fp16 calls (cf_attn_cpu_dbias_tasks): exact fp16
 * products summed in fp32, on tdpfp16ps, or without AMX-FP16 every operand split into bf16 parts
 * where it is copied (cf_amx_mm2's three products); B split once by prep_b for all the A it meets.
 * run needs the thread's tile configuration. */
extern const cf_attn_pairs_gemm cf_amx_pairs_f16;

/* cf_amx_mm, or with the operands' low parts Al and Bl given (both, at A's and B's strides) on
 * bf16 pairs of parts (value = high + low): C (+)= A B + A Bl + Al B, the low parts' product
 * (2^-16 of the whole) left out. So fp16 runs on a CPU without AMX-FP16 (cf_amx_split16): three
 * tdpbf16ps for one tdpfp16ps. */
void cf_amx_mm2(float* C, int64_t ldc, const uint16_t* A, const uint16_t* Al, int64_t lda,
                const uint32_t* B, const uint32_t* Bl, int64_t ldb, int64_t mt, int64_t nt,
                int64_t kc0, int64_t kc1, int acc, int fp16);

/* S^T = K Q^T for a tile of w = 16 or 32 query rows (bf16): K's rows (ks bytes apart, D % 32 ==
 * 0, nb % 32 == 0 of them) read in place as the A operand, qt = Q^T in pairs ([D / 2][w]);
 * st[j * w + r] = K_j . Q_r. */
void cf_amx_kq(float* st, const char* krow, int64_t ks, const uint32_t* qt, int64_t D, int64_t nb,
               int64_t w);

/* The fp16 values x[r * ld + c] (r < rows, c < cols; any layout of 16-bit elements, pairs too)
 * split into bf16 parts, exactly: the high part in place, the low part at lo[r * ld + c] (0 for
 * an infinity or NaN, whose high part is itself). */
void cf_amx_split16(uint16_t* x, uint16_t* lo, int64_t rows, int64_t cols, int64_t ld);

/* dst[c * ldd + r] = src[r * lds + c] (32-bit), r < rows, c < cols, both multiples of 16. */
void cf_amx_t32(uint32_t* dst, int64_t ldd, const uint32_t* src, int64_t lds, int64_t rows,
                int64_t cols);

/* n rows of 16-bit elements (d each; the first at p, rs elements apart) as rows of dst (ldd
 * apart), zero-padded to `width` elements and to `rows` rows. */
void cf_amx_rows16_at(uint16_t* dst, int64_t ldd, int64_t width, int64_t rows, const char* p,
                      int64_t rs, int64_t n, int64_t d);
/* The same for rows [s0, s0 + n) of head h of sequence-row view v. */
void cf_amx_rows16(uint16_t* dst, int64_t ldd, int64_t width, int64_t rows, const cf_view* v,
                   int64_t b, int64_t s0, int64_t h, int64_t n, int64_t d);
/* The same rows as VNNI pairs: dst[q * ldd + x] = (row 2q [x], row 2q + 1 [x]) for x < d, zero for
 * x in [d, width) and pair rows past n, up to `pairs` pair rows. */
void cf_amx_rows_vnni_at(const cf_attn_kernels* k, uint32_t* dst, int64_t ldd, int64_t width,
                         int64_t pairs, const char* p, int64_t rs, int64_t n, int64_t d);
void cf_amx_rows_vnni(const cf_attn_kernels* k, uint32_t* dst, int64_t ldd, int64_t width,
                      int64_t pairs, const cf_view* v, int64_t b, int64_t s0, int64_t h, int64_t n,
                      int64_t d);
/* fp32 rows (n x d, lds apart) rounded to dt (bf16 or fp16) as rows of dst, zero-padded to width
 * and to `rows` rows. */
void cf_amx_f32_rows16(const cf_attn_kernels* k, uint16_t* dst, int64_t ldd, int64_t width,
                       int64_t rows, const float* src, int64_t lds, int64_t n, int64_t d,
                       cf_dtype dt);
/* The transposed operand of a product over h16's rows: dst[j * ldd + q] = (h16[2q][j],
 * h16[2q + 1][j]) for q < rows / 2, j < cols (rows a multiple of 32, cols of 16), through tmp
 * (rows / 2 x cols pairs). As A (uint16 rows ldd * 2 apart) it is h16^T. */
void cf_amx_pairs_t(const cf_attn_kernels* k, uint32_t* dst, int64_t ldd, uint32_t* tmp,
                    const uint16_t* h16, int64_t ldh, int64_t rows, int64_t cols);

/* Largest element of x[0, n) after x[i] *= s in place; NaN when any is NaN, -inf for n = 0. */
float cf_amx_row_scale_max(float* x, int64_t n, float s);
/* cf_amx_row_scale_max with issue 13's bias and mask fused in, as the general path applies them:
 * x[i] = x[i] * s + y[i] (y: n values of dtype bt, fp32 / bf16 / fp16, or NULL), -inf where y[i]
 * is -inf or mask[i] is 0 (mask: n bytes, or NULL); the product and the sum rounded apart. pf:
 * where the next block's y of this row starts, prefetched as y is read (or NULL). */
float cf_amx_row_bias_max(float* x, int64_t n, float s, const void* y, cf_dtype bt,
                          const uint8_t* mask, const void* pf);
/* exp(x[i] - b) for i < n (0 for -inf, NaN for NaN), returning their sum: written rounded into
 * p[i] (fp16 when fp16, else bf16), x unchanged; with p NULL into x[i] (fp32). One pass of the
 * forward's softmax. */
float cf_amx_exp_row_sum(float* x, int64_t n, float b, uint16_t* p, int fp16);

/* The engines: bf16 on tdpbf16ps, fp16 on tdpfp16ps (the caller checked AMX-FP16). */
cflash_status cf_amx_attn_fwd(const cf_attn_call* c, const cf_attn_kernels* k);
cflash_status cf_amx_attn_bwd(const cf_attn_call* c, const cf_attn_kernels* k);

/* The thread's tile configuration: palette 1, tiles 0-7 of 16 rows x 64 bytes. */
void cf_amx_thread_begin(void);
void cf_amx_thread_end(void);

static inline char* cf_amx_row_ptr(const cf_view* v, int64_t b, int64_t s, int64_t h) {
    return (char*)v->data + (b * v->stride[0] + s * v->stride[1] + h * v->stride[2]) *
                                (int64_t)cf_dtype_size(v->dtype);
}

#endif
