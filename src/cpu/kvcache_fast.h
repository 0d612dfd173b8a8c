/* Fast KV-cache attention body (included once per ISA after ops_fast_common.h).
 * 1. Append: the new k (rotated) and v rows go into the cache, rows split over threads.
 * 2. Attention: one work item = (batch b, a chunk of KV heads, key split s). For each block of
 *    KV_KB key positions, every KV head of the chunk is visited (the cache is read in address
 *    order, which the prefetchers follow), and the G = H / Hk query heads of a group with their
 *    Sq rows are scored against each K row together (GQA folded: every K/V row is read once).
 *    Online softmax in fp32, P V accumulated in fp32 (cpu-avx512 with bf16 V: P rounded to bf16
 *    and two keys per vdpbf16ps, src/cpu/x86/kv_bf16_avx512.h). Quantized caches: the codes'
 *    values times a factor per key (int8 scale, fp8 descale) applied to the scores and to P;
 *    cpu-avx512 with bf16 q decodes the codes to bf16 in registers (the same vdpbf16ps kernels),
 *    the other builds decode a block's rows through a table of the 256 code values.
 * 3. Splits (num_splits > 1, or chosen when there are fewer items than threads) keep
 *    (max, sum, acc) per split and are merged by their LSE, as cflash_attn_merge does. */

#include "core/quant.h"

/* Prefetch distance, in blocks of KV_KB keys. */
#define KV_PF 2

/* o[t] = cf_kv_row(c, v, b, t0 + t, hk) for the n < KV_KB positions of a block: one division
 * for the block instead of one per row. */
static void kv_rows_of(const cf_kvcache_call* c, const cf_view* v, int64_t b, int64_t t0, int64_t n,
                       int64_t hk, int64_t* o) {
    if (!c->block_table) {
        const int64_t o0 = cf_kv_row(c, v, b, t0, hk);
        for (int64_t t = 0; t < n; t++)
            o[t] = o0 + t * v->stride[1];
        return;
    }
    const int32_t* bt = c->block_table + b * c->bt_stride;
    int64_t g = t0 / c->page_size, r = t0 % c->page_size;
    for (int64_t t = 0; t < n; t++) {
        o[t] = bt[g] * v->stride[0] + r * v->stride[1] + hk * v->stride[2];
        if (++r == c->page_size) r = 0, g++;
    }
}

/* New row n of batch b (row n0 + n of k_new / v_new) into cache position L + n. */
static void kv_append_fast(const cf_kvcache_call* c, float* buf, int64_t b, int64_t n, int64_t hk) {
    const cf_attn_call* a = &c->a;
    int64_t L, P, sk, n0, sn;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_new_rows(c, b, &n0, &sn);
    n += n0; /* the row in k_new / v_new; the cache position stays L + (n - n0) */
    const cf_view *kn = &c->knew, *vn = &c->vnew;
    ld_row(buf, at(kn, b * kn->stride[0] + n * kn->stride[1] + hk * kn->stride[2]), a->dtype, a->D);
    if (c->cos.data) {
        const int64_t half = c->rd / 2, pos = L + n - n0;
        for (int64_t i = 0; i < half; i++) {
            int64_t ia = c->interleaved ? 2 * i : i, ib = c->interleaved ? 2 * i + 1 : i + half;
            float co = cf_load(c->cos.data, c->cos.dtype, pos * c->cos.stride[0] + i);
            float sn = cf_load(c->sin.data, c->sin.dtype, pos * c->sin.stride[0] + i);
            float x = buf[ia], y = buf[ib];
            buf[ia] = x * co - y * sn;
            buf[ib] = x * sn + y * co;
        }
    }
    const void* vrow = at(vn, b * vn->stride[0] + n * vn->stride[1] + hk * vn->stride[2]);
    if (c->quant != CFLASH_KV_QUANT_NONE) { /* rounded to the dtype, then coded */
        cf_kv_quant_store(c, 0, b, L + n - n0, hk, buf, a->D);
        ld_row(buf, vrow, a->dtype, a->Dv);
        cf_kv_quant_store(c, 1, b, L + n - n0, hk, buf, a->Dv);
        return;
    }
    st_row(at(&c->kc, cf_kv_row(c, &c->kc, b, L + n - n0, hk)), a->dtype, buf, a->D);
    memcpy(at(&c->vc, cf_kv_row(c, &c->vc, b, L + n - n0, hk)), vrow,
           (size_t)a->Dv * cf_dtype_size(a->dtype));
}

