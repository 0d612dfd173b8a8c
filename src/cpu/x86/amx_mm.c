/* cpu-amx: the tile GEMM that every product of the forward and backward runs on, and the
 * AVX-512 packers that bring blocks to its operand layouts (amx_attn.h). The tiles are used as
 * 2 x 2 accumulators (tmm0-3) fed by two A tiles (tmm4-5) and two B tiles (tmm6-7), so each tile
 * loaded serves two multiplies. fp16 on a CPU without AMX-FP16 runs on the same tiles as bf16 pairs
 * (cf_amx_split16: each value the sum of two bf16, exactly), three tdpbf16ps a product. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/x86/amx_attn.h"
#include "cpu/x86/amx_tiles.h"

#ifdef CF_AMX_CODE
#include <immintrin.h>

#define CF_SIMD_AVX512
#include "cpu/simd_vec.h"

#define INLINE static inline __attribute__((always_inline))

/* ---- Tile GEMM ---------------------------------------------------------------------------------
 */

#define DP(FP16, c, a, b)                                                                          \
    do {                                                                                           \
        if (FP16)                                                                                  \
            CF_TILE_DPFP16(c, a, b);                                                               \
        else                                                                                       \
            CF_TILE_DPBF16(c, a, b);                                                               \
    } while (0)

/* The operand tiles of k-chunk k: A rows (tmm4-5) and B columns (tmm6-7). */
#define LOAD_A(A_, k)                                                                              \
    do {                                                                                           \
        CF_TILE_LOAD(4, (A_) + 32 * (k), sa);                                                      \
        if (MI > 1) CF_TILE_LOAD(5, (A_) + 32 * (k) + 16 * lda, sa);                               \
    } while (0)
#define LOAD_B(B_, k)                                                                              \
    do {                                                                                           \
        CF_TILE_LOAD(6, (B_) + 16 * (k)*ldb, sb);                                                  \
        if (NJ > 1) CF_TILE_LOAD(7, (B_) + 16 * (k)*ldb + 16, sb);                                 \
    } while (0)
#define DP4(FP16)                                                                                  \
    do {                                                                                           \
        DP(FP16, 0, 4, 6);                                                                         \
        if (NJ > 1) DP(FP16, 1, 4, 7);                                                             \
        if (MI > 1) DP(FP16, 2, 5, 6);                                                             \
        if (MI > 1 && NJ > 1) DP(FP16, 3, 5, 7);                                                   \
    } while (0)

/* One MI x NJ (1 or 2 each) block of C tiles over k-chunks [kc0, kc1). SPLIT (bf16): each
 * operand is a pair, value = high + low (A, Al; B, Bl), and C takes A B + A Bl + Al B. */
CF_AMX_TARGET INLINE void mm_block(const int MI, const int NJ, const int FP16, const int SPLIT,
                                   float* C, int64_t ldc, const uint16_t* A, const uint16_t* Al,
                                   int64_t lda, const uint32_t* B, const uint32_t* Bl, int64_t ldb,
                                   int64_t kc0, int64_t kc1, int acc) {
    const int64_t sc = ldc * 4, sa = lda * 2, sb = ldb * 4;
    float *c0 = C, *c1 = C + 16, *c2 = C + 16 * ldc, *c3 = C + 16 * ldc + 16;
    if (acc) {
        CF_TILE_LOAD(0, c0, sc);
        if (NJ > 1) CF_TILE_LOAD(1, c1, sc);
        if (MI > 1) CF_TILE_LOAD(2, c2, sc);
        if (MI > 1 && NJ > 1) CF_TILE_LOAD(3, c3, sc);
    } else {
        CF_TILE_ZERO(0);
        if (NJ > 1) CF_TILE_ZERO(1);
        if (MI > 1) CF_TILE_ZERO(2);
        if (MI > 1 && NJ > 1) CF_TILE_ZERO(3);
    }
    for (int64_t k = kc0; k < kc1; k++) {
        LOAD_A(A, k);
        LOAD_B(B, k);
        DP4(FP16);
        if (SPLIT) {
            LOAD_A(Al, k); /* Al B */
            DP4(0);
            LOAD_A(A, k); /* A Bl */
            LOAD_B(Bl, k);
            DP4(0);
        }
    }
    CF_TILE_STORE(0, c0, sc);
    if (NJ > 1) CF_TILE_STORE(1, c1, sc);
    if (MI > 1) CF_TILE_STORE(2, c2, sc);
    if (MI > 1 && NJ > 1) CF_TILE_STORE(3, c3, sc);
}
#undef LOAD_A
#undef LOAD_B
#undef DP4

