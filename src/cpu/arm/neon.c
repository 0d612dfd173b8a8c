/* Backend cpu-neon: AdvSIMD microkernels for the tiled attention driver (src/cpu/attn_tiled*.c) on
 * any AArch64 CPU: the kernels of src/cpu/attn_simd.h compiled for NEON (fp32 GEMM 6 x 16, 24
 * accumulators; softmax pieces; FCVTL / shift conversions), and here what only this ISA has: bf16
 * pairs multiplied with BFMMLA where the CPU has FEAT_BF16, and the fp16 forward's pairs with FMLAL
 * (fp32 accumulation) where it has FEAT_FHM. Built with target attributes, chosen at run time from
 * getauxval (src/probe/cpu_features.c). Checked under qemu-user only: the register tiles (fp32 6 x
 * 16: CF_MK_NVMAX in simd_vec.h; BF_MR / BF_NR and H_NV below) are untuned starting points, see
 * docs/PERF.md. GEMM: bf16 8 x 8 (16 BFMMLA 2 x 2 blocks), fp16 6 x 8 on attn_simd.h's tile loop.
 */
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"
#include "probe/cpu_features.h"

#if defined(__aarch64__)
#define CF_SIMD_NEON
#include "cpu/attn_simd.h"

#define INLINE CF_VINLINE
/* The bf16 and fp16 intrinsics are declared for armv8.2-a plus the extension. */
#define TBF16 __attribute__((target("arch=armv8.2-a+bf16")))
#define TFHM __attribute__((target("arch=armv8.2-a+fp16fml")))

/* Partial vectors of pairs, as cf_vloadt / cf_vstoret (n <= 0 touches nothing). */
INLINE uint32x4_t ld_u32(const uint32_t* p, int n) {
    if (n >= 4) return vld1q_u32(p);
    uint32x4_t v = vdupq_n_u32(0);
    if (n > 0) v = vld1q_lane_u32(p, v, 0);
    if (n > 1) v = vld1q_lane_u32(p + 1, v, 1);
    if (n > 2) v = vld1q_lane_u32(p + 2, v, 2);
    return v;
}

INLINE void st_u32(uint32_t* p, uint32x4_t v, int n) {
    if (n >= 4) {
        vst1q_u32(p, v);
        return;
    }
    uint32_t t[4];
    vst1q_u32(t, v);
    memcpy(p, t, sizeof(uint32_t) * (size_t)n);
}

/* ---- GEMM, bf16 pairs (BFMMLA) -----------------------------------------------------------------
 * BFMMLA multiplies a 2 x 4 bf16 block of A (two rows, two pairs) by a 4 x 2 block of B (two pairs,
 * two columns) into a 2 x 2 fp32 block, held as one vector [C(m,n) C(m,n+1) C(m+1,n) C(m+1,n+1)].
 * The register tile is BF_MR rows (up to 4 row pairs) x 8 columns (4 column pairs). B's VNNI rows p
 * and p+1 are zipped into column-pair vectors as they are read. */
#define BF_MR 8
#define BF_NR 8

/* A's 2 x 4 block at a = &A(m, p): rows m, m+1 (two_rows) and pairs p, p+1 (two_pairs); zero
 * where a row or pair is missing. KIND 0: pairs contiguous along a row (csa = 1); 1: rows
 * contiguous (rsa = 1); 2: any strides. */
INLINE uint32x4_t bf_lda(const int KIND, const uint32_t* a, int64_t rsa, int64_t csa, int two_rows,
                         int two_pairs) {
    if (two_rows && two_pairs) {
        if (KIND == 0) return vcombine_u32(vld1_u32(a), vld1_u32(a + rsa));
        if (KIND == 1) {
            const uint32x2_t x = vld1_u32(a), y = vld1_u32(a + csa);
            return vcombine_u32(vzip1_u32(x, y), vzip2_u32(x, y));
        }
    }
    const uint32_t t[4] = {a[0], two_pairs ? a[csa] : 0, two_rows ? a[rsa] : 0,
                           two_rows && two_pairs ? a[rsa + csa] : 0};
    return vld1q_u32(t);
}