#ifdef CF_OPS_KV_BLOCK_KERNELS /* the cpu-avx512 build */
#include "cpu/x86/kv_bf16_avx512.h"
#else
#ifndef CF_OPS_KV_DOTS_BF16 /* else the ISA file defines these two (cpu-neon: BFDOT) */
static inline int kv_dots_x4_ok(cf_dtype dt, int64_t R, int64_t D) {
    (void)dt, (void)R, (void)D;
    return 0;
}
static void kv_dots_bf16x4(const float* restrict q, int64_t R, int64_t D, const void* const* rows,
                           int64_t nb, float* restrict s) {
    (void)q, (void)R, (void)D, (void)rows, (void)nb, (void)s;
}
#endif
static inline int kv_pv_dp_ok(cf_dtype dt, int64_t R, int64_t Dv) {
    (void)dt, (void)R, (void)Dv;
    return 0;
}
static void kv_pv_dp(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows,
                     int64_t nb, const float* restrict p) {
    (void)acc, (void)R, (void)Dv, (void)rows, (void)nb, (void)p;
}
static void kv_pv_unpermute(float* acc, int64_t R, int64_t Dv) {
    (void)acc, (void)R, (void)Dv;
}
static inline int kv_q_bf16_ok(cf_dtype dt, int64_t D, int64_t Dv) {
    (void)dt, (void)D, (void)Dv;
    return 0;
}
static void kv_q_tables(int quant, uint8_t* tab) {
    (void)quant, (void)tab;
}
static void kv_q_decode(uint16_t* restrict dst, const void* const* rows, int64_t nb, int64_t n,
                        const uint8_t* tab, int int8, const void** out) {
    (void)dst, (void)rows, (void)nb, (void)n, (void)tab, (void)int8, (void)out;
}
static inline int kv_q_fused_ok(int64_t R) {
    (void)R;
    return 0;
}
static void kv_q_prep(uint16_t* restrict qw, const float* restrict q, int64_t R, int64_t D) {
    (void)qw, (void)q, (void)R, (void)D;
}
static void kv_dots_q(const uint16_t* restrict qw, int64_t R, int64_t D, const void* const* rows,
                      int64_t nb, const uint8_t* tab, int int8, const float* f, float* restrict s) {
    (void)qw, (void)R, (void)D, (void)rows, (void)nb, (void)tab, (void)int8, (void)f, (void)s;
}
static void kv_pv_q(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
                    const float* restrict p, const uint8_t* tab, int int8) {
    (void)acc, (void)R, (void)Dv, (void)rows, (void)nb, (void)p, (void)tab, (void)int8;
}
static void kv_q_unpermute(float* acc, int64_t R, int64_t Dv) {
    (void)acc, (void)R, (void)Dv;
}

/* s[r * KV_KB + t] = q_r . k_t for the nb key rows (dtype dt) of a block; kf: nb * D scratch. */
static void kv_dots(const float* restrict q, int64_t R, int64_t D, const void* const* rows,
                    int64_t nb, cf_dtype dt, float* restrict s, float* restrict kf) {
    for (int64_t t = 0; t < nb; t++)
        ld_row(kf + t * D, rows[t], dt, D);
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = 0; t < nb; t++) {
            const float *qr = q + r * D, *k = kf + t * D;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; d++)
                dot += qr[d] * k[d];
            s[r * KV_KB + t] = dot;
        }
}

/* acc[r] += sum_t p[r * KV_KB + t] v_t for the nb value rows of a block; vf: nb * Dv scratch. */
static void kv_pv(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
                  cf_dtype dt, const float* restrict p, float* restrict vf) {
    for (int64_t t = 0; t < nb; t++)
        ld_row(vf + t * Dv, rows[t], dt, Dv);
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = 0; t < nb; t++) {
            const float pr = p[r * KV_KB + t];
            const float* v = vf + t * Dv;
            float* a = acc + r * Dv;
#pragma omp simd
            for (int64_t d = 0; d < Dv; d++)
                a[d] += pr * v[d];
        }
}
#endif

/* Whether any of the nb rows (Dv elements of dtype dt each) holds a NaN or an infinity. */
static int kv_rows_nonfinite(const void* const* rows, int64_t nb, int64_t Dv, cf_dtype dt) {
    int bad = 0;
    for (int64_t t = 0; t < nb; t++)
        if (dt == CF_F32) {
            const float* x = rows[t];
            for (int64_t d = 0; d < Dv; d++)
                bad |= x[d] - x[d] != 0.0f; /* NaN for NaN and +-inf */
        } else {
            const uint16_t* h = rows[t];
            const uint16_t e = dt == CF_F16 ? 0x7c00 : 0x7f80; /* exponent all ones */
            for (int64_t d = 0; d < Dv; d++)
                bad |= (h[d] & e) == e;
        }
    return bad;
}

typedef struct kv_scratch {
    float *q, *acc, *m, *l, *s, *kf, *vf, *lv; /* lv: 16-lane partial sums of l (cpu-avx512) */
    int64_t *lo, *hi;
    /* quantized caches: a block's rows decoded (KV_KB * max(D, Dv)), the value of each code
     * (256), the factors of a block's keys (KV_KB) */
    float *kq, *lut, *fk;
    uint16_t* qw; /* q as bf16 words for kv_dots_q (R * D) */
} kv_scratch;

static size_t kv_scratch_floats(const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    return (size_t)(R * a->D + R * a->Dv + 2 * R + R * KV_KB + KV_KB * (a->D + a->Dv) + 4 * R +
                    16 * R + 64 + KV_KB * (a->D > a->Dv ? a->D : a->Dv) + 256 + KV_KB +
                    (R * a->D + 1) / 2);
}