typedef void (*mm_fn)(float*, int64_t, const uint16_t*, const uint16_t*, int64_t, const uint32_t*,
                      const uint32_t*, int64_t, int64_t, int64_t, int);
#define MM(MI, NJ, FP, SP)                                                                         \
    CF_AMX_TARGET static void mm_##MI##NJ##FP##SP(                                                 \
        float* C, int64_t ldc, const uint16_t* A, const uint16_t* Al, int64_t lda,                 \
        const uint32_t* B, const uint32_t* Bl, int64_t ldb, int64_t kc0, int64_t kc1, int acc) {   \
        mm_block(MI, NJ, FP, SP, C, ldc, A, Al, lda, B, Bl, ldb, kc0, kc1, acc);                   \
    }
/* The four block shapes of one kind: bf16 (0, 0), fp16 tiles (1, 0), bf16 pairs (0, 1). */
#define MM4(FP, SP) MM(1, 1, FP, SP) MM(1, 2, FP, SP) MM(2, 1, FP, SP) MM(2, 2, FP, SP)
MM4(0, 0)
MM4(1, 0)
MM4(0, 1)
/* [fp16 tiles or split pairs][MI - 1][NJ - 1] */
static const mm_fn mm_tab[3][2][2] = {{{mm_1100, mm_1200}, {mm_2100, mm_2200}},
                                      {{mm_1110, mm_1210}, {mm_2110, mm_2210}},
                                      {{mm_1101, mm_1201}, {mm_2101, mm_2201}}};

static void mm_run(int kind, float* C, int64_t ldc, const uint16_t* A, const uint16_t* Al,
                   int64_t lda, const uint32_t* B, const uint32_t* Bl, int64_t ldb, int64_t mt,
                   int64_t nt, int64_t kc0, int64_t kc1, int acc) {
    if (acc && kc1 <= kc0) return;
    for (int64_t i = 0; i < mt; i += 2)
        for (int64_t j = 0; j < nt; j += 2) {
            const int mi = mt - i > 1 ? 2 : 1, nj = nt - j > 1 ? 2 : 1;
            mm_tab[kind][mi - 1][nj - 1](C + 16 * i * ldc + 16 * j, ldc, A + 16 * i * lda,
                                         Al ? Al + 16 * i * lda : NULL, lda, B + 16 * j,
                                         Bl ? Bl + 16 * j : NULL, ldb, kc0, kc1, acc);
        }
}

void cf_amx_mm(float* C, int64_t ldc, const uint16_t* A, int64_t lda, const uint32_t* B,
               int64_t ldb, int64_t mt, int64_t nt, int64_t kc0, int64_t kc1, int acc, int fp16) {
    mm_run(fp16 != 0, C, ldc, A, NULL, lda, B, NULL, ldb, mt, nt, kc0, kc1, acc);
}

void cf_amx_mm2(float* C, int64_t ldc, const uint16_t* A, const uint16_t* Al, int64_t lda,
                const uint32_t* B, const uint32_t* Bl, int64_t ldb, int64_t mt, int64_t nt,
                int64_t kc0, int64_t kc1, int acc, int fp16) {
    mm_run(Al && Bl ? 2 : fp16 != 0, C, ldc, A, Al, lda, B, Bl, ldb, mt, nt, kc0, kc1, acc);
}

/* st[j * w + r] = K_j . Q_r (bf16 products, fp32 sums) for nb keys (nb % 32 == 0) whose rows,
 * ks bytes apart, are the A operand where they are, and the w = 16 or 32 rows of Q as B: Q^T in
 * pairs, qt[p * w + r] = (Q_r[2p], Q_r[2p + 1]), D % 32 == 0. Two products in flight per step
 * (two key tiles on one Q tile, or one key tile on two). */
