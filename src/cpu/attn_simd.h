/* The attention microkernels written once over the vector vocabulary of src/cpu/simd_vec.h, and
 * compiled once per ISA: src/cpu/x86/avx2.c, x86/avx512.c and arm/neon.c each define their
 * CF_SIMD_* and include this file, then add what only their ISA has (bf16 / fp16 pair products,
 * pair packing). It defines the static functions gemm_f32, scale_max_cols, softcap_cols, exp_cols,
 * exp_row, ds_row, ds_cols, to_f32 and from_f32 of cf_attn_kernels (attn_cpu.h says what each
 * computes), and the register-tile GEMM framework (CF_MK_*, gemm_tiles) that the pair products
 * reuse. */
#ifndef CFLASH_CPU_ATTN_SIMD_H
#define CFLASH_CPU_ATTN_SIMD_H

#include <float.h>
#include <string.h>

#include "cpu/attn_cpu.h"
#include "cpu/simd_vec.h"

/* ---- GEMM: register tiles of up to 6 rows x CF_MK_NVMAX vectors ---------------------------- */

/* The tile as 24 named accumulators (an array of vectors ends up on the stack); rows and vectors
 * past MR / NV are dead code once MR and NV are constants. The last of a row's NV vectors holds
 * the live lanes of t only, unless FULL. Inside a kernel: MR, NV, FULL, t, acc, A's row pointer
 * a (row stride rsa), B, C, ldc. */