#define B_DECL(i) float32x4_t c##i##0 = z, c##i##1 = z, c##i##2 = z, c##i##3 = z
/* C rows 2i, 2i+1, columns 4q..4q+3 <-> the accumulators of column pairs 2q, 2q+1; stored as C
 * plus the accumulators (they start at zero: the sum over K is two-level, CF_ATTN_GEMM_KC). */
#define B_ADDC(at, w, x) (acc ? vaddq_f32(cf_vloadt(at, w), x) : x)
#define B_STQ(i, q, j0, j1)                                                                        \
    if (nn > 4 * q) {                                                                              \
        const int w = nn - 4 * q;                                                                  \
        const float64x2_t x = vreinterpretq_f64_f32(c##i##j0),                                     \
                          y = vreinterpretq_f64_f32(c##i##j1);                                     \
        float* c0_ = C + (2 * i) * ldc + 4 * q;                                                    \
        cf_vstoret(c0_, w, B_ADDC(c0_, w, vreinterpretq_f32_f64(vzip1q_f64(x, y))));               \
        if (MR > 2 * i + 1)                                                                        \
            cf_vstoret(c0_ + ldc, w,                                                               \
                       B_ADDC(c0_ + ldc, w, vreinterpretq_f32_f64(vzip2q_f64(x, y))));             \
    }
#define B_STC(i)                                                                                   \
    if (MR > 2 * i) {                                                                              \
        B_STQ(i, 0, 0, 1) B_STQ(i, 1, 2, 3)                                                        \
    }
#define B_MMA(i, TWO)                                                                              \
    if (MR > 2 * i) {                                                                              \
        const bfloat16x8_t x = vreinterpretq_bf16_u32(                                             \
            bf_lda(KIND, a + (2 * i) * rsa, rsa, csa, MR > 2 * i + 1, TWO));                       \
        c##i##0 = vbfmmlaq_f32(c##i##0, x, b0);                                                    \
        c##i##1 = vbfmmlaq_f32(c##i##1, x, b1);                                                    \
        if (FULL || nn > 4) {                                                                      \
            c##i##2 = vbfmmlaq_f32(c##i##2, x, b2);                                                \
            c##i##3 = vbfmmlaq_f32(c##i##3, x, b3);                                                \
        }                                                                                          \
    }
/* One step over pairs p (and p + 1 when TWO): B's two rows zipped into column pairs. */
#define B_STEP(TWO)                                                                                \
    {                                                                                              \
        const uint32_t* b = B + p * ldb;                                                           \
        const uint32x4_t r0 = FULL ? vld1q_u32(b) : ld_u32(b, nn);                                 \
        const uint32x4_t r1 = !TWO ? zu : FULL ? vld1q_u32(b + ldb) : ld_u32(b + ldb, nn);         \
        const uint32x4_t s0 = FULL ? vld1q_u32(b + 4) : ld_u32(b + 4, nn - 4);                     \
        const uint32x4_t s1 = !TWO   ? zu                                                          \
                              : FULL ? vld1q_u32(b + ldb + 4)                                      \
                                     : ld_u32(b + ldb + 4, nn - 4);                                \
        const bfloat16x8_t b0 = vreinterpretq_bf16_u32(vzip1q_u32(r0, r1));                        \
        const bfloat16x8_t b1 = vreinterpretq_bf16_u32(vzip2q_u32(r0, r1));                        \
        const bfloat16x8_t b2 = vreinterpretq_bf16_u32(vzip1q_u32(s0, s1));                        \
        const bfloat16x8_t b3 = vreinterpretq_bf16_u32(vzip2q_u32(s0, s1));                        \
        const uint32_t* a = A + p * csa;                                                           \
        B_MMA(0, TWO) B_MMA(1, TWO) B_MMA(2, TWO) B_MMA(3, TWO)                                    \
    }

TBF16 INLINE void mk_bf16(const int MR, const int KIND, const int FULL, int64_t P,
                          const uint32_t* A, int64_t rsa, int64_t csa, const uint32_t* B,
                          int64_t ldb, float* C, int64_t ldc, int acc, int nn) {
    const float32x4_t z = vdupq_n_f32(0.0f);
    const uint32x4_t zu = vdupq_n_u32(0);
    B_DECL(0);
    B_DECL(1);
    B_DECL(2);
    B_DECL(3);
    int64_t p = 0;
    for (; p + 1 < P; p += 2)
        B_STEP(1)
    if (p < P) B_STEP(0)
    B_STC(0) B_STC(1) B_STC(2) B_STC(3);
}

typedef void (*mk_bf16_fn)(int64_t, const uint32_t*, int64_t, int64_t, const uint32_t*, int64_t,
                           float*, int64_t, int, int);
#define MKB(MR, KIND, F)                                                                           \
    TBF16 static void mkb_##MR##_##KIND##_##F(int64_t P, const uint32_t* A, int64_t rsa,           \
                                              int64_t csa, const uint32_t* B, int64_t ldb,         \
                                              float* C, int64_t ldc, int acc, int nn) {            \
        mk_bf16(MR, KIND, F, P, A, rsa, csa, B, ldb, C, ldc, acc, nn);                             \
    }
#define MKB_K(MR, KIND) MKB(MR, KIND, 0) MKB(MR, KIND, 1)
#define MKB_ROW(MR) MKB_K(MR, 0) MKB_K(MR, 1) MKB_K(MR, 2)
MKB_ROW(1)
MKB_ROW(2)
MKB_ROW(3)
MKB_ROW(4)
MKB_ROW(5)
MKB_ROW(6)
MKB_ROW(7)
MKB_ROW(8)
#define MKB_T(MR, KIND)                                                                            \
    { mkb_##MR##_##KIND##_0, mkb_##MR##_##KIND##_1 }
#define MKB_TAB(MR)                                                                                \
    { MKB_T(MR, 0), MKB_T(MR, 1), MKB_T(MR, 2) }
static const mk_bf16_fn mkb_tab[BF_MR][3][2] = {MKB_TAB(1), MKB_TAB(2), MKB_TAB(3), MKB_TAB(4),
                                                MKB_TAB(5), MKB_TAB(6), MKB_TAB(7), MKB_TAB(8)};

static void gemm_bf16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                      const uint32_t* B, int64_t ldb, float* C, int64_t ldc, int acc) {
    const int kind = csa == 1 ? 0 : rsa == 1 ? 1 : 2;
    for (int64_t n0 = 0; n0 < N; n0 += BF_NR) {
        const int nn = (int)(N - n0 < BF_NR ? N - n0 : BF_NR);
        for (int64_t m0 = 0; m0 < M; m0 += BF_MR) {
            const int mr = (int)(M - m0 < BF_MR ? M - m0 : BF_MR);
            int64_t p0 = 0;
            do { /* P in chunks of CF_ATTN_GEMM_KC pairs; P = 0 still writes C */
                const int64_t pn = P - p0 < CF_ATTN_GEMM_KC ? P - p0 : CF_ATTN_GEMM_KC;
                mkb_tab[mr - 1][kind][nn == BF_NR](pn, A + m0 * rsa + p0 * csa, rsa, csa,
                                                   B + p0 * ldb + n0, ldb, C + m0 * ldc + n0, ldc,
                                                   acc || p0 > 0, nn);
                p0 += pn;
            } while (p0 < P);
        }
    }
}

/* ---- GEMM, fp16 pairs (FMLAL) ------------------------------------------------------------------
 * A VNNI row of B (4 column pairs = 8 halves) times A's pair broadcast: FMLAL (low) multiplies
 * halves 0-3 (columns n, n+1) and FMLAL2 (high) halves 4-7 (columns n+2, n+3) into fp32 lanes
 * [even k, odd k] per column; one pairwise add per tile folds them at the end. Products of two
 * fp16 are exact in fp32, so this is an fp32-accumulated GEMM on fp16 data. */
#define H_NV 2 /* vectors of 4 columns (rows: the 6 of gemm_tiles) */

#define H_DECL(r) float32x4_t l##r##0 = z, h##r##0 = z, l##r##1 = z, h##r##1 = z
/* C plus the folded accumulators (they start at zero: gemm_tiles' two-level sum over K) */
#define H_STV(r, v)                                                                                \
    if (NV > v) {                                                                                  \
        const int n_ = v == NV - 1 ? last : 4;                                                     \
        float32x4_t x_ = vpaddq_f32(l##r##v, h##r##v);                                             \
        if (acc) x_ = vaddq_f32(cf_vloadt(C + r * ldc + 4 * v, n_), x_);                           \
        cf_vstoret(C + r * ldc + 4 * v, n_, x_);                                                   \
    }
#define H_STC(r)                                                                                   \
    if (MR > r) {                                                                                  \
        H_STV(r, 0) H_STV(r, 1)                                                                    \
    }
#define H_ROW(r)                                                                                   \
    if (MR > r) {                                                                                  \
        const float16x8_t x = vreinterpretq_f16_u32(vld1q_dup_u32(a + r * rsa));                   \
        l##r##0 = vfmlalq_low_f16(l##r##0, x, b0);                                                 \
        h##r##0 = vfmlalq_high_f16(h##r##0, x, b0);                                                \
        if (NV > 1) {                                                                              \
            l##r##1 = vfmlalq_low_f16(l##r##1, x, b1);                                             \
            h##r##1 = vfmlalq_high_f16(h##r##1, x, b1);                                            \
        }                                                                                          \
    }
#define H_LDB(v)                                                                                   \
    vreinterpretq_f16_u32(v == NV - 1 && !FULL ? ld_u32(B + 4 * v, last) : vld1q_u32(B + 4 * v))

TFHM INLINE void mk_f16(const int MR, const int NV, const int FULL, int64_t P, const uint32_t* A,
                        int64_t rsa, int64_t csa, const uint32_t* B, int64_t ldb, float* C,
                        int64_t ldc, int acc, int last) {
    const float32x4_t z = vdupq_n_f32(0.0f);
    H_DECL(0);
    H_DECL(1);
    H_DECL(2);
    H_DECL(3);
    H_DECL(4);
    H_DECL(5);
    const uint32_t* a = A;
    for (int64_t p = 0; p < P; p++) {
        const float16x8_t b0 = H_LDB(0);
        const float16x8_t b1 = NV > 1 ? H_LDB(1) : b0;
        H_ROW(0) H_ROW(1) H_ROW(2) H_ROW(3) H_ROW(4) H_ROW(5);
        a += csa;
        B += ldb;
    }
    H_STC(0) H_STC(1) H_STC(2) H_STC(3) H_STC(4) H_STC(5);
}

CF_MK_DEFINE(TFHM, mkh, mk_f16, uint32_t, 2)

static void gemm_f16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                     const uint32_t* B, int64_t ldb, float* C, int64_t ldc, int acc) {
    gemm_tiles(mkh_tab, H_NV, M, N, P, A, rsa, csa, B, ldb, C, ldc, acc);
}

/* ---- Pair packing (the bf16 and fp16 products' operands) ---------------------------------- */

/* dst[i] = bf16(lo[i]) | bf16(hi[i]) << 16. */
static void pack_pairs_f32(uint32_t* dst, const float* lo, const float* hi, int64_t n) {
    for (int64_t i = 0; i < n; i += 4) {
        const int w = (int)(n - i);
        const uint32x4_t l = cf_vround_bf16(cf_vloadt(lo + i, w));
        const uint32x4_t h = hi ? cf_vround_bf16(cf_vloadt(hi + i, w)) : vdupq_n_u32(0);
        const uint32x4_t v = vsliq_n_u32(l, h, 16);
        st_u32(dst + i, v, w);
    }
}

/* dst[i] = f16(lo[i]) | f16(hi[i]) << 16 (FCVTN: round to nearest even). */
static void pack_pairs_f16(uint32_t* dst, const float* lo, const float* hi, int64_t n) {
    for (int64_t i = 0; i < n; i += 4) {
        const int w = (int)(n - i);
        const uint16x4_t l = vreinterpret_u16_f16(vcvt_f16_f32(cf_vloadt(lo + i, w)));
        const uint16x4_t h =
            hi ? vreinterpret_u16_f16(vcvt_f16_f32(cf_vloadt(hi + i, w))) : vdup_n_u16(0);
        const uint32x4_t v = vreinterpretq_u32_u16(vcombine_u16(vzip1_u16(l, h), vzip2_u16(l, h)));
        st_u32(dst + i, v, w);
    }
}

/* dst[i] = lo[i] | hi[i] << 16: two 16-bit rows into pairs. */
static void interleave_u16(uint32_t* dst, const uint16_t* lo, const uint16_t* hi, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t l = vld1q_u16(lo + i), h = hi ? vld1q_u16(hi + i) : vdupq_n_u16(0);
        vst1q_u32(dst + i, vreinterpretq_u32_u16(vzip1q_u16(l, h)));
        vst1q_u32(dst + i + 4, vreinterpretq_u32_u16(vzip2q_u16(l, h)));
    }
    cf_attn_generic_interleave_u16(dst + i, lo + i, hi ? hi + i : NULL, n - i);
}