CF_AMX_TARGET void cf_amx_kq(float* st, const char* krow, int64_t ks, const uint32_t* qt, int64_t D,
                             int64_t nb, int64_t w) {
    if (w == 16) {
        for (int64_t j0 = 0; j0 < nb; j0 += 32) {
            CF_TILE_ZERO(0);
            CF_TILE_ZERO(5);
            for (int64_t d0 = 0; d0 < D; d0 += 32) {
                CF_TILE_LOAD(2, qt + (d0 / 2) * 16, 64);
                CF_TILE_LOAD(1, krow + j0 * ks + d0 * 2, ks);
                CF_TILE_LOAD(3, krow + (j0 + 16) * ks + d0 * 2, ks);
                CF_TILE_DPBF16(0, 1, 2);
                CF_TILE_DPBF16(5, 3, 2);
            }
            CF_TILE_STORE(0, st + j0 * 16, 64);
            CF_TILE_STORE(5, st + (j0 + 16) * 16, 64);
        }
        return;
    }
    for (int64_t j0 = 0; j0 < nb; j0 += 16) {
        CF_TILE_ZERO(0);
        CF_TILE_ZERO(5);
        for (int64_t d0 = 0; d0 < D; d0 += 32) {
            CF_TILE_LOAD(2, qt + (d0 / 2) * 32, 128);
            CF_TILE_LOAD(3, qt + (d0 / 2) * 32 + 16, 128);
            CF_TILE_LOAD(1, krow + j0 * ks + d0 * 2, ks);
            CF_TILE_DPBF16(0, 1, 2);
            CF_TILE_DPBF16(5, 1, 3);
        }
        CF_TILE_STORE(0, st + j0 * 32, 128);
        CF_TILE_STORE(5, st + j0 * 32 + 16, 128);
    }
}

/* cf_amx_gemm_bf16 a 16 x 16 piece at a time, each piece of A, B and C through zero-padded copies
 * on the stack (no allocation; several times slower than whole panels). */
CF_AMX_TARGET void cf_amx_gemm_bf16_pieces(int64_t M, int64_t N, int64_t P, const uint32_t* A,
                                           int64_t rsa, int64_t csa, const uint32_t* B, int64_t ldb,
                                           float* C, int64_t ldc, int acc) {
    uint32_t a[16 * 16] __attribute__((aligned(64))), b[16 * 16] __attribute__((aligned(64)));
    float c[16 * 16] __attribute__((aligned(64)));
    for (int64_t m0 = 0; m0 < M; m0 += 16)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            const int64_t mm = M - m0 < 16 ? M - m0 : 16, nn = N - n0 < 16 ? N - n0 : 16;
            memset(c, 0, sizeof c);
            for (int64_t i = 0; acc && i < mm; i++)
                memcpy(c + 16 * i, C + (m0 + i) * ldc + n0, sizeof(float) * (size_t)nn);
            for (int64_t p0 = 0; p0 < P; p0 += 16) {
                const int64_t pp = P - p0 < 16 ? P - p0 : 16;
                memset(a, 0, sizeof a), memset(b, 0, sizeof b);
                for (int64_t i = 0; i < mm; i++)
                    for (int64_t q = 0; q < pp; q++)
                        a[16 * i + q] = A[(m0 + i) * rsa + (p0 + q) * csa];
                for (int64_t q = 0; q < pp; q++)
                    memcpy(b + 16 * q, B + (p0 + q) * ldb + n0, sizeof(uint32_t) * (size_t)nn);
                mm_run(0, c, 16, (const uint16_t*)a, NULL, 32, b, NULL, 16, 1, 1, 0, 1, 1);
            }
            for (int64_t i = 0; i < mm; i++)
                memcpy(C + (m0 + i) * ldc + n0, c + 16 * i, sizeof(float) * (size_t)nn);
        }
}

/* dst (rows16 x cols16, ld cols16) = the rows x cols elements of src (row r at src + r * rs,
 * element c at c * cs), zero-padded. */
static void pad_copy(uint32_t* dst, int64_t rows16, int64_t cols16, const uint32_t* src,
                     int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    for (int64_t r = 0; r < rows; r++) {
        uint32_t* d = dst + r * cols16;
        const uint32_t* x = src + r * rs;
        if (cs == 1)
            memcpy(d, x, sizeof(uint32_t) * (size_t)cols);
        else
            for (int64_t c = 0; c < cols; c++)
                d[c] = x[c * cs];
        memset(d + cols, 0, sizeof(uint32_t) * (size_t)(cols16 - cols));
    }
    memset(dst + rows * cols16, 0, sizeof(uint32_t) * (size_t)((rows16 - rows) * cols16));
}