/* p: a malloc'd block of kv_scratch_floats floats. The int64 ranges go first, where malloc's
 * alignment holds (after an odd number of floats they would be misaligned). */
static void kv_scratch_init(kv_scratch* w, float* p, const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    w->lo = (int64_t*)p, w->hi = w->lo + R, p += 4 * R;
    w->q = p, p += R * a->D;
    w->acc = p, p += R * a->Dv;
    w->m = p, p += R;
    w->l = p, p += R;
    w->s = p, p += R * KV_KB;
    w->kf = p, p += KV_KB * a->D;
    w->vf = p, p += KV_KB * a->Dv;
    w->lv = p, p += 16 * R;
    w->kq = p, p += KV_KB * (a->D > a->Dv ? a->D : a->Dv);
    w->lut = p, p += 256;
    w->fk = p, p += KV_KB;
    w->qw = (uint16_t*)p;
}

/* The dtype code rows are read as by the ISA's kv_dots / kv_pv (CF_OPS_KV_CODES), and the unit
 * of what they return (a factor the per-key factors carry). */
static inline cf_dtype kv_code_dtype(const cf_kvcache_call* c) {
    return c->quant == CFLASH_KV_QUANT_INT8       ? CF_I8
           : c->quant == CFLASH_KV_QUANT_FP8_E5M2 ? CF_F8E5M2
                                                  : CF_F8E4M3;
}
#ifndef CF_OPS_KV_CODES
static inline float kv_code_unit(cf_dtype dt) {
    (void)dt;
    return 1.0f;
}
#endif

/* ---- Quantized caches (any ISA): a block's codes decoded to fp32 rows through a table of the
 * 256 code values, the scales applied to the scores (K) and to P (V) key by key ---- */

#ifndef CF_OPS_KV_CODES /* else the ISA's kernels read the codes */
static void kv_q_lut(const cf_kvcache_call* c, float* lut) {
    for (int i = 0; i < 256; i++)
        lut[i] = c->quant == CFLASH_KV_QUANT_INT8
                     ? (float)(int8_t)(uint8_t)i
                     : cf_fp8_to_f32((uint8_t)i, c->quant == CFLASH_KV_QUANT_FP8_E5M2);
}

/* out[t] = dst + t * n: the n codes of row t decoded. */
static void kv_q_rows(const float* lut, const void* const* rows, int64_t nb, int64_t n, float* dst,
                      const void** out) {
    for (int64_t t = 0; t < nb; t++) {
        const uint8_t* x = rows[t];
        float* y = dst + t * n;
        for (int64_t d = 0; d < n; d++)
            y[d] = lut[x[d]];
        out[t] = y;
    }
}

#endif

/* f[t]: the factor of key t0 + t (t < nb) of batch b, KV head hk, K (is_v 0) or V: its int8
 * scale, or the fp8 descale, times u (the unit of the values the kernels read the codes as); 0
 * for t in [nb, KV_KB). */
static void kv_q_factors(const cf_kvcache_call* c, int is_v, int64_t b, int64_t t0, int64_t nb,
                         int64_t hk, float u, float* f) {
    if (c->quant != CFLASH_KV_QUANT_INT8) {
        const float d = cf_kv_descale(c, is_v, b, hk) * u;
        for (int64_t t = 0; t < KV_KB; t++)
            f[t] = t < nb ? d : 0.0f;
        return;
    }
    const cf_view* sv = is_v ? &c->vs : &c->ks;
    int64_t o[KV_KB];
    kv_rows_of(c, sv, b, t0, nb, hk, o);
    for (int64_t t = 0; t < KV_KB; t++)
        f[t] = t < nb ? ((const float*)sv->data)[o[t]] * u : 0.0f;
}

/* Whether a block's nb code rows (n one-byte codes each) or their factors f (kv_q_factors) hold
 * a NaN or an infinity (fp8 codes: e4m3fn S.1111.111, e5m2 exponent all ones; int8 codes are
 * always finite, an appended row with a NaN has a NaN scale). */
static int kv_codes_nonfinite(const cf_kvcache_call* c, const void* const* rows, int64_t nb,
                              int64_t n, const float* f) {
    int bad = 0;
    for (int64_t t = 0; t < nb; t++)
        bad |= f[t] - f[t] != 0.0f; /* NaN for NaN and +-inf */
    if (c->quant == CFLASH_KV_QUANT_INT8) return bad;
    const uint8_t e = c->quant == CFLASH_KV_QUANT_FP8_E5M2 ? 0x7c : 0x7f;
    for (int64_t t = 0; t < nb; t++) {
        const uint8_t* x = rows[t];
        for (int64_t d = 0; d < n; d++)
            bad |= (x[d] & e) == e;
    }
    return bad;
}

/* x[r * KV_KB + t] *= f[t] for the R rows of a block's scores or P (a block whose rows see only
 * some keys and whose V has a NaN or an infinity goes through kv_pv_visible_q instead). */