#define CF_MK_DECL(r) cf_vf c##r##0 = z, c##r##1 = z, c##r##2 = z, c##r##3 = z
#define CF_MK_LD(p, v) (v == NV - 1 && !FULL ? cf_vloadt(p, t) : cf_vload(p))
#define CF_MK_ST(p, v, x) (v == NV - 1 && !FULL ? cf_vstoret(p, t, x) : cf_vstore(p, x))
/* C's vector v of row r plus the accumulator x (x alone unless acc) */
#define CF_MK_ADDC(r, v, x) (acc ? cf_vadd(CF_MK_LD(C + r * ldc + CF_VL * v, v), x) : x)
#define CF_MK_STC(r)                                                                               \
    if (MR > r) {                                                                                  \
        CF_MK_ST(C + r * ldc, 0, CF_MK_ADDC(r, 0, c##r##0));                                       \
        if (NV > 1) CF_MK_ST(C + r * ldc + CF_VL, 1, CF_MK_ADDC(r, 1, c##r##1));                   \
        if (NV > 2) CF_MK_ST(C + r * ldc + 2 * CF_VL, 2, CF_MK_ADDC(r, 2, c##r##2));               \
        if (NV > 3) CF_MK_ST(C + r * ldc + 3 * CF_VL, 3, CF_MK_ADDC(r, 3, c##r##3));               \
    }
/* Row r of the tile takes A(r, k) broadcast times B's row k (b0..b3). */
#define CF_MK_ROW(r, BCAST, OP)                                                                    \
    if (MR > r) {                                                                                  \
        const __typeof__(b0) x = BCAST(a + r * rsa);                                               \
        c##r##0 = OP(c##r##0, x, b0);                                                              \
        if (NV > 1) c##r##1 = OP(c##r##1, x, b1);                                                  \
        if (NV > 2) c##r##2 = OP(c##r##2, x, b2);                                                  \
        if (NV > 3) c##r##3 = OP(c##r##3, x, b3);                                                  \
    }
/* The body of a microkernel over K steps: B's vectors of type TB loaded by LDB(v) from row B,
 * OP(c, x, b) accumulating x (an element of A, broadcast by BCAST) times b into c. */
#define CF_MK_BODY(K, TB, LDB, BCAST, OP)                                                          \
    const cf_vf z = cf_vzero();                                                                    \
    CF_MK_DECL(0);                                                                                 \
    CF_MK_DECL(1);                                                                                 \
    CF_MK_DECL(2);                                                                                 \
    CF_MK_DECL(3);                                                                                 \
    CF_MK_DECL(4);                                                                                 \
    CF_MK_DECL(5);                                                                                 \
    for (int64_t k = 0; k < K; k++) {                                                              \
        const TB b0 = LDB(0);                                                                      \
        const TB b1 = NV > 1 ? LDB(1) : b0;                                                        \
        const TB b2 = NV > 2 ? LDB(2) : b0;                                                        \
        const TB b3 = NV > 3 ? LDB(3) : b0;                                                        \
        CF_MK_ROW(0, BCAST, OP)                                                                    \
        CF_MK_ROW(1, BCAST, OP)                                                                    \
        CF_MK_ROW(2, BCAST, OP)                                                                    \
        CF_MK_ROW(3, BCAST, OP)                                                                    \
        CF_MK_ROW(4, BCAST, OP)                                                                    \
        CF_MK_ROW(5, BCAST, OP)                                                                    \
        a += csa;                                                                                  \
        B += ldb;                                                                                  \
    }                                                                                              \
    CF_MK_STC(0) CF_MK_STC(1) CF_MK_STC(2) CF_MK_STC(3) CF_MK_STC(4) CF_MK_STC(5)

/* A microkernel as gemm_tiles calls it: A and B hold 4-byte elements (fp32, or 16-bit pairs). */
typedef void (*cf_mk_fn)(int64_t K, const void* A, int64_t rsa, int64_t csa, const void* B,
                         int64_t ldb, float* C, int64_t ldc, int acc, cf_vt t);

/* CF_MK_DEFINE(ATTR, P, KERNEL, TA, NVMAX): the microkernels P_MR_NV_FULL (MR 1..6, NV
 * 1..NVMAX (2 or 4), FULL 0 / 1) as calls of the always-inline KERNEL(MR, NV, FULL, K, A, rsa,
 * csa, B, ldb, C, ldc, acc, t) with A and B of type const TA*, and their table P_tab, laid out as
 * gemm_tiles reads it. */
#define CF_MK_FN(ATTR, P, KERNEL, TA, MR, NV, F)                                                   \
    ATTR static void P##_##MR##_##NV##_##F(int64_t K, const void* A, int64_t rsa, int64_t csa,     \
                                           const void* B, int64_t ldb, float* C, int64_t ldc,      \
                                           int acc, cf_vt t) {                                     \
        KERNEL(MR, NV, F, K, (const TA*)A, rsa, csa, (const TA*)B, ldb, C, ldc, acc, t);           \
    }
#define CF_MK_FN2(MR, NV, ATTR, P, KERNEL, TA)                                                     \
    CF_MK_FN(ATTR, P, KERNEL, TA, MR, NV, 0) CF_MK_FN(ATTR, P, KERNEL, TA, MR, NV, 1)
#define CF_MK_NV_2(MR, ...) CF_MK_FN2(MR, 1, __VA_ARGS__) CF_MK_FN2(MR, 2, __VA_ARGS__)
#define CF_MK_NV_4(MR, ...)                                                                        \
    CF_MK_NV_2(MR, __VA_ARGS__) CF_MK_FN2(MR, 3, __VA_ARGS__) CF_MK_FN2(MR, 4, __VA_ARGS__)
#define CF_MK_E(P, MR, NV) P##_##MR##_##NV##_0, P##_##MR##_##NV##_1,
#define CF_MK_E_2(MR, P) CF_MK_E(P, MR, 1) CF_MK_E(P, MR, 2)
#define CF_MK_E_4(MR, P) CF_MK_E_2(MR, P) CF_MK_E(P, MR, 3) CF_MK_E(P, MR, 4)
#define CF_MK_ROWS(X, ...)                                                                         \
    X(1, __VA_ARGS__)                                                                              \
    X(2, __VA_ARGS__) X(3, __VA_ARGS__) X(4, __VA_ARGS__) X(5, __VA_ARGS__) X(6, __VA_ARGS__)
#define CF_MK_DEFINE_(ATTR, P, KERNEL, TA, NVMAX)                                                  \
    CF_MK_ROWS(CF_MK_NV_##NVMAX, ATTR, P, KERNEL, TA)                                              \
    static const cf_mk_fn P##_tab[6 * NVMAX * 2] = {CF_MK_ROWS(CF_MK_E_##NVMAX, P)};
#define CF_MK_DEFINE(ATTR, P, KERNEL, TA, NVMAX) CF_MK_DEFINE_(ATTR, P, KERNEL, TA, NVMAX)

/* C (M x N, ldc) = (acc ? C : 0) + A B (as cf_attn_kernels.gemm_f32, elements of 4 bytes) by
 * register tiles: strips of nvmax vectors of columns, 6 rows at a time down each strip, so the
 * strip of B stays in cache while A's rows stream past (the last 7 or 8 as two tiles); K in chunks
 * of CF_ATTN_GEMM_KC steps, each summed from zero by the microkernel, which adds C (when acc) as it
 * stores. tab from CF_MK_DEFINE(.., nvmax). */
CF_VTARGET static void gemm_tiles(const cf_mk_fn* tab, int nvmax, int64_t M, int64_t N, int64_t K,
                                  const void* A, int64_t rsa, int64_t csa, const void* B,
                                  int64_t ldb, float* C, int64_t ldc, int acc) {
    const int64_t NR = (int64_t)CF_VL * nvmax;
    const uint32_t *a = A, *b = B;
    for (int64_t n0 = 0; n0 < N; n0 += NR) {
        const int64_t nn = N - n0 < NR ? N - n0 : NR;
        const int nv = (int)((nn + CF_VL - 1) / CF_VL);
        const int64_t last = nn - (int64_t)CF_VL * (nv - 1); /* live lanes of the last vector */
        const cf_vt t = cf_vtail(last);
        const cf_mk_fn* col = tab + 2 * (nv - 1) + (last == CF_VL);
        int mr;
        for (int64_t m0 = 0; m0 < M; m0 += mr) {
            /* the last 7 or 8 rows as 4 and 3 or 4 and 4: a tile of 1 or 2 rows has too few
             * accumulator chains to hide the FMA's latency (AVX2: 4 at 2 rows, half the rate) */
            mr = (int)(M - m0 < 6 ? M - m0 : M - m0 == 7 || M - m0 == 8 ? 4 : 6);
            const cf_mk_fn mk = col[2 * nvmax * (mr - 1)];
            int64_t k0 = 0;
            do { /* K = 0 still writes C (zeros unless acc) */
                const int64_t kn = K - k0 < CF_ATTN_GEMM_KC ? K - k0 : CF_ATTN_GEMM_KC;
                mk(kn, a + m0 * rsa + k0 * csa, rsa, csa, b + k0 * ldb + n0, ldb, C + m0 * ldc + n0,
                   ldc, acc || k0 > 0, t);
                k0 += kn;
            } while (k0 < K);
        }
    }
}

/* fp32: C += A(r, k) * B(k, :), A broadcast from memory (any rsa / csa), B's rows read in place. */
#define CF_MK_LDB_F32(v) CF_MK_LD(B + CF_VL * v, v)
CF_VTARGET CF_VINLINE void mk_f32(const int MR, const int NV, const int FULL, int64_t K,
                                  const float* A, int64_t rsa, int64_t csa, const float* B,
                                  int64_t ldb, float* C, int64_t ldc, int acc, cf_vt t) {
    const float* a = A;
    CF_MK_BODY(K, cf_vf, CF_MK_LDB_F32, cf_vbcast, cf_vfma);
}
CF_MK_DEFINE(CF_VTARGET, mkf, mk_f32, float, CF_MK_NVMAX)

CF_VTARGET static void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa,
                                int64_t csa, const float* B, int64_t ldb, float* C, int64_t ldc,
                                int acc) {
    gemm_tiles(mkf_tab, CF_MK_NVMAX, M, N, K, A, rsa, csa, B, ldb, C, ldc, acc);
}

/* ---- Softmax pieces ------------------------------------------------------------------------ */

/* Each piece is a step over one vector at offset i: full vectors with plain loads and stores
 * (masked stores are slow on AMD), then one step over the live lanes of the tail. In a step,
 * CF_LD / CF_ST read the step's `full` and `t`. */
#define CF_LD(p) (full ? cf_vload(p) : cf_vloadt(p, t))
#define CF_ST(p, v) (full ? cf_vstore(p, v) : cf_vstoret(p, t, v))
#define CF_VSTEPS(n, STEP, ...)                                                                    \
    do {                                                                                           \
        int64_t i_ = 0;                                                                            \
        for (; i_ + CF_VL <= (n); i_ += CF_VL)                                                     \
            STEP(1, cf_vtail(CF_VL), i_, __VA_ARGS__);                                             \
        if (i_ < (n)) STEP(0, cf_vtail((n)-i_), i_, __VA_ARGS__);                                  \
    } while (0)

/* x *= s; mx = max(mx, x) */
CF_VTARGET CF_VINLINE void scale_max_step(const int full, cf_vt t, int64_t i, float* x, float* mx,
                                          cf_vf s) {
    const cf_vf v = cf_vmul(CF_LD(x + i), s);
    CF_ST(x + i, v);
    CF_ST(mx + i, cf_vmax(CF_LD(mx + i), v));
}
CF_VTARGET static void scale_max_cols(float* x, int64_t n, float s, float* mx) {
    CF_VSTEPS(n, scale_max_step, x, mx, cf_vset1(s));
}

/* tanh(y) within 2 ulp (CF_TANH_* in core/attn_call.h); NaN gives NaN, +-inf gives +-1.
 * (AVX-512: at most 1.88 ulp against fp64 tanh over every 7th float in [2^-24, 12].) */
CF_VTARGET CF_VINLINE cf_vf v_tanh(cf_vf y) {
    const cf_vf a = cf_vabs(y), z = cf_vmul(y, y), one = cf_vset1(1.0f);
    cf_vf p = cf_vset1(CF_TANH_P5);
    p = cf_vfma(cf_vset1(CF_TANH_P4), p, z);
    p = cf_vfma(cf_vset1(CF_TANH_P3), p, z);
    p = cf_vfma(cf_vset1(CF_TANH_P2), p, z);
    p = cf_vfma(cf_vset1(CF_TANH_P1), p, z);
    p = cf_vfma(cf_vset1(CF_TANH_P0), p, z);
    const cf_vf small = cf_vfma(y, cf_vmul(y, z), p);
    /* (scores rarely reach a cap: the exp and division of the other form only where some lane
     * needs them; a NaN lane takes them, as the select below would) */
    if (cf_vall_lt(a, cf_vset1(CF_TANH_SMALL))) return small;
    const cf_vf e = v_exp2(cf_vmul(a, cf_vset1(-2.0f * CF_LOG2E)));
    const cf_vf big = cf_vcopysign(cf_vdiv(cf_vsub(one, e), cf_vadd(one, e)), y);
    return cf_vsel_lt(a, cf_vset1(CF_TANH_SMALL), small, big);
}

/* x = cap * tanh(x * (s / cap)) (one product, no division per vector: vdivps held a softcap
 * pass to half its speed); th = the tanh where th != NULL */
CF_VTARGET CF_VINLINE void softcap_step(const int full, cf_vt t, int64_t i, float* x, float* th,
                                        cf_vf s, cf_vf cap) {
    const cf_vf y = v_tanh(cf_vmul(CF_LD(x + i), s));
    CF_ST(x + i, cf_vmul(cap, y));
    if (th) CF_ST(th + i, y);
}
CF_VTARGET static void softcap_cols(float* x, int64_t n, float s, float cap, float* th) {
    CF_VSTEPS(n, softcap_step, x, th, cf_vset1(s / cap), cf_vset1(cap));
}

/* x = exp(x - mu) as exp2((x - mu) * log2 e), the difference first (see exp_cols in attn_cpu.h);
 * sum += x */
CF_VTARGET CF_VINLINE void exp_cols_step(const int full, cf_vt t, int64_t i, float* x,
                                         const float* mu, float* sum) {
    const cf_vf e = v_exp2(cf_vmul(cf_vsub(CF_LD(x + i), CF_LD(mu + i)), cf_vset1(CF_LOG2E)));
    CF_ST(x + i, e);
    if (sum) CF_ST(sum + i, cf_vadd(CF_LD(sum + i), e));
}
CF_VTARGET static void exp_cols(float* x, int64_t n, const float* mu, float* sum) {
    CF_VSTEPS(n, exp_cols_step, x, mu, sum);
}

/* x = exp(x - b) */
CF_VTARGET CF_VINLINE void exp_row_step(const int full, cf_vt t, int64_t i, float* x, cf_vf b) {
    CF_ST(x + i, v_exp2(cf_vmul(cf_vsub(CF_LD(x + i), b), cf_vset1(CF_LOG2E))));
}
CF_VTARGET static void exp_row(float* x, int64_t n, float b) {
    CF_VSTEPS(n, exp_row_step, x, cf_vset1(b));
}

/* ds = p * (dp - dl) * sc, dl one value (ds_row) or one per column (ds_cols) */
CF_VTARGET CF_VINLINE void ds_step(const int full, cf_vt t, int64_t i, float* ds, const float* p,
                                   const float* dp, cf_vf dl, cf_vf sc) {
    CF_ST(ds + i, cf_vmul(cf_vmul(CF_LD(p + i), cf_vsub(CF_LD(dp + i), dl)), sc));
}
CF_VTARGET static void ds_row(float* ds, const float* p, const float* dp, int64_t n, float dl,
                              float sc) {
    CF_VSTEPS(n, ds_step, ds, p, dp, cf_vset1(dl), cf_vset1(sc));
}
CF_VTARGET CF_VINLINE void ds_cols_step(const int full, cf_vt t, int64_t i, float* ds,
                                        const float* p, const float* dp, const float* dl,
                                        cf_vf sc) {
    CF_ST(ds + i, cf_vmul(cf_vmul(CF_LD(p + i), cf_vsub(CF_LD(dp + i), CF_LD(dl + i))), sc));
}
CF_VTARGET static void ds_cols(float* ds, const float* p, const float* dp, int64_t n,
                               const float* dl, float sc) {
    CF_VSTEPS(n, ds_cols_step, ds, p, dp, dl, cf_vset1(sc));
}

#ifdef CF_VTRANSPOSE
/* cf_attn_kernels.bias_t: pieces of CF_VL rows by CF_VL keys of the bias transposed in registers,
 * each key's vector added to S^T's row (partial pieces masked: nothing past nr, nc is read or
 * written). A -inf bias masks its pair: it is taken as it is (y < -FLT_MAX), not added. */
CF_VTARGET static void bias_t(float* s, int64_t cs, const float* y, int64_t ys, int64_t nr,
                              int64_t nc, int64_t pf) {
    const cf_vf lo = cf_vset1(-FLT_MAX);
    for (int64_t ra = 0; ra < nr; ra += CF_VL) {
        const int64_t nrr = nr - ra < CF_VL ? nr - ra : CF_VL;
        const cf_vt tr = cf_vtail(nrr);
        for (int64_t ja = 0; ja < nc; ja += CF_VL) {
            const int64_t ncc = nc - ja < CF_VL ? nc - ja : CF_VL;
            const cf_vt tc = cf_vtail(ncc);
            cf_vf r[CF_VL];
            for (int u = 0; u < CF_VL; u++) {
                const float* p = y + (ra + u) * ys + ja;
                if (pf && u < nrr) __builtin_prefetch(p + pf);
                r[u] = u >= nrr ? cf_vzero() : ncc == CF_VL ? cf_vload(p) : cf_vloadt(p, tc);
            }
            cf_vtranspose(r);
            for (int64_t v = 0; v < ncc; v++) {
                float* x = s + (ja + v) * cs + ra;
                const cf_vf a = nrr == CF_VL ? cf_vload(x) : cf_vloadt(x, tr);
                const cf_vf z = cf_vsel_lt(r[v], lo, r[v], cf_vadd(a, r[v]));
                if (nrr == CF_VL)
                    cf_vstore(x, z);
                else
                    cf_vstoret(x, tr, z);
            }
        }
    }
}
#endif

/* ---- dtype conversion (full vectors, then the portable tail) ------------------------------- */

CF_VTARGET static void to_f32(float* dst, const void* src, cf_dtype dt, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    const uint16_t* s = src;
    int64_t i = 0;
    for (; i + CF_VL <= n; i += CF_VL)
        cf_vstore(dst + i, dt == CF_F16 ? cf_vload_f16(s + i) : cf_vload_bf16(s + i));
    cf_attn_generic_to_f32(dst + i, s + i, dt, n - i);
}

CF_VTARGET static void from_f32(void* dst, const float* src, cf_dtype dt, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    uint16_t* d = dst;
    int64_t i = 0;
    for (; i + CF_VL <= n; i += CF_VL) {
        if (dt == CF_F16)
            cf_vstore_f16(d + i, cf_vload(src + i));
        else
            cf_vstore_bf16(d + i, cf_vload(src + i));
    }
    cf_attn_generic_from_f32(d + i, src + i, dt, n - i);
}

#endif