/* C (M x N) (+)= A (M x P pairs, A(m, p) at A[m * rsa + p * csa]) times B, whose P16 x N16 pair
 * rows b are already zero-padded (bl: their low parts, for mm_run's kind 2): A goes zero-padded to
 * a (and split into al, kind 2), C through c (M16 x N16) unless M and N are whole tiles. */
static void padded_run(int kind, int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                       int64_t csa, const uint32_t* b, const uint32_t* bl, float* C, int64_t ldc,
                       int acc, uint32_t* a, uint32_t* al, float* c) {
    const int64_t M16 = cf_amx_round(M, 16), N16 = cf_amx_round(N, 16), P16 = cf_amx_round(P, 16);
    if (P16 == 0) { /* (C = acc ? C : 0) */
        for (int64_t m = 0; !acc && m < M; m++)
            memset(C + m * ldc, 0, sizeof(float) * (size_t)N);
        return;
    }
    pad_copy(a, M16, P16, A, M, P, rsa, csa);
    if (kind == 2) cf_amx_split16((uint16_t*)a, (uint16_t*)al, 1, 2 * M16 * P16, 0);
    const int direct = M % 16 == 0 && N % 16 == 0; /* C's own rows take whole tiles */
    if (acc && !direct) {
        memset(c, 0, sizeof(float) * (size_t)(M16 * N16));
        for (int64_t m = 0; m < M; m++)
            memcpy(c + m * N16, C + m * ldc, sizeof(float) * (size_t)N);
    }
    mm_run(kind, direct ? C : c, direct ? ldc : N16, (const uint16_t*)a,
           kind == 2 ? (const uint16_t*)al : NULL, 2 * P16, b, kind == 2 ? bl : NULL, N16, M16 / 16,
           N16 / 16, 0, P16 / 16, acc);
    for (int64_t m = 0; !direct && m < M; m++)
        memcpy(C + m * ldc, c + m * N16, sizeof(float) * (size_t)N);
}

/* The table's gemm_bf16 (cf_attn_kernels) on the tiles: C (M x N) (+)= A (M x P pairs, A(m, p) at
 * A[m * rsa + p * csa]) times B (P pair rows, VNNI, ldb apart). Whole tiles (csa 1; M, N, P
 * multiples of 16) are read where they are; otherwise A and B go zero-padded through buffers, and
 * C through one unless M and N are whole tiles (out of memory: cf_amx_gemm_bf16_pieces). */
CF_AMX_TARGET void cf_amx_gemm_bf16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                                    int64_t csa, const uint32_t* B, int64_t ldb, float* C,
                                    int64_t ldc, int acc) {
    if (M <= 0 || N <= 0) return;
    if (csa == 1 && M % 16 == 0 && N % 16 == 0 && P % 16 == 0 && P > 0) {
        mm_run(0, C, ldc, (const uint16_t*)A, NULL, 2 * rsa, B, NULL, ldb, M / 16, N / 16, 0,
               P / 16, acc);
        return;
    }
    const int64_t M16 = cf_amx_round(M, 16), N16 = cf_amx_round(N, 16), P16 = cf_amx_round(P, 16);
    uint32_t* a = malloc(sizeof(uint32_t) * (size_t)(M16 * P16 + P16 * N16 + M16 * N16 + 1));
    if (!a) {
        cf_amx_gemm_bf16_pieces(M, N, P, A, rsa, csa, B, ldb, C, ldc, acc);
        return;
    }
    uint32_t* b = a + M16 * P16;
    pad_copy(b, P16, N16, B, P, N, ldb, 1);
    padded_run(0, M, N, P, A, rsa, csa, b, NULL, C, ldc, acc, a, NULL, (float*)(b + P16 * N16));
    free(a);
}

/* ---- fp16 pairs with B prepared (cf_amx_pairs_f16) ----------------------------------------------
 * The prepared B: P16 pair rows of N16, zero-padded, then (split) their low parts. The scratch:
 * A padded to M16 x P16 pairs, its low parts, then C's buffer (M16 x N16) where C's own rows take
 * no whole tiles. */

static int f16_split(void) {
    return !CF_AMX_HAS_FP16();
}

static size_t f16_b_bytes(int64_t N, int64_t P) {
    return sizeof(uint32_t) * 2 * (size_t)(cf_amx_round(P, 16) * cf_amx_round(N, 16));
}