static void kv_q_apply(float* x, int64_t R, const float* f) {
    for (int64_t r = 0; r < R; r++)
#pragma omp simd
        for (int64_t t = 0; t < KV_KB; t++)
            x[r * KV_KB + t] *= f[t];
}

/* Where element d of a row of acc sits: d (accm 0), or its permuted place with kv_pv_dp (accm 1,
 * see kv_pv_unpermute) or kv_pv_q (accm 2, kv_q_unpermute). */
static inline int64_t kv_acc_index(int64_t d, int accm) {
    if (accm == 1) return (d & ~31) + ((d >> 2) & 1) * 16 + ((d >> 3) & 3) * 4 + (d & 3);
    if (accm == 2) return (d & ~63) + ((d >> 2) & 3) * 16 + ((d >> 4) & 3) * 4 + (d & 3);
    return d;
}

/* acc[r] += p[r][t] v_t for rows [r0, r0 + n) and the keys t of the block (at jb) each row sees,
 * pair by pair: for a partly masked block whose V holds a NaN or infinity (rare), where a masked
 * key's weight 0 would still carry it into the row. accm: the order of acc (kv_acc_index). */
static void kv_pv_visible(const cf_kvcache_call* c, kv_scratch* w, int64_t r0, int64_t n,
                          int64_t jb, const void* const* rows, int64_t nb, int accm) {
    const int64_t Dv = c->a.Dv;
    for (int64_t t = 0; t < nb; t++) {
        ld_row(w->vf, rows[t], c->a.dtype, Dv);
        for (int64_t r = r0; r < r0 + n; r++) {
            if (jb + t < w->lo[r] || jb + t >= w->hi[r]) continue;
            const float pr = w->s[r * KV_KB + t];
            float* a = w->acc + r * Dv;
            for (int64_t d = 0; d < Dv; d++)
                a[kv_acc_index(d, accm)] += pr * w->vf[d];
        }
    }
}

/* kv_pv_visible for a quantized cache: V rows [r0, r0 + n) of the block (key position t0 of the
 * cache for its first key, KV head hk) decoded from their codes and times each key's factor
 * (the factor on V rather than on P: the same product), visible pairs only. */
static void kv_pv_visible_q(const cf_kvcache_call* c, kv_scratch* w, int64_t r0, int64_t n,
                            int64_t jb, const void* const* rows, int64_t nb, int64_t b, int64_t t0,
                            int64_t hk, int accm) {
    const int64_t Dv = c->a.Dv;
    const int e5 = c->quant == CFLASH_KV_QUANT_FP8_E5M2, i8 = c->quant == CFLASH_KV_QUANT_INT8;
    kv_q_factors(c, 1, b, t0, nb, hk, 1.0f, w->fk);
    for (int64_t t = 0; t < nb; t++) {
        const uint8_t* x = rows[t];
        const float f = w->fk[t];
        for (int64_t d = 0; d < Dv; d++)
            w->vf[d] = (i8 ? (float)(int8_t)x[d] : cf_fp8_to_f32(x[d], e5)) * f;
        for (int64_t r = r0; r < r0 + n; r++) {
            if (jb + t < w->lo[r] || jb + t >= w->hi[r]) continue;
            const float pr = w->s[r * KV_KB + t];
            float* a = w->acc + r * Dv;
            for (int64_t d = 0; d < Dv; d++)
                a[kv_acc_index(d, accm)] += pr * w->vf[d];
        }
    }
}

/* Keys [j0, j1) of batch b for the KV heads [hk0, hk0 + nh) and query rows [i0, i0 + nq):
 * leaves the unnormalised acc, the running max m and the sum l of each of the R = nh * G * nq
 * rows in w (row r: query head hk0 * G + r / nq, query i0 + r % nq). Every KV head of a key
 * position is visited before the next position: the cache is read in address order. */