/* ---- Tables: one per combination of the optional features ----------------------------------- */

#define NEON_TABLE(var, GBF, GF16)                                                                 \
    static const cf_attn_kernels var = {                                                           \
        .name = "cpu-neon",                                                                        \
        .gemm_f32 = gemm_f32,                                                                      \
        .gemm_bf16 = GBF,                                                                          \
        .gemm_f16 = GF16,                                                                          \
        .scale_max_cols = scale_max_cols,                                                          \
        .softcap_cols = softcap_cols,                                                              \
        .exp_cols = exp_cols,                                                                      \
        .exp_row = exp_row,                                                                        \
        .ds_row = ds_row,                                                                          \
        .ds_cols = ds_cols,                                                                        \
        .pack_pairs_f32 = pack_pairs_f32,                                                          \
        .pack_pairs_f16 = pack_pairs_f16,                                                          \
        .interleave_u16 = interleave_u16,                                                          \
        .bias_t = cf_attn_generic_bias_t,                                                          \
        .to_f32 = to_f32,                                                                          \
        .from_f32 = from_f32,                                                                      \
    };
NEON_TABLE(k_plain, NULL, NULL)
NEON_TABLE(k_bf16, gemm_bf16, NULL)
NEON_TABLE(k_f16, NULL, gemm_f16)
NEON_TABLE(k_both, gemm_bf16, gemm_f16)