static void f16_prep_b(int64_t N, int64_t P, const uint32_t* B, int64_t ldb, void* pb) {
    const int64_t N16 = cf_amx_round(N, 16), P16 = cf_amx_round(P, 16);
    uint32_t* b = pb;
    pad_copy(b, P16, N16, B, P, N, ldb, 1);
    if (f16_split()) cf_amx_split16((uint16_t*)b, (uint16_t*)(b + P16 * N16), 1, 2 * P16 * N16, 0);
}

static size_t f16_scratch_bytes(int64_t M, int64_t N, int64_t P) {
    const int64_t M16 = cf_amx_round(M, 16), N16 = cf_amx_round(N, 16), P16 = cf_amx_round(P, 16);
    return sizeof(uint32_t) * (size_t)(2 * M16 * P16 + M16 * N16);
}

static void f16_run(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                    const void* pb, float* C, int64_t ldc, int acc, void* scratch) {
    if (M <= 0 || N <= 0) return;
    const int64_t M16 = cf_amx_round(M, 16), N16 = cf_amx_round(N, 16), P16 = cf_amx_round(P, 16);
    uint32_t* a = scratch;
    const uint32_t* b = pb;
    padded_run(f16_split() ? 2 : 1, M, N, P, A, rsa, csa, b, b + P16 * N16, C, ldc, acc, a,
               a + M16 * P16, (float*)(a + 2 * M16 * P16));
}

const cf_attn_pairs_gemm cf_amx_pairs_f16 = {f16_b_bytes, f16_prep_b, f16_scratch_bytes, f16_run};

/* fp16 x (bits) as bf16 high + low parts, exactly (11 significant bits: 8 in the high part's
 * rounding, the rest, at most 3 bits, in the low part); an infinity or NaN has low part 0. */
CF_AMX_TARGET INLINE void split32(uint16_t* x, uint16_t* lo, __mmask32 m) {
    const __m512i h = _mm512_maskz_loadu_epi16(m, x);
    const __m512 a = _mm512_cvtph_ps(_mm512_castsi512_si256(h)),
                 b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
    const __m512bh hi = _mm512_cvtne2ps_pbh(b, a);
    const __m512i hw = (__m512i)hi;
    const __m512 ha = _mm512_castsi512_ps(
                     _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hw)), 16)),
                 hb = _mm512_castsi512_ps(_mm512_slli_epi32(
                     _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hw, 1)), 16));
    const __m512 inf = _mm512_set1_ps(INFINITY);
    const __m512 la = _mm512_maskz_sub_ps(_mm512_cmp_ps_mask(_mm512_abs_ps(a), inf, _CMP_LT_OQ), a,
                                          ha),
                 lb = _mm512_maskz_sub_ps(_mm512_cmp_ps_mask(_mm512_abs_ps(b), inf, _CMP_LT_OQ), b,
                                          hb);
    _mm512_mask_storeu_epi16(x, m, hw);
    _mm512_mask_storeu_epi16(lo, m, (__m512i)_mm512_cvtne2ps_pbh(lb, la));
}

CF_AMX_TARGET void cf_amx_split16(uint16_t* x, uint16_t* lo, int64_t rows, int64_t cols,
                                  int64_t ld) {
    for (int64_t r = 0; r < rows; r++) {
        uint16_t *xr = x + r * ld, *lr = lo + r * ld;
        int64_t c = 0;
        for (; c + 32 <= cols; c += 32)
            split32(xr + c, lr + c, (__mmask32)0xffffffffu);
        if (c < cols) split32(xr + c, lr + c, (__mmask32)((1ull << (cols - c)) - 1));
    }
}

/* ---- Packers -----------------------------------------------------------------------------------
 */

/* 16 x 16 transpose of 32-bit elements: 32-bit and 64-bit unpacks within 128-bit lanes, then two
 * rounds of lane shuffles. */