static void kv_item(const cf_kvcache_call* c, kv_scratch* w, int64_t b, int64_t hk0, int64_t nh,
                    int64_t i0, int64_t nq, int64_t j0, int64_t j1) {
    const cf_attn_call* a = &c->a;
    const int64_t G = a->H / a->Hk, Rg = G * nq, R = nh * Rg, D = a->D, Dv = a->Dv;
    int64_t L, P, sk, q0, Sq;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_q_rows(c, b, &q0, &Sq);
    int64_t jlo = j1, jhi = j0;
    for (int64_t r = 0; r < R; r++) {
        int64_t i = i0 + r % nq, h = hk0 * G + r / nq, lo, hi;
        float* q = w->q + r * D;
        ld_row(q, at(&a->q, b * a->q.stride[0] + (q0 + i) * a->q.stride[1] + h * a->q.stride[2]),
               a->dtype, D);
        if (c->cos.data) { /* rotate at the query's position and round to the dtype */
            const int64_t half = c->rd / 2, pos = cf_kv_qpos(c, L, i);
            for (int64_t t = 0; t < half; t++) {
                int64_t ia = c->interleaved ? 2 * t : t, ib = c->interleaved ? 2 * t + 1 : t + half;
                float co = cf_load(c->cos.data, c->cos.dtype, pos * c->cos.stride[0] + t);
                float sn = cf_load(c->sin.data, c->sin.dtype, pos * c->sin.stride[0] + t);
                float x = q[ia], y = q[ib];
                q[ia] = x * co - y * sn;
                q[ib] = x * sn + y * co;
            }
            for (int64_t d = 0; d < D; d++)
                q[d] = cf_round_to(a->dtype, q[d]);
        }
        cf_attn_key_range(a, i, Sq, sk, &lo, &hi);
        lo = lo > j0 ? lo : j0;
        hi = hi < j1 ? hi : j1;
        w->lo[r] = lo, w->hi[r] = hi;
        if (lo < hi) {
            if (lo < jlo) jlo = lo;
            if (hi > jhi) jhi = hi;
        }
        w->m[r] = -INFINITY;
        w->l[r] = 0.0f;
    }
    memset(w->acc, 0, sizeof(float) * (size_t)(R * Dv));
    memset(w->lv, 0, sizeof(float) * (size_t)(16 * R));
    const int64_t es = (int64_t)cf_dtype_size(c->kc.dtype); /* 1 for code caches */
    const int quant = c->quant != CFLASH_KV_QUANT_NONE;
    const int qbf = quant && kv_q_bf16_ok(a->dtype, D, Dv); /* codes decoded to bf16 */
    const int qf = qbf && kv_q_fused_ok(Rg);                /* ... in registers */
    const int bf = !quant || (qbf && !qf);                  /* rows read as the dtype */
    const int dx4 = bf && kv_dots_x4_ok(a->dtype, Rg, D);   /* bf16 scores, keys in fours */
    const int pdp = bf && kv_pv_dp_ok(a->dtype, Rg, Dv);    /* P.V by vdpbf16ps */
    const int accm = qf ? 2 : pdp;                          /* the order of acc */
    const int int8 = c->quant == CFLASH_KV_QUANT_INT8;
    if (qf) kv_q_prep(w->qw, w->q, R, D);
    uint8_t* qtab = (uint8_t*)w->lut;
    uint16_t* qrow = (uint16_t*)w->kq;
    const void* drows[KV_KB]; /* the decoded rows */
    if (qbf) kv_q_tables(c->quant, qtab);
    const float unit = qbf ? 1.0f : kv_code_unit(kv_code_dtype(c)); /* of what kv_dots reads */
#ifndef CF_OPS_KV_CODES
    if (quant) kv_q_lut(c, w->lut);
    const void* qrows[KV_KB]; /* decoded rows (quantized caches) */
#endif
    const void* rows[KV_KB];
    int64_t base[KV_KB], pfk[KV_KB], pfv[KV_KB];
    for (int64_t jb = jlo; jb < jhi; jb += KV_KB) {
        const int64_t nb = jhi - jb < KV_KB ? jhi - jb : KV_KB;
        kv_rows_of(c, &c->kc, b, P + jb, nb, hk0, base);
        /* the next block's rows, prefetched into L2 head by head between the pieces of work on
         * this block (one burst stalls on the miss buffers while no work is in flight) */
        const int64_t pf0 = jb + KV_PF * KV_KB;
        const int64_t npf = pf0 >= jhi ? 0 : (jhi - pf0 < KV_KB ? jhi - pf0 : KV_KB);
        kv_rows_of(c, &c->kc, b, P + pf0, npf, hk0, pfk);
        kv_rows_of(c, &c->vc, b, P + pf0, npf, hk0, pfv);
        for (int64_t g = 0; g < nh; g++) {
            for (int64_t t = 0; t < nb; t++)
                rows[t] = (const char*)c->kc.data + (base[t] + g * c->kc.stride[2]) * es;
            for (int64_t t = 0; t < npf; t++)
                for (int64_t o = 0; o < D * es; o += 64)
                    __builtin_prefetch(
                        (const char*)c->kc.data + (pfk[t] + g * c->kc.stride[2]) * es + o, 0, 2);
            float* sg = w->s + g * Rg * KV_KB;
            if (qf) { /* scores times each key's factor */
                kv_q_factors(c, 0, b, P + jb, nb, hk0 + g, unit, w->fk);
                kv_dots_q(w->qw + g * Rg * D, Rg, D, rows, nb, qtab, int8, w->fk, sg);
            } else if (qbf) { /* the codes as bf16 rows; scores times each key's factor */
                kv_q_decode(qrow, rows, nb, D, qtab, int8, drows);
                if (dx4)
                    kv_dots_bf16x4(w->q + g * Rg * D, Rg, D, drows, nb, sg);
                else
                    kv_dots(w->q + g * Rg * D, Rg, D, drows, nb, CF_BF16, sg, w->kf);
                kv_q_factors(c, 0, b, P + jb, nb, hk0 + g, unit, w->fk);
                kv_q_apply(sg, Rg, w->fk);
            } else if (quant) { /* scores against the codes' values, then times each key's factor */
#ifdef CF_OPS_KV_CODES
                kv_dots(w->q + g * Rg * D, Rg, D, rows, nb, kv_code_dtype(c), sg, w->kf);
#else
                kv_q_rows(w->lut, rows, nb, D, w->kq, qrows);
                kv_dots(w->q + g * Rg * D, Rg, D, qrows, nb, CF_F32, sg, w->kf);
#endif
                kv_q_factors(c, 0, b, P + jb, nb, hk0 + g, unit, w->fk);
                kv_q_apply(sg, Rg, w->fk);
            } else if (dx4)
                kv_dots_bf16x4(w->q + g * Rg * D, Rg, D, rows, nb, sg);
            else
                kv_dots(w->q + g * Rg * D, Rg, D, rows, nb, a->dtype, sg, w->kf);
        }
        for (int64_t r = 0; r < R; r++) {
            const int64_t i = i0 + r % nq, h = hk0 * G + r / nq;
            float* s = w->s + r * KV_KB;
            const float slope = cf_attn_slope(a, b, h);
#ifdef CF_OPS_KV_BLOCK_KERNELS
            if (nb == 16 && a->softcap == 0.0f && slope == 0.0f && w->lo[r] <= jb &&
                w->hi[r] >= jb + 16) { /* a whole block visible: no masks, no horizontal sums */
                kv_softmax16(s, a->scale, w->m + r, w->l + r, w->lv + 16 * r, w->acc + r * Dv, Dv);
                continue;
            }
#endif
            float mx = -INFINITY;
            if (a->softcap == 0.0f && slope == 0.0f) { /* branch-free: vectorizes */
                const int64_t lo = w->lo[r] - jb, hi = w->hi[r] - jb;
                const float scale = a->scale;
#pragma omp simd reduction(max : mx)
                for (int64_t t = 0; t < nb; t++) {
                    float x = (t >= lo && t < hi) ? scale * s[t] : -INFINITY;
                    s[t] = x;
                    mx = x > mx ? x : mx;
                }
            } else
                for (int64_t t = 0; t < nb; t++) {
                    const int64_t j = jb + t;
                    if (j < w->lo[r] || j >= w->hi[r]) {
                        s[t] = -INFINITY;
                        continue;
                    }
                    float x = a->scale * s[t];
                    if (a->softcap > 0.0f || slope != 0.0f)
                        x = cf_attn_score(a, x, slope, i, j, Sq, sk);
                    s[t] = x;
                    mx = x > mx ? x : mx;
                }
            if (mx == -INFINITY) { /* nothing visible in this block (or only NaN): P row is 0 */
                int nan = 0;
                for (int64_t t = 0; t < nb; t++)
                    nan |= s[t] != s[t], s[t] = 0.0f;
                if (nan) w->m[r] = NAN, w->l[r] = NAN; /* a NaN score: the row is NaN */
                continue;
            }
            /* a running max that does not move leaves alpha = fexp(0) = 1 exactly: skip it */
            const float mnew = mx > w->m[r] ? mx : w->m[r];
            const float alpha = mx > w->m[r] ? fexp(w->m[r] - mnew) : 1.0f;
            const float sum = exp_row(s, nb, mnew);
            if (alpha != 1.0f) {
                float* acc = w->acc + r * Dv;
#pragma omp simd
                for (int64_t d = 0; d < Dv; d++)
                    acc[d] *= alpha;
            }
            w->l[r] = w->l[r] * alpha + sum;
            w->m[r] = mnew;
#ifdef CF_OPS_KV_BLOCK_KERNELS
            if (alpha != 1.0f)
                for (int t = 0; t < 16; t++)
                    w->lv[16 * r + t] *= alpha;
#endif
        }
        kv_rows_of(c, &c->vc, b, P + jb, nb, hk0, base);
        int partial = 0; /* some row does not see every key of the block */
        for (int64_t r = 0; r < R; r++)
            partial |= w->lo[r] > jb || w->hi[r] < jb + nb;
        for (int64_t g = 0; g < nh; g++) {
            for (int64_t t = 0; t < nb; t++)
                rows[t] = (const char*)c->vc.data + (base[t] + g * c->vc.stride[2]) * es;
            if (partial && !quant && kv_rows_nonfinite(rows, nb, Dv, a->dtype)) {
                kv_pv_visible(c, w, g * Rg, Rg, jb, rows, nb, accm);
                continue;
            }
            if (quant) kv_q_factors(c, 1, b, P + jb, nb, hk0 + g, unit, w->fk);
            if (partial && quant && kv_codes_nonfinite(c, rows, nb, Dv, w->fk)) {
                kv_pv_visible_q(c, w, g * Rg, Rg, jb, rows, nb, b, P + jb, hk0 + g, accm);
                continue;
            }
            for (int64_t t = 0; t < npf; t++)
                for (int64_t o = 0; o < Dv * es; o += 64)
                    __builtin_prefetch(
                        (const char*)c->vc.data + (pfv[t] + g * c->vc.stride[2]) * es + o, 0, 2);
            float* pg = w->s + g * Rg * KV_KB;
            if (quant) { /* P times each key's factor, against the codes' values */
                kv_q_apply(pg, Rg, w->fk);
                if (qf) {
                    kv_pv_q(w->acc + g * Rg * Dv, Rg, Dv, rows, nb, pg, qtab, int8);
                    continue;
                }
                if (qbf) {
                    kv_q_decode(qrow, rows, nb, Dv, qtab, int8, drows);
                    if (pdp)
                        kv_pv_dp(w->acc + g * Rg * Dv, Rg, Dv, drows, nb, pg);
                    else
                        kv_pv(w->acc + g * Rg * Dv, Rg, Dv, drows, nb, CF_BF16, pg, w->vf);
                    continue;
                }
#ifdef CF_OPS_KV_CODES
                kv_pv(w->acc + g * Rg * Dv, Rg, Dv, rows, nb, kv_code_dtype(c), pg, w->vf);
#else
                kv_q_rows(w->lut, rows, nb, Dv, w->kq, qrows);
                kv_pv(w->acc + g * Rg * Dv, Rg, Dv, qrows, nb, CF_F32, pg, w->vf);
#endif
            } else if (pdp)
                kv_pv_dp(w->acc + g * Rg * Dv, Rg, Dv, rows, nb, pg);
            else
                kv_pv(w->acc + g * Rg * Dv, Rg, Dv, rows, nb, a->dtype, pg, w->vf);
        }
    }
    if (accm == 1) kv_pv_unpermute(w->acc, R, Dv);
    if (accm == 2) kv_q_unpermute(w->acc, R, Dv);
#ifdef CF_OPS_KV_BLOCK_KERNELS
    for (int64_t r = 0; r < R; r++)
        w->l[r] += kv_sum16(w->lv + 16 * r);
#endif
}

