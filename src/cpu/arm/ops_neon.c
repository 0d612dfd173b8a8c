/* The fast op kernels (rotary, norm, KV cache, merge) built with AdvSIMD intrinsics: backend
 * cpu-neon, available on any AArch64 CPU whose kernel reports asimd. Bodies:
 * src/cpu/{rotary,norm,kvcache,merge}_fast.h with the CF_OPS_NEON paths (fp16 rows by FCVTL /
 * FCVTN, exp by the shared polynomial, the interleaved rotary's pair swap by REV64), and here the
 * bf16 KV-cache scores by BFDOT where the CPU has FEAT_BF16. Checked under qemu-user only. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#define CF_OPS_NEON 1

#include "cpu/ops_fast_common.h"
#include "probe/cpu_features.h"

#include "cpu/kvcache_fast.h"

/* ---- KV-cache bf16 scores with BFDOT: q is exactly bf16 here (a bf16 input, or rotated and
 * rounded to bf16), so its top halves are q itself; products are exact, sums fp32. ---- */
#define KV_QMAX 8192 /* bf16 elements of q kept on the stack: R * D */

static inline int kv_dots_x4_ok(cf_dtype dt, int64_t R, int64_t D) {
    return dt == CF_BF16 && cf_cpu()->bf16 && D % 8 == 0 && R * D <= KV_QMAX;
}

/* [sum a0, sum a1, sum a2, sum a3] */
static inline float32x4_t kv_sum4(float32x4_t a0, float32x4_t a1, float32x4_t a2, float32x4_t a3) {
    return vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3));
}

/* s[r * KV_KB + t] = q_r . k_t: four keys per pass, each loaded key vector feeding four rows
 * (16 independent BFDOT chains); rows past a multiple of four and keys past one of four one by one.
 */
__attribute__((target("arch=armv8.2-a+bf16"))) static void
kv_dots_bf16x4(const float* restrict q, int64_t R, int64_t D, const void* const* rows, int64_t nb,
               float* restrict s) {
    uint16_t qb[KV_QMAX];
    for (int64_t i = 0; i < R * D; i += 4)
        vst1_u16(qb + i, vshrn_n_u32(vreinterpretq_u32_f32(vld1q_f32(q + i)), 16));
    const int64_t R4 = R - R % 4;
    int64_t t = 0;
    for (; t + 4 <= nb; t += 4) {
        const uint16_t *k0 = rows[t], *k1 = rows[t + 1], *k2 = rows[t + 2], *k3 = rows[t + 3];
        for (int64_t r = 0; r < R4; r += 4) {
            float32x4_t a[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    a[i][j] = vdupq_n_f32(0.0f);
            for (int64_t d = 0; d < D; d += 8) {
                const bfloat16x8_t x0 = vreinterpretq_bf16_u16(vld1q_u16(k0 + d)),
                                   x1 = vreinterpretq_bf16_u16(vld1q_u16(k1 + d)),
                                   x2 = vreinterpretq_bf16_u16(vld1q_u16(k2 + d)),
                                   x3 = vreinterpretq_bf16_u16(vld1q_u16(k3 + d));
                for (int i = 0; i < 4; i++) {
                    const bfloat16x8_t qi = vreinterpretq_bf16_u16(vld1q_u16(qb + (r + i) * D + d));
                    a[i][0] = vbfdotq_f32(a[i][0], qi, x0);
                    a[i][1] = vbfdotq_f32(a[i][1], qi, x1);
                    a[i][2] = vbfdotq_f32(a[i][2], qi, x2);
                    a[i][3] = vbfdotq_f32(a[i][3], qi, x3);
                }
            }
            for (int i = 0; i < 4; i++)
                vst1q_f32(s + (r + i) * KV_KB + t, kv_sum4(a[i][0], a[i][1], a[i][2], a[i][3]));
        }
    }
    /* the rest: rows R4.. for the keys above, every row for the last keys */
    for (int64_t r = 0; r < R; r++)
        for (int64_t u = r < R4 ? t : 0; u < nb; u++) {
            const uint16_t* k = rows[u];
            float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
            int64_t d = 0;
            for (; d + 16 <= D; d += 16) {
                a0 = vbfdotq_f32(a0, vreinterpretq_bf16_u16(vld1q_u16(qb + r * D + d)),
                                 vreinterpretq_bf16_u16(vld1q_u16(k + d)));
                a1 = vbfdotq_f32(a1, vreinterpretq_bf16_u16(vld1q_u16(qb + r * D + d + 8)),
                                 vreinterpretq_bf16_u16(vld1q_u16(k + d + 8)));
            }
            if (d < D)
                a0 = vbfdotq_f32(a0, vreinterpretq_bf16_u16(vld1q_u16(qb + r * D + d)),
                                 vreinterpretq_bf16_u16(vld1q_u16(k + d)));
            s[r * KV_KB + u] = vaddvq_f32(vaddq_f32(a0, a1));
        }
}

static void neon_scores_x4(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    (void)f; /* (unquantized) */
    kv_dots_bf16x4(h->q, h->R, h->c->a.D, rows, nb, h->s);
}

/* The generic kernels, with BFDOT scores for bf16 caches. */
static void kv_choose_neon(const cf_kvcache_call* c, int64_t R, kv_path* p) {
    kv_choose_generic(c, R, p);
    if (c->quant == CFLASH_KV_QUANT_NONE && kv_dots_x4_ok(c->a.dtype, R, c->a.D))
        p->scores = neon_scores_x4;
}

#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"

static int ops_neon_available(char* why, size_t n) {
    if (cf_cpu()->neon) return 1;
    snprintf(why, n, "needs AdvSIMD: the kernel does not report asimd (AT_HWCAP bit 1)");
    return 0;
}

static cflash_status neon_kvcache_run(const void* call) {
    return kv_run(call, kv_choose_neon);
}

const cf_impl cf_impl_neon_kvcache_fwd = {
    .backend = "cpu-neon",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCPU,
    .supports = NULL, /* every call */
    .run = neon_kvcache_run,
    .available = ops_neon_available,
};

#define CF_OPS_ISA neon
#define CF_OPS_BACKEND "cpu-neon"
#define CF_OPS_AVAILABLE ops_neon_available
#include "cpu/ops_fast_impls.h"
#endif