CF_AMX_TARGET INLINE void t32_16(uint32_t* dst, int64_t ldd, const uint32_t* src, int64_t lds) {
    __m512i r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_si512(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    /* r[4g + e], lane L: rows 4g .. 4g + 3 of column 4L + e. */
    for (int g = 0; g < 16; g += 4) {
        r[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        r[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        r[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        r[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int e = 0; e < 4; e++) {
        const __m512i v = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x88);
        const __m512i w = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x88);
        const __m512i v2 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xdd);
        const __m512i w2 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xdd);
        _mm512_storeu_si512(dst + (0 + e) * ldd, _mm512_shuffle_i32x4(v, w, 0x88));
        _mm512_storeu_si512(dst + (4 + e) * ldd, _mm512_shuffle_i32x4(v2, w2, 0x88));
        _mm512_storeu_si512(dst + (8 + e) * ldd, _mm512_shuffle_i32x4(v, w, 0xdd));
        _mm512_storeu_si512(dst + (12 + e) * ldd, _mm512_shuffle_i32x4(v2, w2, 0xdd));
    }
}

CF_AMX_TARGET void cf_amx_t32(uint32_t* dst, int64_t ldd, const uint32_t* src, int64_t lds,
                              int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r += 16)
        for (int64_t c = 0; c < cols; c += 16)
            t32_16(dst + c * ldd + r, ldd, src + r * lds + c, lds);
}

void cf_amx_rows16_at(uint16_t* dst, int64_t ldd, int64_t width, int64_t rows, const char* p,
                      int64_t rs, int64_t n, int64_t d) {
    for (int64_t r = 0; r < rows; r++) {
        uint16_t* o = dst + r * ldd;
        if (r < n) {
            memcpy(o, (const uint16_t*)p + r * rs, sizeof(uint16_t) * (size_t)d);
            memset(o + d, 0, sizeof(uint16_t) * (size_t)(width - d));
        } else {
            memset(o, 0, sizeof(uint16_t) * (size_t)width);
        }
    }
}

void cf_amx_rows16(uint16_t* dst, int64_t ldd, int64_t width, int64_t rows, const cf_view* v,
                   int64_t b, int64_t s0, int64_t h, int64_t n, int64_t d) {
    cf_amx_rows16_at(dst, ldd, width, rows, cf_amx_row_ptr(v, b, s0, h), v->stride[1], n, d);
}

void cf_amx_rows_vnni_at(const cf_attn_kernels* k, uint32_t* dst, int64_t ldd, int64_t width,
                         int64_t pairs, const char* p, int64_t rs, int64_t n, int64_t d) {
    const uint16_t* x = (const uint16_t*)p;
    for (int64_t q = 0; q < pairs; q++) {
        uint32_t* o = dst + q * ldd;
        if (2 * q < n) {
            k->interleave_u16(o, x + 2 * q * rs, 2 * q + 1 < n ? x + (2 * q + 1) * rs : NULL, d);
            memset(o + d, 0, sizeof(uint32_t) * (size_t)(width - d));
        } else {
            memset(o, 0, sizeof(uint32_t) * (size_t)width);
        }
    }
}

void cf_amx_rows_vnni(const cf_attn_kernels* k, uint32_t* dst, int64_t ldd, int64_t width,
                      int64_t pairs, const cf_view* v, int64_t b, int64_t s0, int64_t h, int64_t n,
                      int64_t d) {
    cf_amx_rows_vnni_at(k, dst, ldd, width, pairs, cf_amx_row_ptr(v, b, s0, h), v->stride[1], n, d);
}

void cf_amx_f32_rows16(const cf_attn_kernels* k, uint16_t* dst, int64_t ldd, int64_t width,
                       int64_t rows, const float* src, int64_t lds, int64_t n, int64_t d,
                       cf_dtype dt) {
    for (int64_t r = 0; r < rows; r++) {
        uint16_t* o = dst + r * ldd;
        if (r < n) {
            k->from_f32(o, src + r * lds, dt, d);
            memset(o + d, 0, sizeof(uint16_t) * (size_t)(width - d));
        } else {
            memset(o, 0, sizeof(uint16_t) * (size_t)width);
        }
    }
}

void cf_amx_pairs_t(const cf_attn_kernels* k, uint32_t* dst, int64_t ldd, uint32_t* tmp,
                    const uint16_t* h16, int64_t ldh, int64_t rows, int64_t cols) {
    for (int64_t q = 0; q < rows / 2; q++)
        k->interleave_u16(tmp + q * cols, h16 + 2 * q * ldh, h16 + (2 * q + 1) * ldh, cols);
    cf_amx_t32(dst, ldd, tmp, cols, rows / 2, cols);
}

/* ---- Row reductions ----------------------------------------------------------------------------
 */