/* The table for this CPU (cpu-sve takes it for everything but its fp32 GEMM and softmax pieces). */
const cf_attn_kernels* cf_attn_kernels_neon(void) {
    const cf_cpu_info* ci = cf_cpu();
    if (ci->bf16 && ci->asimdfhm) return &k_both;
    if (ci->bf16) return &k_bf16;
    if (ci->asimdfhm) return &k_f16;
    return &k_plain;
}

static int neon_available(char* reason, size_t len) {
    if (cf_cpu()->neon) return 1;
    snprintf(reason, len, "needs AdvSIMD: the kernel does not report asimd (AT_HWCAP bit 1)");
    return 0;
}

#else /* not AArch64 */

const cf_attn_kernels* cf_attn_kernels_neon(void) {
    return &cf_attn_kernels_generic;
}
static int neon_available(char* reason, size_t len) {
    snprintf(reason, len, "not an AArch64 CPU");
    return 0;
}

#endif

static int neon_supports(const void* call, char* reason, size_t len) {
    return cf_attn_cpu_supports(call, cf_attn_kernels_neon(), reason, len);
}
static cflash_status neon_fwd(const void* call) {
    return cf_attn_cpu_fwd(call, cf_attn_kernels_neon());
}
static cflash_status neon_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, cf_attn_kernels_neon());
}

const cf_impl cf_impl_neon_attn_fwd = {
    .backend = "cpu-neon",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = neon_supports,
    .run = neon_fwd,
    .available = neon_available,
};
const cf_impl cf_impl_neon_attn_bwd = {
    .backend = "cpu-neon",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = neon_supports,
    .run = neon_bwd,
    .available = neon_available,
};