/* Work decomposition: KV heads in chunks of nh and query rows in chunks of nq, so that an item
 * has at most KV_ROWS rows (its scratch stays in L2; K/V are read once per chunk of rows, as the
 * tiles of a prefill), keys in ns splits: num_splits as given, else enough items for every thread
 * twice over, with at least 512 keys per split; splits are cut while their partial results would
 * exceed 256 MB (they change only the order of the sums). */
#define KV_ROWS 64
static void kv_plan(const cf_kvcache_call* c, int64_t* nh, int64_t* nq, int64_t* ns) {
    const cf_attn_call* a = &c->a;
    const int64_t G = a->H / a->Hk;
    int64_t h = KV_ROWS / G;
    if (h < 1) h = 1;
    if (h > a->Hk) h = a->Hk;
    while (a->Hk % h)
        h--; /* equal chunks */
    *nh = h;
    int64_t q = KV_ROWS / (h * G);
    if (q < 1) q = 1;
    if (q > a->Sq) q = a->Sq > 0 ? a->Sq : 1;
    *nq = q;
    const int64_t items1 = a->B * (a->Hk / h) * ((a->Sq + q - 1) / q);
    int64_t n = c->num_splits;
    if (n == 0) {
        /* (Sq = 0: no items, and nothing to split) */
        int64_t want = 2 * (int64_t)a->threads;
        n = items1 >= want || items1 == 0 ? 1 : (want + items1 - 1) / items1;
        if (n > a->Sk / 512) n = a->Sk / 512;
    }
    if (n > a->Sk) n = a->Sk;
    if (n > 256) n = 256;
    while (n > 1 && items1 * n * h * G * q * (a->Dv + 2) > ((int64_t)64 << 20))
        n /= 2;
    *ns = n < 1 ? 1 : n;
}