/* A vector of 16 bias values from y (fp32, bf16 or fp16; m: the live lanes) in fp32, exactly. */
CF_AMX_TARGET INLINE __m512 bias16(const void* y, cf_dtype bt, __mmask16 m) {
    if (bt == CF_F32) return _mm512_maskz_loadu_ps(m, y);
    const __m256i h = _mm256_maskz_loadu_epi16(m, y);
    if (bt == CF_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The max pass of a row, with the bias and mask where given (cf_amx_row_bias_max); inlined in
 * both entry points, so cf_amx_row_scale_max's copy has no bias or mask steps. */
CF_AMX_TARGET INLINE float row_pass(float* x, int64_t n, float s, const void* y, cf_dtype bt,
                                    const uint8_t* mask, const void* pf) {
    const __m512 vs = _mm512_set1_ps(s), ninf = _mm512_set1_ps(-INFINITY);
    const int64_t es = bt == CF_F32 ? 4 : 2;
    __m512 mx = ninf;
    __mmask16 nan = 0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs);
        if (y) {
            const __m512 b = bias16((const char*)y + i * es, bt, m);
            /* (a bias of -inf hides its pair whatever the score: NaN too) */
            v = _mm512_mask_mov_ps(_mm512_add_ps(v, b), _mm512_cmp_ps_mask(b, ninf, _CMP_EQ_OQ),
                                   ninf);
            if (pf && (i * es) % 64 == 0) _mm_prefetch((const char*)pf + i * es, _MM_HINT_T1);
        }
        if (mask) /* (bytes 0 hide their pairs) */
            v = _mm512_mask_mov_ps(ninf,
                                   _mm_mask_test_epi8_mask(m, _mm_maskz_loadu_epi8(m, mask + i),
                                                           _mm_set1_epi8((char)0xff)),
                                   v);
        _mm512_mask_storeu_ps(x + i, m, v);
        nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
        mx = _mm512_mask_max_ps(mx, m, mx, v);
    }
    return nan ? NAN : _mm512_reduce_max_ps(mx);
}

CF_AMX_TARGET float cf_amx_row_scale_max(float* x, int64_t n, float s) {
    return row_pass(x, n, s, NULL, CF_F32, NULL, NULL);
}

CF_AMX_TARGET float cf_amx_row_bias_max(float* x, int64_t n, float s, const void* y, cf_dtype bt,
                                        const uint8_t* mask, const void* pf) {
    return row_pass(x, n, s, y, bt, mask, pf);
}

/* exp as the cpu-avx512 table's exp_row computes it (2^((x - b) log2 e), on v_exp2_p5); P rounded
 * by vcvtneps2bf16 (AVX512-BF16, which cpu-amx requires) or vcvtps2ph. v_exp2 stops at 2^-64 on
 * x86, so no P is subnormal (vcvtneps2bf16 would flush it). Full vectors stored unmasked. */
CF_AMX_TARGET INLINE __m512 exp_put(__m512 v, __m512 b, float* x, uint16_t* p, int fp16,
                                    __mmask16 m) {
    const __m512 e = v_exp2_p5(_mm512_mul_ps(_mm512_sub_ps(v, b), _mm512_set1_ps(CF_LOG2E)));
    const __m256i h = fp16 ? _mm512_cvtps_ph(e, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                           : (__m256i)_mm512_cvtneps_pbh(e);
    if (m == 0xffff) {
        if (p)
            _mm256_storeu_si256((__m256i*)p, h);
        else
            _mm512_storeu_ps(x, e);
    } else {
        if (p)
            _mm256_mask_storeu_epi16(p, m, h);
        else
            _mm512_mask_storeu_ps(x, m, e);
    }
    return _mm512_maskz_mov_ps(m, e);
}

CF_AMX_TARGET float cf_amx_exp_row_sum(float* x, int64_t n, float b, uint16_t* p, int fp16) {
    const __m512 vb = _mm512_set1_ps(b);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_add_ps(
            acc, exp_put(_mm512_loadu_ps(x + i), vb, x + i, p ? p + i : NULL, fp16, 0xffff));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        acc = _mm512_add_ps(
            acc, exp_put(_mm512_maskz_loadu_ps(m, x + i), vb, x + i, p ? p + i : NULL, fp16, m));
    }
    return _mm512_reduce_add_ps(acc);
}

#else
typedef int cf_amx_mm_unused; /* not x86-64, or a compiler without AMX */
#endif