/* out / lse of query row (b, i, h) (row q0 + i of out) from an unnormalised acc, max m and sum
 * l (0: no key seen, out 0 and lse -inf; NaN: a NaN score, NaN both). */
static void kv_write(const cf_kvcache_call* c, int64_t b, int64_t i, int64_t h, float* acc, float m,
                     float l) {
    const cf_attn_call* a = &c->a;
    int64_t q0, sq;
    cf_kv_q_rows(c, b, &q0, &sq);
    i += q0;
    const float inv = l != 0.0f ? 1.0f / l : 0.0f;
#pragma omp simd
    for (int64_t d = 0; d < a->Dv; d++)
        acc[d] *= inv;
    st_row(at(&a->out, b * a->out.stride[0] + i * a->out.stride[1] + h * a->out.stride[2]),
           a->dtype, acc, a->Dv);
    if (a->lse.data)
        ((float*)a->lse.data)[b * a->lse.stride[0] + h * a->lse.stride[1] + i * a->lse.stride[2]] =
            l != 0.0f ? m + logf(l) : -INFINITY;
}

static cflash_status fast_kvcache_run(const void* call) {
    const cf_kvcache_call* c = call;
    const cf_attn_call* a = &c->a;
    const int64_t G = a->H / a->Hk, Dv = a->Dv;
    int64_t nh, nq, ns;
    kv_plan(c, &nh, &nq, &ns);
    const int64_t nchunk = a->Hk / nh, nqc = (a->Sq + nq - 1) / nq, R = nh * G * nq;
    const int64_t groups = a->B * nchunk * nqc, items = groups * ns;
    /* splits only: per item acc (R * Dv), m (R), l (R) */
    float* parts = ns > 1 ? malloc(sizeof(float) * (size_t)(items * R * (Dv + 2))) : NULL;
    CFLASH_RETURN_IF(ns > 1 && !parts, CFLASH_ERR_OUT_OF_MEMORY,
                     "kvcache_fwd: out of memory for %lld partial rows", (long long)(items * R));
    int failed = 0;
#pragma omp parallel num_threads(a->threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * kv_scratch_floats(c, R));
        failed = !buf;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < c->total_new * a->Hk; r++) {
            int64_t b, n;
            cf_kv_new_row_of(c, r / a->Hk, &b, &n);
            if (buf) kv_append_fast(c, buf, b, n, r % a->Hk);
        }
        /* (implicit barrier: the appended rows are in the cache before any item reads them) */
        kv_scratch w = {0};
        if (buf) kv_scratch_init(&w, buf, c, R);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            if (!buf) continue;
            const int64_t gi = it / ns, s = it % ns;
            const int64_t b = gi / (nchunk * nqc), ch = (gi / nqc) % nchunk, qc = gi % nqc;
            int64_t L, P, sk, q0, sq;
            cf_kv_seq(c, b, &L, &P, &sk);
            cf_kv_q_rows(c, b, &q0, &sq); /* varlen: chunks past this sequence's rows are empty */
            const int64_t i0 = qc * nq, nqi = sq - i0 < nq ? sq - i0 : nq;
            if (nqi <= 0) continue;
            kv_item(c, &w, b, ch * nh, nh, i0, nqi, sk * s / ns, sk * (s + 1) / ns);
            const int64_t Ri = nh * G * nqi;
            if (ns == 1) {
                for (int64_t r = 0; r < Ri; r++)
                    kv_write(c, b, i0 + r % nqi, ch * nh * G + r / nqi, w.acc + r * Dv, w.m[r],
                             w.l[r]);
                continue;
            }
            float* dst = parts + it * R * (Dv + 2);
            memcpy(dst, w.acc, sizeof(float) * (size_t)(Ri * Dv));
            memcpy(dst + R * Dv, w.m, sizeof(float) * (size_t)Ri);
            memcpy(dst + R * Dv + R, w.l, sizeof(float) * (size_t)Ri);
        }
        /* merge the splits of each row by their LSE */
#pragma omp for schedule(static)
        for (int64_t row = 0; row < (ns > 1 ? groups * R : 0); row++) {
            if (!buf) continue;
            const int64_t gi = row / R, r = row % R;
            const int64_t b = gi / (nchunk * nqc), ch = (gi / nqc) % nchunk, qc = gi % nqc;
            int64_t q0, sq;
            cf_kv_q_rows(c, b, &q0, &sq);
            const int64_t i0 = qc * nq, nqi = sq - i0 < nq ? sq - i0 : nq;
            if (r >= nh * G * nqi) continue; /* (none when nqi <= 0: an empty chunk) */
            const float* first = parts + gi * ns * R * (Dv + 2);
            float M = -INFINITY, l = 0.0f;
            for (int64_t s = 0; s < ns; s++) {
                float m = first[s * R * (Dv + 2) + R * Dv + r];
                M = m > M || m != m ? m : M; /* a NaN split max (a NaN score) makes the row NaN */
                if (M != M) break;
            }
            float* o = buf;
            for (int64_t d = 0; d < Dv; d++)
                o[d] = 0.0f;
            for (int64_t s = 0; s < ns && M != -INFINITY; s++) {
                const float* ps = first + s * R * (Dv + 2);
                float m = ps[R * Dv + r];
                if (m == -INFINITY) continue;
                float f = expf(m - M);
                l += f * ps[R * Dv + R + r];
#pragma omp simd
                for (int64_t d = 0; d < Dv; d++)
                    o[d] += f * ps[r * Dv + d];
            }
            kv_write(c, b, i0 + r % nqi, ch * nh * G + r / nqi, o, M, l);
        }
        free(buf);
    }
    free(parts);
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "kvcache_fwd: out of memory for scratch");
    return CFLASH_OK;
}

/* Which calls this build serves: all, except where the ISA file names a feature it refuses
 * (CF_OPS_KV_QUANT_REFUSED: the reason quantized caches are refused). */
static int fast_kvcache_supports(const void* call, char* why, size_t n) {
#ifdef CF_OPS_KV_QUANT_REFUSED
    const cf_kvcache_call* c = call;
    if (c->quant != CFLASH_KV_QUANT_NONE) {
        snprintf(why, n, "%s", CF_OPS_KV_QUANT_REFUSED);
        return 0;
    }
#else
    (void)call, (void)why, (void)n;
#endif
    return 1;
}
