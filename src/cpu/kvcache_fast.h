/* Fast KV-cache attention (flash_attn_with_kvcache), the part every CPU build shares: included
 * once per ISA after ops_fast_common.h (its loops vectorize to that ISA), and run by kv_run over
 * the kernels the build picks for a call (a kv_path, filled by the build's choose function;
 * kv_choose_generic below serves any build).
 * 1. Append: the new k (rotated) and v rows go into the cache, rows split over threads.
 * 2. Attention: one work item = (batch b, a chunk of KV heads, key split s). For each block of
 *    KV_KB key positions, every KV head of the chunk is visited (the cache is read in address
 *    order, which the prefetchers follow), and the G = H / Hk query heads of a group with their
 *    Sq rows are scored against each K row together (GQA folded: every K/V row is read once).
 *    An item is four named steps: kv_item_start (q rows, key ranges), then per block
 *    kv_block_scores, kv_block_softmax (online softmax in fp32) and kv_block_pv (P V in fp32).
 *    Quantized caches: the codes' values times a factor per key (int8 scale, fp8 descale), applied
 *    to the scores and to P. A KV head with KV_GEMM_ROWS or more rows (chunks of prefill) may
 *    take the GEMM path instead (one KV head an item, the attention kernels' GEMMs; below).
 * 3. Splits (num_splits > 1, or chosen when there are fewer items than threads) keep
 *    (max, sum, acc) per split and are merged by their LSE, as cflash_attn_merge does.
 * 4. Chunks of prefill: where a build hands kv_run_with its attention forward, a sequence with
 *    G * sq >= KV_ATTEND_ROWS query rows over an unquantized cache runs on it instead of items,
 *    after the append, as one attention call over views of its cache rows (kv_attend). */

#include "core/log.h"
#include "core/quant.h"
#include "cpu/attn_cpu.h"
#include "cpu/ops_fast_common.h"
#include "probe/cpu_features.h"

/* Prefetch distance, in blocks of KV_KB keys. */
#define KV_PF 2

/* ---- Scratch of one thread ------------------------------------------------------------------ */

typedef struct kv_scratch {
    float *q, *acc, *m, *l, *s, *kf, *vf;
    float* st; /* (KV_KB, R): a block's scores transposed (the GEMM path's) */
    float* lv; /* 16-lane partial sums of l (a kv_path's softmax16), added to l at the end */
    int64_t *lo, *hi;
    /* quantized caches: a block's rows decoded (KV_KB * max(D, Dv) floats), the value of each
     * code (256; or byte tables), the factors of a block's keys (KV_KB), q in a kernel's own
     * form (R * D 16-bit words, 64-byte aligned) */
    float *kq, *lut, *fk;
    uint16_t* qw;
    /* int8 caches by integer dot products: q rows as 16-bit integers (R * D, 64-byte aligned),
     * each row's factor (R), and whether some q is not finite (then the fp32 scores serve) */
    int16_t* qi;
    float* qs;
    int qbad;
    /* q rows as fp32 in a kernel's own order (R * D, 64-byte aligned; the GEMM path: q^T, D rows
     * of R) */
    float* qf;
} kv_scratch;

static size_t kv_scratch_floats(const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    const int64_t dm = a->D > a->Dv ? a->D : a->Dv;
    return (size_t)(4 * R + R * a->D + R * a->Dv + 2 * R + 2 * R * KV_KB + KV_KB * (a->D + a->Dv) +
                    16 * R + KV_KB * dm + 256 + KV_KB + R * a->D + 32 + R + 64 + R * a->D);
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
    w->st = p, p += R * KV_KB;
    w->kf = p, p += KV_KB * a->D;
    w->vf = p, p += KV_KB * a->Dv;
    w->lv = p, p += 16 * R;
    w->kq = p, p += KV_KB * (a->D > a->Dv ? a->D : a->Dv);
    w->lut = p, p += 256;
    w->fk = p, p += KV_KB;
    w->qs = p, p += R;
    w->qw = (uint16_t*)(((uintptr_t)p + 63) & ~(uintptr_t)63); /* (64-byte aligned: the 64 spare) */
    w->qi = (int16_t*)w->qw + (R * a->D + 31) / 32 * 32;       /* (aligned too: the 32 spare) */
    w->qf = (float*)(w->qi + (R * a->D + 31) / 32 * 32);       /* (aligned: qi's 32 words) */
}

/* ---- The kernels of a call (what a build chooses) ---------------------------------------------
 */

/* One KV head's rows of an item, as the kernels see them: R query rows (G heads x nq rows). */
typedef struct kv_head {
    const cf_kvcache_call* c;
    kv_scratch* w;
    const float* q;     /* (R, D): q rows, fp32 holding the dtype's values */
    const uint16_t* qw; /* (R, D): q in the form the path's prep made (kv_path.prep), or NULL */
    float* s;           /* (R, KV_KB): scores, then P */
    float* acc;         /* (R, Dv): unnormalised output, in the path's order (acc_index) */
    int64_t R;
    /* Rows of a later block of this head for the kernel to prefetch into L2 as it goes (paths
     * with pf_inside): pf[t] next to its own row t, npf of them (<= KV_KB; 0: none). */
    const void* const* pf;
    int64_t npf;
    /* The GEMM path's: the build's attention kernels, and q^T (D rows of ldqt floats; this
     * head's R columns) */
    const cf_attn_kernels* gk;
    const float* qt;
    int64_t ldqt;
} kv_head;

typedef struct kv_path {
    /* Once per item, after the q rows are in w->q (R rows of all its heads): whatever the
     * kernels read besides (q in another form, code tables). NULL: nothing. */
    void (*prep)(const cf_kvcache_call* c, kv_scratch* w, int64_t R);
    /* h->s[r * KV_KB + t] = f[t] q_r . k_t for the nb (<= KV_KB) K rows of a block; f: each
     * key's factor (quantized caches; rows then hold 1-byte codes), NULL for 1. */
    void (*scores)(const kv_head* h, const void* const* rows, int64_t nb, const float* f);
    /* h->acc[r] += sum_t f[t] p[r][t] v_t, p = h->s (the kernel may scale it in place). */
    void (*pv)(const kv_head* h, const void* const* rows, int64_t nb, const float* f);
    /* Optional: n consecutive rows of a fully visible KV_KB-key block without ALiBi (softcap
     * already applied to s when scale is 1): per row, s = scale s, the running max m (with l, lv
     * and acc rescaled when it moves), s = exp(s - m), lv += s. Rows step by KV_KB in s, 16 in lv,
     * Dv in acc, 1 in m and l; one call for the run lets the rows' exp chains overlap. */
    void (*softmax16)(float* s, int64_t n, float scale, float* m, float* l, float* lv, float* acc,
                      int64_t Dv);
    /* Optional: where element d of a row of acc sits (NULL: at d), and the pass that puts the
     * rows (R of Dv) back in element order at the end of an item. */
    int64_t (*acc_index)(int64_t d);
    void (*finish)(float* acc, int64_t R, int64_t Dv);
    /* Whether scores and pv can prefetch the rows kv_head.pf names, spread through their own
     * work (0, or KV_PF_INTEL / KV_PF_AMD / KV_PF_X86: where doing so was measured to gain);
     * kv_run_item keeps it where kv_pf_inside_cpu says so (else the rows are prefetched before
     * each head's kernel and kv_head.pf stays NULL). */
    int pf_inside;
    /* Whether the rows handed to head g's kernels to prefetch (with pf_inside) are the later
     * block's g-th share in address order (key by key, the item's heads within a key) rather
     * than head g's own rows, so that the cache streams in as it lies (kv_pf_seq_list): 0, or where
     * that was measured to gain, as pf_inside (KV_PF_AMD: Zen 3, cpu-avx2, docs/PERF.md). */
    int pf_seq;
    /* The GEMM path (kv_choose_gemm): the build's attention kernels its scores and pv use. */
    const cf_attn_kernels* gemm;
} kv_path;

/* The dtype the rows of a call are read as: q's, or the code type of a quantized cache (the x86
 * kernels convert codes in registers). */
static inline cf_dtype kv_row_dtype(const cf_kvcache_call* c) {
    return c->quant == CFLASH_KV_QUANT_NONE       ? c->a.dtype
           : c->quant == CFLASH_KV_QUANT_INT8     ? CF_I8
           : c->quant == CFLASH_KV_QUANT_FP8_E5M2 ? CF_F8E5M2
                                                  : CF_F8E4M3;
}

/* The unit of the values the x86 kernels read codes of dtype dt as: an e4m3fn code shifted into
 * fp16's fields is its value times 2^-8, and the per-key factor takes the 2^8. */
static inline float kv_code_unit(cf_dtype dt) {
    return dt == CF_F8E4M3 ? 256.0f : 1.0f;
}

/* A build's choice of kernels for a call whose KV heads have R query rows in an item. */
typedef void (*kv_choose_fn)(const cf_kvcache_call* c, int64_t R, kv_path* p);

/* ---- Generic kernels (any build, any dtype) -------------------------------------------------- */

/* q . k over D floats. */
static inline float kv_dot(const float* restrict q, const float* restrict k, int64_t D) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; d++)
        dot += q[d] * k[d];
    return dot;
}

/* s[r * KV_KB + t] = q_r . k_t for nb key rows of dtype dt; kf: nb * D scratch. */
static void kv_dots_rows(const float* restrict q, int64_t R, int64_t D, const void* const* rows,
                         int64_t nb, cf_dtype dt, float* restrict s, float* restrict kf) {
    for (int64_t t = 0; t < nb; t++)
        ld_row(kf + t * D, rows[t], dt, D);
    int64_t r0 = 0;
    for (; r0 + 2 <= R; r0 += 2) { /* two rows by four keys per pass: 8 sums, 6 loads */
        const float *qa = q + r0 * D, *qb = qa + D;
        int64_t t = 0;
        for (; t + 4 <= nb; t += 4) {
            const float *k0 = kf + t * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, b0 = 0.0f, b1 = 0.0f, b2 = 0.0f,
                  b3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
            for (int64_t d = 0; d < D; d++) {
                const float x = qa[d], y = qb[d];
                a0 += x * k0[d], a1 += x * k1[d], a2 += x * k2[d], a3 += x * k3[d];
                b0 += y * k0[d], b1 += y * k1[d], b2 += y * k2[d], b3 += y * k3[d];
            }
            float *oa = s + r0 * KV_KB + t, *ob = oa + KV_KB;
            oa[0] = a0, oa[1] = a1, oa[2] = a2, oa[3] = a3;
            ob[0] = b0, ob[1] = b1, ob[2] = b2, ob[3] = b3;
        }
        for (; t < nb; t++)
            for (int64_t r = r0; r < r0 + 2; r++)
                s[r * KV_KB + t] = kv_dot(q + r * D, kf + t * D, D);
    }
    for (int64_t r = r0; r < R; r++) {
        const float* qr = q + r * D;
        int64_t t = 0;
        for (; t + 4 <= nb; t += 4) { /* four keys per pass: each q load feeds four products */
            const float *k0 = kf + t * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
            float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
            for (int64_t d = 0; d < D; d++) {
                const float x = qr[d];
                d0 += x * k0[d], d1 += x * k1[d], d2 += x * k2[d], d3 += x * k3[d];
            }
            float* o = s + r * KV_KB + t;
            o[0] = d0, o[1] = d1, o[2] = d2, o[3] = d3;
        }
        for (; t < nb; t++)
            s[r * KV_KB + t] = kv_dot(qr, kf + t * D, D);
    }
}

/* acc[r] += sum_t p[r * KV_KB + t] v_t for nb value rows of dtype dt; vf: nb * Dv scratch. */
static void kv_pv_rows(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows,
                       int64_t nb, cf_dtype dt, const float* restrict p, float* restrict vf) {
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

/* int8 caches by integer dot products (the x86 kernels): the largest |qi| of q as 16-bit integers
 * per row, so that the D products of a score stay in int32 (|code| <= 128). */
static inline float kv_i8_qmax(int64_t D) {
    const int64_t m = (int64_t)2147483647 / (128 * D) - 1;
    return (float)(m < 32767 ? m : 32767);
}

/* acc[r] += sum_t f[t] p[r * KV_KB + t] v_t key by key in fp32, for nb int8 rows of Dv codes,
 * element d of a row at idx(d): the x86 integer kernels' way for a P that is not finite. */
static inline void kv_pv_i8_keys(float* acc, int64_t R, int64_t Dv, const void* const* rows,
                                 int64_t nb, const float* p, const float* f,
                                 int64_t (*idx)(int64_t)) {
    for (int64_t t = 0; t < nb; t++)
        for (int64_t r = 0; r < R; r++) {
            const float w = f[t] * p[r * KV_KB + t];
            for (int64_t d = 0; d < Dv; d++)
                acc[r * Dv + idx(d)] += w * (float)((const int8_t*)rows[t])[d];
        }
}

/* x[r * KV_KB + t] *= u f[t] for the R rows of a block's scores or P (f: 0 past the block's keys;
 * u: the unit a build's kernels read codes in, kv_code_unit; a block whose rows see only some keys
 * and whose V holds a NaN or an infinity goes through kv_pv_visible instead, so a masked key's
 * factor never reaches a row). */
static void kv_q_apply(float* x, int64_t R, const float* f, float u) {
    for (int64_t r = 0; r < R; r++)
#pragma omp simd
        for (int64_t t = 0; t < KV_KB; t++)
            x[r * KV_KB + t] *= u * f[t];
}

static void kv_scores_rows(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const cf_attn_call* a = &h->c->a;
    kv_dots_rows(h->q, h->R, a->D, rows, nb, a->dtype, h->s, h->w->kf);
    (void)f; /* (unquantized) */
}

static void kv_pv_rows_of(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const cf_attn_call* a = &h->c->a;
    kv_pv_rows(h->acc, h->R, a->Dv, rows, nb, a->dtype, h->s, h->w->vf);
    (void)f;
}

/* Quantized caches, any build: the value of each of the 256 codes in a table, a block's code
 * rows decoded through it to fp32 rows, the factors applied to the scores and to P. */
static void kv_lut_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    (void)R;
    for (int i = 0; i < 256; i++)
        w->lut[i] = c->quant == CFLASH_KV_QUANT_INT8
                        ? (float)(int8_t)(uint8_t)i
                        : cf_fp8_to_f32((uint8_t)i, c->quant == CFLASH_KV_QUANT_FP8_E5M2);
}

/* out[t] = dst + t * n: the n codes of row t decoded. */
static void kv_lut_rows(const float* lut, const void* const* rows, int64_t nb, int64_t n,
                        float* dst, const void** out) {
    for (int64_t t = 0; t < nb; t++) {
        const uint8_t* x = rows[t];
        float* y = dst + t * n;
        for (int64_t d = 0; d < n; d++)
            y[d] = lut[x[d]];
        out[t] = y;
    }
}

static void kv_scores_lut(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const int64_t D = h->c->a.D;
    const void* dec[KV_KB];
    kv_lut_rows(h->w->lut, rows, nb, D, h->w->kq, dec);
    kv_dots_rows(h->q, h->R, D, dec, nb, CF_F32, h->s, h->w->kf);
    kv_q_apply(h->s, h->R, f, 1.0f);
}

static void kv_pv_lut(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const int64_t Dv = h->c->a.Dv;
    const void* dec[KV_KB];
    kv_q_apply(h->s, h->R, f, 1.0f);
    kv_lut_rows(h->w->lut, rows, nb, Dv, h->w->kq, dec);
    kv_pv_rows(h->acc, h->R, Dv, dec, nb, CF_F32, h->s, h->w->vf);
}

/* The generic choice: fp32 loops over rows converted to fp32 (codes through the table). */
static inline void kv_choose_generic(const cf_kvcache_call* c, int64_t R, kv_path* p) {
    (void)R;
    const int quant = c->quant != CFLASH_KV_QUANT_NONE;
    *p = (kv_path){.prep = quant ? kv_lut_prep : NULL,
                   .scores = quant ? kv_scores_lut : kv_scores_rows,
                   .pv = quant ? kv_pv_lut : kv_pv_rows_of};
}

/* ---- Many query rows per KV head: the attention GEMMs ----------------------------------------
 * A chunk of prefill, a speculative step or MLA's many heads on one latent KV head in the
 * KV-cache call (tens of query rows per KV head) run as the tiled forward does: S^T = K q^T and
 * acc += P V as fp32 GEMMs on the build's register tiles (cf_attn_kernels), the block's K and V
 * rows converted to fp32 (or decoded, for a quantized cache) once for all the rows; bf16 on the
 * bf16 pairs GEMM where the kernels have one (kv_gemm_bf16_ok). Taken by the
 * x86 builds, where it was measured; the generic build's portable GEMM is slower than its row
 * loops (1.2-1.5x at 128 rows), and ARM's has not been timed. */

/* Rows of one KV head in an item from which the GEMM path serves (and items take one KV head:
 * kv_plan), and the rows of such an item. Measured (docs/PERF.md, Xeon 6/207, bf16 D 128): at 16
 * rows the per-row kernels are 1.3-1.5x faster, at 32 the two are even, from 48 on the GEMMs
 * win; 128-row items beat 64-row ones by 1.2x. */
#define KV_GEMM_ROWS 32
#define KV_GEMM_ITEM 128

/* q^T of the item's R rows: w->qf[d * R + r] = q_r[d]; a quantized cache's code table. */
static void kv_gemm_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    const int64_t D = c->a.D;
    if (c->quant != CFLASH_KV_QUANT_NONE) kv_lut_prep(c, w, R);
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d++)
            w->qf[d * R + r] = w->q[r * D + d];
}

/* Rows t < nb of the block as fp32 rows of n in dst: converted from the dtype, or a quantized
 * cache's codes through the table (their factors go to the scores and to P, as kv_scores_lut). */
static void kv_gemm_rows(const kv_head* h, const void* const* rows, int64_t nb, int64_t n,
                         float* dst) {
    if (h->c->quant != CFLASH_KV_QUANT_NONE) {
        const void* dec[KV_KB];
        kv_lut_rows(h->w->lut, rows, nb, n, dst, dec);
        return;
    }
    for (int64_t t = 0; t < nb; t++)
        h->gk->to_f32(dst + t * n, rows[t], h->c->a.dtype, n);
}

/* s from the GEMM's S^T (nb x R in w->st): transposed by the kernels' bias_t onto zeros (0 + x is
 * x; -inf stays -inf), times each key's factor f for a quantized cache (NULL: none). */
static void kv_scores_from_st(const kv_head* h, int64_t nb, const float* f) {
    const int64_t R = h->R;
    memset(h->s, 0, sizeof(float) * (size_t)(R * KV_KB));
    h->gk->bias_t(h->s, KV_KB, h->w->st, R, nb, R, 0);
    if (f) kv_q_apply(h->s, R, f, 1.0f);
}

/* s = q k^T for the block (times each key's factor f for a quantized cache): K rows to fp32,
 * S^T (nb x R) by the GEMM, then kv_scores_from_st. */
static void kv_scores_gemm(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const int64_t D = h->c->a.D, R = h->R;
    float* kf = h->w->kf;
    kv_gemm_rows(h, rows, nb, D, kf);
    h->gk->gemm_f32(nb, R, D, kf, D, 1, h->qt, h->ldqt, h->w->st, R, 0);
    kv_scores_from_st(h, nb, f);
}

/* acc += P V for the block (P times each key's factor f first for a quantized cache): V rows to
 * fp32, one GEMM. */
static void kv_pv_gemm(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const cf_attn_kernels* k = h->gk;
    const int64_t Dv = h->c->a.Dv, R = h->R;
    float* vf = h->w->vf;
    if (f) kv_q_apply(h->s, R, f, 1.0f);
    kv_gemm_rows(h, rows, nb, Dv, vf);
    k->gemm_f32(R, Dv, nb, h->s, KV_KB, 1, vf, Dv, h->acc, Dv, 1);
}

/* bf16 caches with bf16 q on kernels with a bf16 pairs GEMM (gemm_bf16: vdpbf16ps where it is
 * the faster, AMD), as the tiled forward multiplies: q and K as they are, P rounded to bf16 (as
 * the naive bf16 computation materializes it); about twice the fp32 GEMMs' rate there. */
static inline int kv_gemm_bf16_ok(const cf_kvcache_call* c, const cf_attn_kernels* k) {
    return c->quant == CFLASH_KV_QUANT_NONE && c->a.dtype == CF_BF16 && k->gemm_bf16 &&
           c->a.D % 2 == 0;
}

/* q^T of the item's R rows as bf16 pairs in w->qw: ((uint32_t*)w->qw)[p * R + r] = (q_r[2p],
 * q_r[2p + 1]) (w->q holds bf16 values: the conversion is exact). */
static void kv_gemm_prep_bf16(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    const int64_t D = c->a.D;
    uint32_t* qp = (uint32_t*)w->qw;
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < D / 2; i++)
            qp[i * R + r] = (uint32_t)cf_f32_to_bf16(w->q[r * D + 2 * i]) |
                            (uint32_t)cf_f32_to_bf16(w->q[r * D + 2 * i + 1]) << 16;
}

/* s = q k^T for the block: the K rows copied together as pairs (a bf16 row is D / 2 of them),
 * S^T (nb x R) by the pairs GEMM, then kv_scores_from_st (f: NULL, unquantized). */
static void kv_scores_gemm_bf16(const kv_head* h, const void* const* rows, int64_t nb,
                                const float* f) {
    const int64_t D = h->c->a.D, R = h->R;
    uint32_t* kp = (uint32_t*)h->w->kf; /* (KV_KB * D floats: room for nb * D / 2 pairs) */
    for (int64_t t = 0; t < nb; t++)
        memcpy(kp + t * (D / 2), rows[t], sizeof(uint16_t) * (size_t)D);
    const uint32_t* qp = (const uint32_t*)h->w->qw + (h->qt - h->w->qf); /* (this head's columns) */
    h->gk->gemm_bf16(nb, R, D / 2, kp, D / 2, 1, qp, h->ldqt, h->w->st, R, 0);
    kv_scores_from_st(h, nb, f);
}

/* acc += P V for the block: P rounded to bf16 (pairs of keys: a row of KV_KB is KV_KB / 2 of
 * them, the key past an odd nb zero), V's rows interleaved in pairs of keys (the last one alone
 * with zeros), one pairs GEMM. */
static void kv_pv_gemm_bf16(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    (void)f;
    const cf_attn_kernels* k = h->gk;
    const int64_t Dv = h->c->a.Dv, R = h->R, np = (nb + 1) / 2;
    uint32_t* pp = (uint32_t*)h->w->st; /* (R * KV_KB floats) */
    uint32_t* vp = (uint32_t*)h->w->vf; /* (KV_KB * Dv floats: room for np * Dv pairs) */
    for (int64_t r = 0; r < R; r++) {
        if (nb % 2) h->s[r * KV_KB + nb] = 0.0f; /* (nb < KV_KB: a column of s past the block) */
        k->from_f32(pp + r * (KV_KB / 2), h->s + r * KV_KB, CF_BF16, 2 * np);
    }
    for (int64_t i = 0; i < np; i++)
        k->interleave_u16(vp + i * Dv, (const uint16_t*)rows[2 * i],
                          2 * i + 1 < nb ? (const uint16_t*)rows[2 * i + 1] : NULL, Dv);
    k->gemm_bf16(R, Dv, np, pp, KV_KB / 2, 1, vp, Dv, h->acc, Dv, 1);
}

/* The GEMM path on kernels k for a call whose KV heads have R >= KV_GEMM_ROWS rows in an item
 * (the build's softmax16 kept), else p as it was. */
static inline void kv_choose_gemm(const cf_kvcache_call* c, int64_t R, kv_path* p,
                                  const cf_attn_kernels* k) {
    if (R < KV_GEMM_ROWS) return;
    p->prep = kv_gemm_prep, p->scores = kv_scores_gemm, p->pv = kv_pv_gemm;
    if (kv_gemm_bf16_ok(c, k))
        p->prep = kv_gemm_prep_bf16, p->scores = kv_scores_gemm_bf16, p->pv = kv_pv_gemm_bf16;
    p->acc_index = NULL, p->finish = NULL, p->pf_inside = 0, p->gemm = k;
}

/* ---- Append ---------------------------------------------------------------------------------- */

/* Whether the n positions from t0 (batch b, KV head hk) are one run of rows in view v, as in an
 * unpaged cache or a paged block within one page: then *o0 = cf_kv_row(c, v, b, t0, hk) and row
 * t0 + t at *o0 + t * v->stride[1]. One division for the block instead of one per row. n = 0:
 * an empty run at 0 (t0 may be past the sequence's pages, which the table does not list). */
static inline int kv_rows_run(const cf_kvcache_call* c, const cf_view* v, int64_t b, int64_t t0,
                              int64_t n, int64_t hk, int64_t* o0) {
    *o0 = 0;
    if (n <= 0) return 1;
    if (c->block_table && t0 % c->page_size + n > c->page_size) return 0;
    *o0 = cf_kv_row(c, v, b, t0, hk);
    return 1;
}

/* o[t] = cf_kv_row(c, v, b, t0 + t, hk) for the n positions of a paged block, through the table
 * row by row (a block across pages; the fields in locals: the stores to o would otherwise reload
 * c and v each row). */
static void kv_rows_walk(const cf_kvcache_call* c, const cf_view* v, int64_t b, int64_t t0,
                         int64_t n, int64_t hk, int64_t* restrict o) {
    const int32_t* bt = c->block_table + b * c->bt_stride;
    const int64_t ps = c->page_size, s0 = v->stride[0], s1 = v->stride[1], sh = hk * v->stride[2];
    if (ps == 1) { /* a page a row (token pools): no carry from row to row, so it vectorizes */
        for (int64_t t = 0; t < n; t++)
            o[t] = bt[t0 + t] * s0 + sh;
        return;
    }
    int64_t g = t0 / ps, r = t0 % ps;
    for (int64_t t = 0; t < n; t++) {
        o[t] = bt[g] * s0 + r * s1 + sh;
        if (++r == ps) r = 0, g++;
    }
}

/* o[t] = cf_kv_row(c, v, b, t0 + t, hk) for the n <= KV_KB positions of a block. */
static void kv_rows_of(const cf_kvcache_call* c, const cf_view* v, int64_t b, int64_t t0, int64_t n,
                       int64_t hk, int64_t* restrict o) {
    int64_t o0;
    if (!kv_rows_run(c, v, b, t0, n, hk, &o0)) {
        kv_rows_walk(c, v, b, t0, n, hk, o);
        return;
    }
    const int64_t s1 = v->stride[1];
    for (int64_t t = 0; t < n; t++)
        o[t] = o0 + t * s1;
}

/* x[0..half pairs) rotated at position pos by the call's cos / sin tables. */
static void kv_rotate(const cf_kvcache_call* c, float* x, int64_t pos) {
    const int64_t half = c->rd / 2;
    for (int64_t i = 0; i < half; i++) {
        const int64_t ia = c->interleaved ? 2 * i : i, ib = c->interleaved ? 2 * i + 1 : i + half;
        const float co = cf_load(c->cos.data, c->cos.dtype, pos * c->cos.stride[0] + i);
        const float sn = cf_load(c->sin.data, c->sin.dtype, pos * c->sin.stride[0] + i);
        const float u = x[ia], v = x[ib];
        x[ia] = u * co - v * sn;
        x[ib] = u * sn + v * co;
    }
}

/* New row n of batch b (row n0 + n of k_new / v_new) into cache position L + n (an MLA latent
 * cache: the k_new row only, V being a view of it). */
static void kv_append_fast(const cf_kvcache_call* c, float* buf, int64_t b, int64_t n, int64_t hk) {
    const cf_attn_call* a = &c->a;
    int64_t L, P, sk, n0, sn;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_new_rows(c, b, &n0, &sn);
    const cf_view *kn = &c->knew, *vn = &c->vnew;
    const int64_t t = L + n; /* the cache position */
    ld_row(buf, at(kn, b * kn->stride[0] + (n0 + n) * kn->stride[1] + hk * kn->stride[2]), a->dtype,
           a->D);
    if (c->cos.data) kv_rotate(c, buf, t);
    if (c->quant != CFLASH_KV_QUANT_NONE) /* rounded to the dtype, then coded */
        cf_kv_quant_store(c, 0, b, t, hk, buf, a->D);
    else
        st_row(at(&c->kc, cf_kv_row(c, &c->kc, b, t, hk)), a->dtype, buf, a->D);
    if (c->latent) { /* V is a view of the row just stored */
        cf_kv_latent_scale(c, b, t, hk);
        return;
    }
    const void* vrow = at(vn, b * vn->stride[0] + (n0 + n) * vn->stride[1] + hk * vn->stride[2]);
    if (c->quant != CFLASH_KV_QUANT_NONE) {
        ld_row(buf, vrow, a->dtype, a->Dv);
        cf_kv_quant_store(c, 1, b, t, hk, buf, a->Dv);
        return;
    }
    memcpy(at(&c->vc, cf_kv_row(c, &c->vc, b, t, hk)), vrow,
           (size_t)a->Dv * cf_dtype_size(a->dtype));
}

/* ---- Quantized caches: factors and non-finite values -------------------------------------------
 */

/* Where the int8 scales (K: is_v 0, or V) of a block's nb keys from position t0 of batch b are
 * for KV head hk0: one run (o0 + t * st) or, across pages, o[t]; head hk0 + g adds g * sh. Found
 * once per block for every KV head of an item (a paged block across pages walks the table). */
typedef struct kv_qloc {
    const float* data;
    int run;
    int64_t o0, st, sh;
    int64_t o[KV_KB]; /* (across pages; o[t] = o[0] for t >= nb) */
} kv_qloc;

static void kv_q_locate(const cf_kvcache_call* c, int is_v, int64_t b, int64_t t0, int64_t nb,
                        int64_t hk0, kv_qloc* L) {
    const cf_view* sv = is_v ? &c->vs : &c->ks;
    L->data = sv->data, L->st = sv->stride[1], L->sh = sv->stride[2];
    L->run = kv_rows_run(c, sv, b, t0, nb, hk0, &L->o0);
    if (L->run) return;
    kv_rows_walk(c, sv, b, t0, nb, hk0, L->o);
    for (int64_t t = nb; t < KV_KB; t++)
        L->o[t] = L->o[0];
}

/* f[t]: the factor of key t (t < nb) of the block for KV head hk = hk0 + g of batch b, K (is_v
 * 0) or V: its int8 scale (L: kv_q_locate's for hk0), or the fp8 descale; 0 for t in [nb,
 * KV_KB). */
static void kv_q_factors(const cf_kvcache_call* c, const kv_qloc* L, int is_v, int64_t b,
                         int64_t hk, int64_t g, int64_t nb, float* f) {
    /* (vector stores: the kernels read f as vectors, which scalar stores would stall) */
    if (c->quant != CFLASH_KV_QUANT_INT8) {
        const float d = cf_kv_descale(c, is_v, b, hk);
#pragma omp simd
        for (int64_t t = 0; t < KV_KB; t++)
            f[t] = t < nb ? d : 0.0f;
        return;
    }
    const float* data = L->data + g * L->sh;
    if (L->run) { /* offsets in registers: strided scales */
        const int64_t o0 = L->o0, st = L->st;
#pragma omp simd
        for (int64_t t = 0; t < KV_KB; t++)
            f[t] = t < nb ? data[o0 + t * st] : 0.0f;
        return;
    }
    const int64_t* o = L->o;
#pragma omp simd
    for (int64_t t = 0; t < KV_KB; t++)
        f[t] = t < nb ? data[o[t]] : 0.0f;
}

/* Whether any of a block's V rows t < nb with bit t of sel set (Dv values each) holds a NaN or
 * an infinity: rows of the dtype, or code rows with their factors f (fp8 codes: e4m3fn
 * S.1111.111, e5m2 exponent all ones; int8 codes are always finite, an appended row with a NaN
 * has a NaN scale). */
static int kv_rows_nonfinite(const cf_kvcache_call* c, const void* const* rows, int64_t nb,
                             const float* f, unsigned sel) {
    const int64_t Dv = c->a.Dv;
    const cf_dtype dt = c->a.dtype;
    int bad = 0;
    for (int64_t t = 0; t < nb; t++)
        if (!(sel >> t & 1u))
            continue;
        else if (c->quant != CFLASH_KV_QUANT_NONE) {
            const uint8_t* x = rows[t];
            const uint8_t e = c->quant == CFLASH_KV_QUANT_FP8_E5M2   ? 0x7c
                              : c->quant == CFLASH_KV_QUANT_FP8_E4M3 ? 0x7f
                                                                     : 0;
            bad |= f[t] - f[t] != 0.0f; /* NaN for NaN and +-inf */
            for (int64_t d = 0; e && d < Dv; d++)
                bad |= (x[d] & e) == e;
        } else if (dt == CF_F32) {
            const float* x = rows[t];
            for (int64_t d = 0; d < Dv; d++)
                bad |= x[d] - x[d] != 0.0f;
        } else { /* (the largest exponent field, in 16-bit lanes: a compare per value widened) */
            const uint16_t* x = rows[t];
            const uint16_t e = dt == CF_F16 ? 0x7c00 : 0x7f80; /* exponent all ones */
            uint16_t most = 0;
#pragma omp simd reduction(max : most)
            for (int64_t d = 0; d < Dv; d++) {
                const uint16_t y = x[d] & e;
                most = y > most ? y : most;
            }
            bad |= most == e;
        }
    return bad;
}

/* vf[0..Dv) = the values of V row x (dtype, or codes times the factor f). */
static void kv_v_values(const cf_kvcache_call* c, const void* x, float f, float* vf) {
    const int64_t Dv = c->a.Dv;
    if (c->quant == CFLASH_KV_QUANT_NONE) {
        ld_row(vf, x, c->a.dtype, Dv);
        return;
    }
    const uint8_t* u = x;
    const int e5 = c->quant == CFLASH_KV_QUANT_FP8_E5M2, i8 = c->quant == CFLASH_KV_QUANT_INT8;
    for (int64_t d = 0; d < Dv; d++)
        vf[d] = (i8 ? (float)(int8_t)u[d] : cf_fp8_to_f32(u[d], e5)) * f;
}

/* Whether the items add a row of the call to each block's scores: an attention call's decode rows
 * (kv_attn_decode) with a bias, or with a boolean mask that is not left pads and lengths
 * (kv_mask_runs: the mask then stays in the call). */
static inline int kv_keyed(const cf_kvcache_call* c) {
    return c->a.bias.data != NULL || c->a.mask.data != NULL;
}

/* acc[r] += p[r][t] v_t for rows [r0, r0 + n) and the keys t of the block (at jb) each row sees,
 * pair by pair: for a partly masked block whose V holds a NaN or an infinity (rare), where a
 * masked key's weight 0 would still carry it into the row. */
static void kv_pv_visible(const cf_kvcache_call* c, kv_scratch* w, const kv_path* path, int64_t r0,
                          int64_t n, int64_t jb, const void* const* rows, int64_t nb,
                          const float* f) {
    const int64_t Dv = c->a.Dv;
    for (int64_t t = 0; t < nb; t++) {
        kv_v_values(c, rows[t], f ? f[t] : 1.0f, w->vf);
        for (int64_t r = r0; r < r0 + n; r++) {
            if (jb + t < w->lo[r] || jb + t >= w->hi[r]) continue;
            const float pr = w->s[r * KV_KB + t];
            if (kv_keyed(c) && pr == 0.0f && signbit(pr)) continue; /* hidden by the bias or mask */
            float* a = w->acc + r * Dv;
            for (int64_t d = 0; d < Dv; d++)
                a[path->acc_index ? path->acc_index(d) : d] += pr * w->vf[d];
        }
    }
}

/* ---- One work item, step by step --------------------------------------------------------------
 */

/* An item: batch b, KV heads [hk0, hk0 + nh), query rows [i0, i0 + nq) (R = nh * G * nq rows;
 * row r: query head hk0 * G + r / nq, query i0 + r % nq), keys [j0, j1) of the sequence. */
typedef struct kv_itm {
    int64_t b, hk0, nh, i0, nq, G, Rg, R; /* Rg = G * nq: the rows of one KV head */
    int64_t P, Sq, sk;                    /* left pad, query rows, keys of the sequence */
    int64_t jlo, jhi;                     /* the keys some row sees */
    int64_t es;                           /* bytes per cache element (1 for codes) */
    int sink;                             /* the rows start from their head's sink (split 0) */
    kv_path path;
} kv_itm;

/* q[0..D) = query row q0 + i, head h of batch b (cache length L) in fp32: rotated at its position
 * and rounded to the dtype where the call has rotary. (Varlen q views are lifted: stride[0] 0.) */
static void kv_q_row(const cf_kvcache_call* c, int64_t b, int64_t q0, int64_t L, int64_t i,
                     int64_t h, float* q) {
    const cf_attn_call* a = &c->a;
    ld_row(q, at(&a->q, b * a->q.stride[0] + (q0 + i) * a->q.stride[1] + h * a->q.stride[2]),
           a->dtype, a->D);
    if (c->cos.data) {
        kv_rotate(c, q, cf_kv_qpos(c, L, i));
        for (int64_t d = 0; d < a->D; d++)
            q[d] = cf_round_to(a->dtype, q[d]);
    }
}

/* The item's q rows into w->q (rotated at their positions and rounded to the dtype), each row's
 * visible keys [lo, hi) within [j0, j1), the span [jlo, jhi) of them all; m, l, acc, lv reset. */
static void kv_item_start(const cf_kvcache_call* c, kv_scratch* w, kv_itm* it, int64_t j0,
                          int64_t j1) {
    const cf_attn_call* a = &c->a;
    int64_t L, q0;
    cf_kv_seq(c, it->b, &L, &it->P, &it->sk);
    cf_kv_q_rows(c, it->b, &q0, &it->Sq);
    it->jlo = j1, it->jhi = j0;
    for (int64_t r = 0; r < it->R; r++) {
        const int64_t i = it->i0 + r % it->nq, h = it->hk0 * it->G + r / it->nq;
        kv_q_row(c, it->b, q0, L, i, h, w->q + r * a->D);
        int64_t lo, hi;
        cf_attn_key_range(a, i, it->Sq, it->sk, &lo, &hi);
        lo = lo > j0 ? lo : j0;
        hi = hi < j1 ? hi : j1;
        w->lo[r] = lo, w->hi[r] = hi;
        if (lo < hi) {
            if (lo < it->jlo) it->jlo = lo;
            if (hi > it->jhi) it->jhi = hi;
        }
        /* a sink is a key of score sink and value 0 (counted in one split of the keys) */
        w->m[r] = it->sink ? cf_attn_sink(a, h) : -INFINITY;
        w->l[r] = w->m[r] == -INFINITY ? 0.0f : 1.0f;
    }
    memset(w->acc, 0, sizeof(float) * (size_t)(it->R * a->Dv));
    memset(w->lv, 0, sizeof(float) * (size_t)(16 * it->R));
    if (it->path.prep) it->path.prep(c, w, it->R);
}

/* KV head g's rows of the item as a kernel sees them. */
static kv_head kv_head_of(const cf_kvcache_call* c, kv_scratch* w, const kv_itm* it, int64_t g) {
    const int64_t Rg = it->Rg;
    return (kv_head){.c = c,
                     .w = w,
                     .q = w->q + g * Rg * c->a.D,
                     .qw = w->qw + g * Rg * c->a.D,
                     .s = w->s + g * Rg * KV_KB,
                     .acc = w->acc + g * Rg * c->a.Dv,
                     .R = Rg,
                     .gk = it->path.gemm,
                     .qt = w->qf + g * Rg,
                     .ldqt = it->R};
}

/* rows[t]: the cache row of key jb + t (t < nb) for KV head hk0 + g in view v (K or V). base:
 * the rows' offsets for head hk0. */
static void kv_head_rows(const cf_view* v, const int64_t* base, int64_t nb, int64_t g, int64_t es,
                         const void** rows) {
    for (int64_t t = 0; t < nb; t++)
        rows[t] = (const char*)v->data + (base[t] + g * v->stride[2]) * es;
}

/* Prefetch into L2 the bytes [o0, o1) of rows[t] for t in [t0, t1) (bounds clipped to n). */
static inline void kv_pf_rows(const void* const* rows, int64_t n, int64_t t0, int64_t t1,
                              int64_t o0, int64_t o1) {
    for (int64_t t = t0; t < t1 && t < n; t++)
        for (int64_t o = o0; o < o1; o += 64)
            __builtin_prefetch((const char*)rows[t] + o, 0, 2);
}

/* Whether kernels that can prefetch a later block's rows inside their loops (kv_path.pf_inside =
 * where: the vendors where that was measured to gain) do on this CPU. KV_PF_INTEL: measured on
 * Intel (Xeon 6/207, 2 threads: bf16 decode on FMA 1.25x, int8 1.08x), where a burst of prefetches
 * waits on the L1 miss buffers with a head's work queued behind it; on AMD Zen 4 cpu-avx2's
 * kernels gained nothing (0.96-1.01x), on AMD Zen 3 (family 25 model 1, 2 threads, Sk 131072)
 * they gained 1.31x on bf16 caches, 1.16x on e4m3 and int8: cpu-avx2 takes KV_PF_X86. KV_PF_AMD:
 * measured on AMD Zen 4 (bf16 by vdpbf16ps, which Intel does not run by default). KV_PF_X86: both
 * (Zen 4: cpu-avx512's int8 VNNI kernels 1.02-1.06x, the FMA kernels on fp16 caches 1.03-1.07x;
 * with an int8 cache and fp32 q these 0.95-1.00x: Intel's). docs/PERF.md. Elsewhere the per-head
 * prefetch below stays until measured there. */
enum { KV_PF_INTEL = 1, KV_PF_AMD = 2, KV_PF_X86 = 3 };
static inline int kv_pf_inside_cpu(int where) {
    const char* v = cf_cpu()->vendor;
    return ((where & KV_PF_INTEL) && strcmp(v, "GenuineIntel") == 0) ||
           ((where & KV_PF_AMD) && strcmp(v, "AuthenticAMD") == 0);
}

/* The n rows (offsets pf, head hk0 + g) of view v that a later block reads: into L2 now, spread
 * head by head between the pieces of work on this block (one burst would stall on the miss
 * buffers while no work is in flight), or handed to a path that prefetches inside its kernels,
 * a row beside each row it works on (finer still: the miss buffers drain while it computes);
 * with seq (kv_pf_seq_list's, pf_seq), the block's rows in address order instead, n of its
 * nh * n for head g (every row once over the item's nh heads). */
static void kv_prefetch(const cf_view* v, const int64_t* pf, int64_t n, int64_t g, int64_t bytes,
                        int64_t es, const kv_path* path, kv_head* h, const void** rows,
                        const void* const* seq) {
    if (seq) {
        h->pf = seq + g * n, h->npf = n;
        return;
    }
    kv_head_rows(v, pf, n, g, es, rows);
    if (path->pf_inside)
        h->pf = rows, h->npf = n;
    else
        kv_pf_rows(rows, n, 0, n, 0, bytes);
}

/* With pf_seq (and pf_inside), the n * nh rows of view v that a later block reads, in address
 * order, once for the block rather than head by head (a per-head walk took ~4 % of an int8 decode
 * in L3 on Zen 3): all[k * nh + g] is key k's row of head hk0 + g. NULL where the path prefetches
 * otherwise, or past all's room: an item has at most KV_ROWS (64) KV heads (kv_plan), so never
 * there; such an item would prefetch head g's own rows. */
#define KV_SEQ_HEADS 64
static const void* const* kv_pf_seq_list(const cf_view* v, const int64_t* pf, int64_t n, int64_t nh,
                                         int64_t es, const kv_path* path, const void** all) {
    if (!path->pf_inside || !path->pf_seq || nh > KV_SEQ_HEADS) return NULL;
    const int64_t hs = v->stride[2] * es;
    for (int64_t k = 0; k < n; k++) {
        const char* r = (const char*)v->data + pf[k] * es;
        for (int64_t g = 0; g < nh; g++)
            all[k * nh + g] = r + g * hs;
    }
    return all;
}

/* Prefetch into L2 the int8 scales (K and V) of the n keys from position t0 for the item's KV
 * heads (the scales of a position's heads are adjacent: one line per key, most of them shared). */
static void kv_prefetch_scales(const cf_kvcache_call* c, const kv_itm* it, int64_t t0, int64_t n) {
    int64_t o[KV_KB];
    const cf_view* sv[2] = {&c->ks, &c->vs};
    for (int i = 0; i < 2; i++) {
        kv_rows_of(c, sv[i], it->b, t0, n, it->hk0, o);
        for (int64_t t = 0; t < n; t++)
            __builtin_prefetch((const float*)sv[i]->data + o[t], 0, 2);
    }
}

/* Scores of the block of nb keys at jb for every KV head of the item (times each key's factor
 * for a quantized cache); prefetches the K rows at pf (npf of them). */
static void kv_block_scores(const cf_kvcache_call* c, kv_scratch* w, const kv_itm* it, int64_t jb,
                            int64_t nb, const int64_t* pf, int64_t npf) {
    int64_t base[KV_KB];
    const void *rows[KV_KB], *pfrows[KV_KB], *all[KV_SEQ_HEADS * KV_KB];
    kv_rows_of(c, &c->kc, it->b, it->P + jb, nb, it->hk0, base);
    kv_qloc L;
    if (c->quant == CFLASH_KV_QUANT_INT8) kv_q_locate(c, 0, it->b, it->P + jb, nb, it->hk0, &L);
    const void* const* seq = kv_pf_seq_list(&c->kc, pf, npf, it->nh, it->es, &it->path, all);
    for (int64_t g = 0; g < it->nh; g++) {
        kv_head_rows(&c->kc, base, nb, g, it->es, rows);
        kv_head h = kv_head_of(c, w, it, g);
        kv_prefetch(&c->kc, pf, npf, g, c->a.D * it->es, it->es, &it->path, &h, pfrows, seq);
        const float* f = NULL;
        if (c->quant != CFLASH_KV_QUANT_NONE) {
            kv_q_factors(c, &L, 0, it->b, it->hk0 + g, g, nb, w->fk);
            f = w->fk;
        }
        it->path.scores(&h, rows, nb, f);
    }
}

/* s[t] = cap * tanh(scale * s[t] / cap), as cf_attn_score (vectorized: ftanh). */
static void kv_softcap(float* s, int64_t n, float scale, float cap) {
#pragma omp simd
    for (int64_t t = 0; t < n; t++)
        s[t] = cap * ftanh(scale * s[t] / cap);
}

/* y[0..nb) = what row r adds to its scores of keys jb.. (kv_keyed; row i, head h, key P + j of
 * the call, whose bias and mask rows are contiguous along the keys), in fp32: the bias (0
 * without), -inf where the mask hides the key (cf_attn_extra). */
static void kv_bias_row(const cf_kvcache_call* c, const kv_itm* it, int64_t r, int64_t jb,
                        int64_t nb, float* y) {
    const cf_attn_call* a = &c->a;
    const int64_t i = it->i0 + r % it->nq, h = it->hk0 * it->G + r / it->nq;
    if (a->bias.data) {
        const int64_t at = cf_attn_at4(&a->bias, it->b, h, i, it->P + jb);
        ld_row(y, (const char*)a->bias.data + at * (int64_t)cf_dtype_size(a->bias.dtype),
               a->bias.dtype, nb);
    } else {
        for (int64_t t = 0; t < nb; t++)
            y[t] = 0.0f;
    }
    if (a->mask.data) {
        const uint8_t* m =
            (const uint8_t*)a->mask.data + cf_attn_at4(&a->mask, it->b, h, i, it->P + jb);
#pragma omp simd
        for (int64_t t = 0; t < nb; t++)
            y[t] = m[t] ? y[t] : -INFINITY;
    }
}

/* What kv_bias_row does to the block at jb (nb keys) over the item's rows: */
enum {
    KV_PLAIN,  /* nothing: the bias (if any) 0 and the mask (if any) keeping every key for every
                * row (a speculative decoding step's tree before its draft; a float mask) */
    KV_KEYED,  /* adds a bias, or hides some keys from some rows */
    KV_HIDDEN, /* hides every key from every row: the block is skipped (it would leave every
                * row's P at -0 and its m, l and acc as they are) */
};
static int kv_block_keys(const cf_kvcache_call* c, const kv_itm* it, int64_t jb, int64_t nb) {
    if (!kv_keyed(c)) return KV_PLAIN;
    const cf_view *bias = &c->a.bias, *m = &c->a.mask;
    /* the rows of one query share theirs where bias and mask are broadcast over the heads
     * (stride 0): the item's first nq rows are then its distinct ones */
    const int64_t nr =
        (!bias->data || bias->stride[1] == 0) && (!m->data || m->stride[1] == 0) ? it->nq : it->R;
    unsigned kept = 0, hid = 0, other = 0; /* (other: a bias value but 0 and -inf: keyed) */
    for (int64_t r = 0; r < nr; r++) {
        float y[KV_KB];
        kv_bias_row(c, it, r, jb, nb, y);
        for (int64_t t = 0; t < nb; t++)
            kept |= y[t] == 0.0f, hid |= y[t] == -INFINITY,
                other |= y[t] != 0.0f && y[t] != -INFINITY;
        if (other || (kept && hid)) return KV_KEYED;
    }
    return kept ? KV_PLAIN : KV_HIDDEN;
}

/* For the 16-key path: row r's scores over the whole block at jb scaled (or soft-capped) with
 * what kv_bias_row adds, so the path then scales by 1 (the order of cf_attn_score), the keys it
 * hides at -inf (a NaN score included), their bits in *hidden: 1 (the path's P of those keys is
 * +0; kv_bias_hide makes it -0). 0, the scores untouched, if it hides every key (the path would
 * take exp(-inf + inf): kv_row_softmax then). */
static int kv_bias_add(const cf_kvcache_call* c, kv_scratch* w, const kv_itm* it, int64_t r,
                       int64_t jb, unsigned* hidden) {
    const cf_attn_call* a = &c->a;
    float y[KV_KB], *s = w->s + r * KV_KB;
    kv_bias_row(c, it, r, jb, KV_KB, y);
    unsigned h = 0;
    for (int t = 0; t < KV_KB; t++)
        h |= (unsigned)(y[t] == -INFINITY) << t;
    if (h == (1u << KV_KB) - 1) return 0;
    float scale = a->scale; /* (a local: a store to s may not change it; the loops vectorize) */
    if (a->softcap > 0.0f) kv_softcap(s, KV_KB, scale, a->softcap), scale = 1.0f;
#pragma omp simd
    for (int t = 0; t < KV_KB; t++)
        s[t] = y[t] == -INFINITY ? -INFINITY : scale * s[t] + y[t];
    *hidden = h;
    return 1;
}

/* P of the keys kv_bias_add hid (bits of hidden) = -0, which kv_pv_visible skips. */
static inline void kv_bias_hide(float* p, unsigned hidden) {
    for (int t = 0; hidden && t < KV_KB; t++)
        if (hidden >> t & 1u) p[t] = -0.0f;
}

/* Online softmax of row r over the block (nb keys at jb) in the generic way: masks, softcap,
 * ALiBi and, where keyed (kv_block_keys: KV_KEYED), the bias and the mask (an attention call's
 * decode rows, kv_attn_decode: row i, head h, key P + j of the call) applied to the scores, the
 * running max m and sum l updated, acc and lv rescaled, the scores replaced by P. A key kv_bias_row
 * hides (-inf) gets P = -0, which kv_pv_visible skips: a NaN or infinity in its V row must not
 * reach the row ("Non-finite values", cflash.h). Returns those keys' bits. */
static unsigned kv_row_softmax(const cf_kvcache_call* c, kv_scratch* w, const kv_itm* it, int64_t r,
                               int64_t jb, int64_t nb, float slope, int keyed) {
    const cf_attn_call* a = &c->a;
    const int64_t i = it->i0 + r % it->nq, Dv = a->Dv;
    float* s = w->s + r * KV_KB;
    float mx = -INFINITY;
    unsigned hidden = 0;                       /* bit t: the bias hides key jb + t */
    if (a->softcap == 0.0f && slope == 0.0f) { /* branch-free: vectorizes */
        const int64_t lo = w->lo[r] - jb, hi = w->hi[r] - jb;
        const float scale = a->scale;
        if (keyed) {
            float y[KV_KB];
            kv_bias_row(c, it, r, jb, nb, y);
#pragma omp simd
            for (int64_t t = 0; t < nb; t++)
                s[t] = t >= lo && t < hi && y[t] != -INFINITY ? scale * s[t] + y[t] : -INFINITY;
            for (int64_t t = 0; t < nb; t++)
                hidden |= (unsigned)(y[t] == -INFINITY) << t;
        } else {
#pragma omp simd
            for (int64_t t = 0; t < nb; t++)
                s[t] = (t >= lo && t < hi) ? scale * s[t] : -INFINITY;
        }
        /* (no `omp simd reduction(max)`: GCC 12 for SVE left the result at -inf when this
         * function was inlined into kv_run; a max over KV_KB floats is cheap anyway) */
        for (int64_t t = 0; t < nb; t++)
            mx = s[t] > mx ? s[t] : mx;
    } else { /* cf_attn_score: scaled and soft-capped (vectorized), then ALiBi and the masks */
        const float scale = a->scale; /* (a local: the loop vectorizes, as in kv_bias_add) */
        if (a->softcap > 0.0f)
            kv_softcap(s, nb, scale, a->softcap);
        else
#pragma omp simd
            for (int64_t t = 0; t < nb; t++)
                s[t] *= scale;
        float y[KV_KB];
        if (keyed) kv_bias_row(c, it, r, jb, nb, y);
        for (int64_t t = 0; t < nb; t++) {
            const int64_t j = jb + t;
            if (j < w->lo[r] || j >= w->hi[r]) {
                s[t] = -INFINITY;
                continue;
            }
            if (slope != 0.0f) s[t] -= cf_attn_alibi(a, slope, i, j, it->Sq, it->sk);
            if (keyed) {
                if (y[t] == -INFINITY) { /* (hides the key, a NaN score included) */
                    s[t] = -INFINITY, hidden |= 1u << t;
                    continue;
                }
                s[t] += y[t];
            }
            mx = s[t] > mx ? s[t] : mx;
        }
    }
    if (mx == -INFINITY) { /* nothing visible in this block (or only NaN): P row is 0 */
        int nan = 0;
        for (int64_t t = 0; t < nb; t++)
            nan |= s[t] != s[t], s[t] = hidden >> t & 1u ? -0.0f : 0.0f;
        if (nan) w->m[r] = NAN, w->l[r] = NAN; /* a NaN score: the row is NaN */
        return hidden;
    }
    /* a running max that does not move leaves alpha = fexp(0) = 1 exactly: skip it */
    const float mnew = mx > w->m[r] ? mx : w->m[r];
    const float alpha = mx > w->m[r] ? fexp(w->m[r] - mnew) : 1.0f;
    const float sum = exp_row(s, nb, mnew);
    for (int64_t t = 0; hidden && t < nb; t++)
        if (hidden >> t & 1u) s[t] = -0.0f;
    if (alpha != 1.0f) {
        float *acc = w->acc + r * Dv, *lv = w->lv + 16 * r;
#pragma omp simd
        for (int64_t d = 0; d < Dv; d++)
            acc[d] *= alpha;
        for (int t = 0; t < 16; t++)
            lv[t] *= alpha;
    }
    w->l[r] = w->l[r] * alpha + sum;
    w->m[r] = mnew;
    return hidden;
}

/* Whether row r sees every key of the KV_KB-key block at jb. */
static inline int kv_row_sees(const kv_scratch* w, int64_t r, int64_t jb) {
    return w->lo[r] <= jb && w->hi[r] >= jb + KV_KB;
}

/* Online softmax of every row of the item over the block: the path's softmax16 for each run of
 * rows that see the whole block without ALiBi (softcap applied first; in a keyed block, one with
 * a bias or keys the mask hides from some row, row by row where it leaves some key: kv_bias_add),
 * kv_row_softmax elsewhere. Returns the bits of the keys kv_bias_row hides from some row. */
static unsigned kv_block_softmax(const cf_kvcache_call* c, kv_scratch* w, const kv_itm* it,
                                 int64_t jb, int64_t nb, int keyed) {
    const cf_attn_call* a = &c->a;
    unsigned hid = 0;
    for (int64_t r = 0; r < it->R;) {
        const float slope = cf_attn_slope(a, it->b, it->hk0 * it->G + r / it->nq);
        const int whole =
            it->path.softmax16 && nb == KV_KB && slope == 0.0f && kv_row_sees(w, r, jb);
        unsigned hidden;
        if (whole && keyed && kv_bias_add(c, w, it, r, jb, &hidden)) { /* (row by row) */
            it->path.softmax16(w->s + r * KV_KB, 1, 1.0f, w->m + r, w->l + r, w->lv + 16 * r,
                               w->acc + r * a->Dv, a->Dv);
            kv_bias_hide(w->s + r * KV_KB, hidden);
            hid |= hidden, r++;
            continue;
        }
        if (!whole || keyed) {
            hid |= kv_row_softmax(c, w, it, r, jb, nb, slope, keyed);
            r++;
            continue;
        }
        int64_t n = 1; /* the run of rows from r the path serves: no masks, no horizontal sums */
        while (r + n < it->R && kv_row_sees(w, r + n, jb) &&
               cf_attn_slope(a, it->b, it->hk0 * it->G + (r + n) / it->nq) == 0.0f)
            n++;
        float* s = w->s + r * KV_KB;
        if (a->softcap > 0.0f) kv_softcap(s, n * KV_KB, a->scale, a->softcap);
        it->path.softmax16(s, n, a->softcap > 0.0f ? 1.0f : a->scale, w->m + r, w->l + r,
                           w->lv + 16 * r, w->acc + r * a->Dv, a->Dv);
        r += n;
    }
    return hid;
}

/* P V of the block for every KV head of the item; a head whose V has a NaN or an infinity in a
 * key some row does not see (outside a row's key range, or in hid: the keys kv_bias_row hides
 * from some row) goes pair by pair (kv_pv_visible). Prefetches the V rows at pf (npf of them). */
static void kv_block_pv(const cf_kvcache_call* c, kv_scratch* w, const kv_itm* it, int64_t jb,
                        int64_t nb, const int64_t* pf, int64_t npf, unsigned hid) {
    int64_t base[KV_KB];
    const void *rows[KV_KB], *pfrows[KV_KB], *all[KV_SEQ_HEADS * KV_KB];
    kv_rows_of(c, &c->vc, it->b, it->P + jb, nb, it->hk0, base);
    kv_qloc L;
    if (c->quant == CFLASH_KV_QUANT_INT8) kv_q_locate(c, 1, it->b, it->P + jb, nb, it->hk0, &L);
    const void* const* seq =
        c->latent ? NULL : kv_pf_seq_list(&c->vc, pf, npf, it->nh, it->es, &it->path, all);
    int cut = 0; /* some row's key range cuts the block: any key may be unseen */
    for (int64_t r = 0; !cut && r < it->R; r++)
        cut |= w->lo[r] > jb || w->hi[r] < jb + nb;
    const unsigned sel = cut ? (1u << nb) - 1u : hid; /* (nb <= KV_KB = 16) */
    for (int64_t g = 0; g < it->nh; g++) {
        kv_head_rows(&c->vc, base, nb, g, it->es, rows);
        const float* f = NULL;
        if (c->quant != CFLASH_KV_QUANT_NONE) {
            kv_q_factors(c, &L, 1, it->b, it->hk0 + g, g, nb, w->fk);
            f = w->fk;
        }
        if (sel && kv_rows_nonfinite(c, rows, nb, f, sel)) {
            kv_pv_visible(c, w, &it->path, g * it->Rg, it->Rg, jb, rows, nb, f);
            continue;
        }
        kv_head h = kv_head_of(c, w, it, g);
        if (!c->latent) /* (a latent cache's V rows are the K rows, already fetched) */
            kv_prefetch(&c->vc, pf, npf, g, c->a.Dv * it->es, it->es, &it->path, &h, pfrows, seq);
        it->path.pv(&h, rows, nb, f);
    }
}

/* Keys [j0, j1) for the item's rows: leaves the unnormalised acc (in element order), the running
 * max m and the sum l of each of its R rows in w. Every KV head of a key position is visited
 * before the next position: the cache is read in address order. */
static void kv_item(const cf_kvcache_call* c, kv_scratch* w, kv_itm* it, int64_t j0, int64_t j1) {
    kv_item_start(c, w, it, j0, j1);
    int64_t pfk[KV_KB], pfv[KV_KB];
    for (int64_t jb = it->jlo; jb < it->jhi; jb += KV_KB) {
        const int64_t nb = it->jhi - jb < KV_KB ? it->jhi - jb : KV_KB;
        const int64_t pf0 = jb + KV_PF * KV_KB; /* the block read KV_PF blocks later */
        const int64_t npf = pf0 >= it->jhi ? 0 : (it->jhi - pf0 < KV_KB ? it->jhi - pf0 : KV_KB);
        kv_rows_of(c, &c->kc, it->b, it->P + pf0, npf, it->hk0, pfk);
        if (!c->latent) kv_rows_of(c, &c->vc, it->b, it->P + pf0, npf, it->hk0, pfv);
        if (c->quant == CFLASH_KV_QUANT_INT8) kv_prefetch_scales(c, it, it->P + pf0, npf);
        const int keys = kv_block_keys(c, it, jb, nb);
        if (keys == KV_HIDDEN) continue;
        kv_block_scores(c, w, it, jb, nb, pfk, npf);
        const unsigned hid = kv_block_softmax(c, w, it, jb, nb, keys == KV_KEYED);
        kv_block_pv(c, w, it, jb, nb, pfv, npf, hid);
    }
    if (it->path.finish) it->path.finish(w->acc, it->R, c->a.Dv);
    for (int64_t r = 0; it->path.softmax16 && r < it->R; r++) {
        float l16 = 0.0f;
        for (int t = 0; t < 16; t++)
            l16 += w->lv[16 * r + t];
        w->l[r] += l16;
    }
}

/* ---- The call: plan, items, splits merged -----------------------------------------------------
 */

/* The largest group's share of the items' work (keys x query rows; on: the sequences the items
 * leave to the attention forward), groups of nchunk KV-head chunks and q query rows: 1 / groups
 * when the sequences are alike, near 1 when one long cache sits among short ones (a serving batch:
 * a 32768-key decode beside three of 512 keys). 0: no work. */
static double kv_largest_share(const cf_kvcache_call* c, const uint8_t* on, int64_t nchunk,
                               int64_t q) {
    double total = 0.0, most = 0.0;
    for (int64_t b = 0; b < c->a.B; b++) {
        int64_t L, P, sk, q0, sq;
        cf_kv_seq(c, b, &L, &P, &sk);
        cf_kv_q_rows(c, b, &q0, &sq);
        if ((on && on[b]) || sk <= 0 || sq <= 0) continue;
        const double w = (double)sk * (double)(sq < q ? sq : q);
        total += (double)sk * (double)sq * (double)nchunk;
        most = w > most ? w : most;
    }
    return total > 0.0 ? most / total : 0.0;
}

/* Work decomposition: KV heads in chunks of nh and query rows in chunks of nq, so that an item
 * has at most KV_ROWS rows (its scratch stays in L2; K/V are read once per chunk of rows, as the
 * tiles of a prefill), keys in ns splits: num_splits as given, else enough that the largest
 * group's items are at most half a thread's share of the work (kv_largest_share: with alike
 * sequences, enough items for every thread twice over; a long cache among short ones is split
 * as if alone), of kv_split_keys keys or more, evened (kv_even_splits); splits are cut while their
 * partial results would exceed 256 MB (they change only the order of the sums). Where the rows of
 * one KV head fill an item for the GEMM path (a chunk of prefill), items take one KV head and
 * KV_GEMM_ITEM rows: its K/V are read once per KV_GEMM_ITEM of its rows, not once per KV_ROWS / nh.
 * Sq: the query rows of the longest sequence the items serve; on as kv_largest_share's. */
#define KV_ROWS 64
/* Keys a split brings at the least where nothing says fewer (kv_split_keys, kv_even_splits). */
#define KV_SPLIT_KEYS 512
/* The fewest keys a split takes: 512, or 256 with the OpenMP team spinning between regions
 * (cf_threads_team_factor), where kv_even_splits finds it evens the threads' work. B1 H32 Hk8
 * D128 bf16 on Zen 4, 2 threads (bench/kv_ab.c, paired hot calls): spinning, 512 keys in two
 * splits 0.095 -> 0.054 ms, 1000 0.177 -> 0.097. Asleep, 512 keys in two splits took 0.173 ms
 * against one's 0.134 (the wake). */
static int64_t kv_split_keys(void) {
    return cf_threads_team_factor() == 1.0 ? KV_SPLIT_KEYS / 2 : KV_SPLIT_KEYS;
}

/* The share of the work that the largest group holds (kv_largest_share) as a count of alike
 * groups: 1 / share, rounded down, at least 1. */
static double kv_groups_of(double share) {
    const double g = share > 0.0 ? floor(1.0 / share + 1e-6) : 1.0;
    return g < 1.0 ? 1.0 : g;
}
/* Of 1..n splits of sk keys, the count whose items the threads share most evenly, the work taken
 * as g alike groups (kv_groups_of): ceil(g splits / threads) rounds of items 1 / splits long;
 * among equals, splits of 512 keys or more (below, an item's fixed costs show: 1280 keys in four
 * splits of 320 took 0.157 ms, in two 0.134), then the most. A short cache alone in 3 splits on
 * 2 threads took as long as in 4 (Zen 4: 1536 keys 0.190 ms in 3, 0.145 in 2). Where n itself is
 * the most even, a count above it (up to most, and 2 n + threads) that takes a tenth off the
 * time: 5 alike sequences on 2 threads go in 2 splits (5 rounds of half items, not 3 whole). */
static double kv_split_time(double g, int64_t m, int threads) { /* (of kv_even_splits) */
    return ceil(g * (double)m / threads) / (double)m;
}
static int64_t kv_even_splits(double g, int64_t n, int64_t most, int64_t sk, int threads) {
    int64_t best = n;
    double cost = kv_split_time(g, n, threads);
    int small = sk / n < KV_SPLIT_KEYS;
    for (int64_t m = n - 1; m >= 1; m--) {
        const double t = kv_split_time(g, m, threads);
        const int sm = sk / m < KV_SPLIT_KEYS;
        if (t < cost || (t == cost && small && !sm)) best = m, cost = t, small = sm;
    }
    for (int64_t m = n + 1; best == n && m <= most && m <= 2 * n + threads; m++) {
        const double t = kv_split_time(g, m, threads); /* (the first count a tenth faster) */
        if (t < 0.9 * cost) best = m, cost = t;
    }
    return best;
}
static void kv_plan(const cf_kvcache_call* c, kv_choose_fn choose, int64_t Sq, const uint8_t* on,
                    int64_t* nh, int64_t* nq, int64_t* ns) {
    const cf_attn_call* a = &c->a;
    const int64_t G = a->H / a->Hk;
    int64_t h = KV_ROWS / G;
    if (h < 1) h = 1;
    if (h > a->Hk) h = a->Hk;
    while (a->Hk % h)
        h--; /* equal chunks */
    int64_t rows = KV_ROWS;
    const int64_t q1 = KV_GEMM_ITEM / G < 1 ? 1 : KV_GEMM_ITEM / G; /* one head's, GEMM path */
    kv_path one = {0};
    choose(c, G * (Sq < q1 ? Sq : q1), &one);
    if (one.gemm) h = 1, rows = KV_GEMM_ITEM;
    *nh = h;
    int64_t q = rows / (h * G);
    if (q < 1) q = 1;
    if (q > Sq) q = Sq > 0 ? Sq : 1;
    *nq = q;
    const int64_t items1 = a->B * (a->Hk / h) * ((Sq + q - 1) / q);
    int64_t n = c->num_splits;
    if (n == 0) {
        /* (Sq = 0 or no keys: no work, and nothing to split; Sq = 0 with any B, 2^40 empty
         * sequences included, is not walked: test_hostile) */
        const double share = Sq > 0 && a->Sk > 0 ? kv_largest_share(c, on, a->Hk / h, q) : 0.0;
        const double want = 2.0 * (double)a->threads * share;
        n = want > 1.0 ? (int64_t)ceil(want - 1e-9) : 1;
        const int64_t cap = a->Sk / kv_split_keys() > 1 ? a->Sk / kv_split_keys() : 1;
        n = kv_even_splits(kv_groups_of(share), n < cap ? n : cap, cap, a->Sk, a->threads);
    }
    if (n > a->Sk) n = a->Sk;
    if (n > 256) n = 256;
    while (n > 1 && items1 * n * h * G * q * (a->Dv + 2) > ((int64_t)64 << 20))
        n /= 2;
    *ns = n < 1 ? 1 : n;
}

/* out / lse of query row (b, i, h) (row q0 + i of out) from an unnormalised acc, max m and sum
 * l (0: no key seen, out 0 and lse -inf; NaN: a NaN score, NaN both; a sink and no key: l 1,
 * out 0 and lse the sink). */
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

/* The call's items: item it = (group gi = (batch, KV head chunk, query chunk), split s). */
typedef struct kv_work {
    int64_t nh, nq, ns, nchunk, nqc, R, groups, items;
    float* parts;      /* splits only: per item acc (R * Dv), m (R), l (R) */
    const uint8_t* on; /* [B] or NULL: the sequences kv_attend runs (their items do nothing) */
} kv_work;

/* Batch, first KV head, first query row and query rows (0: none, a chunk past a varlen
 * sequence's rows) of group gi. */
static void kv_group(const cf_kvcache_call* c, const kv_work* k, int64_t gi, int64_t* b,
                     int64_t* hk0, int64_t* i0, int64_t* nqi) {
    *b = gi / (k->nchunk * k->nqc);
    *hk0 = (gi / k->nqc) % k->nchunk * k->nh;
    *i0 = gi % k->nqc * k->nq;
    int64_t q0, sq;
    cf_kv_q_rows(c, *b, &q0, &sq);
    *nqi = sq - *i0 < k->nq ? sq - *i0 : k->nq;
}

/* Item it: its rows written to out / lse, or (splits) its partial results kept in parts. */
static void kv_run_item(const cf_kvcache_call* c, kv_scratch* w, const kv_work* k,
                        kv_choose_fn choose, int64_t itn) {
    const cf_attn_call* a = &c->a;
    const int64_t gi = itn / k->ns, s = itn % k->ns, G = a->H / a->Hk, Dv = a->Dv;
    kv_itm it = {.nh = k->nh, .G = G, .es = (int64_t)cf_dtype_size(c->kc.dtype), .sink = s == 0};
    kv_group(c, k, gi, &it.b, &it.hk0, &it.i0, &it.nq);
    if (it.nq <= 0 || (k->on && k->on[it.b])) return;
    it.Rg = G * it.nq, it.R = it.nh * it.Rg;
    choose(c, it.Rg, &it.path);
    it.path.pf_inside = kv_pf_inside_cpu(it.path.pf_inside);
    it.path.pf_seq = kv_pf_inside_cpu(it.path.pf_seq);
    int64_t L, P, sk;
    cf_kv_seq(c, it.b, &L, &P, &sk);
    kv_item(c, w, &it, sk * s / k->ns, sk * (s + 1) / k->ns);
    if (k->ns == 1) {
        for (int64_t r = 0; r < it.R; r++)
            kv_write(c, it.b, it.i0 + r % it.nq, it.hk0 * G + r / it.nq, w->acc + r * Dv, w->m[r],
                     w->l[r]);
        return;
    }
    float* dst = k->parts + itn * k->R * (Dv + 2);
    memcpy(dst, w->acc, sizeof(float) * (size_t)(it.R * Dv));
    memcpy(dst + k->R * Dv, w->m, sizeof(float) * (size_t)it.R);
    memcpy(dst + k->R * Dv + k->R, w->l, sizeof(float) * (size_t)it.R);
}

/* Row `row` (of groups * R) merged from its splits by their LSE into out / lse; o: Dv scratch. */
static void kv_merge_row(const cf_kvcache_call* c, const kv_work* k, int64_t row, float* o) {
    const cf_attn_call* a = &c->a;
    const int64_t gi = row / k->R, r = row % k->R, G = a->H / a->Hk, Dv = a->Dv, R = k->R;
    int64_t b, hk0, i0, nqi;
    kv_group(c, k, gi, &b, &hk0, &i0, &nqi);
    if (r >= k->nh * G * nqi) return; /* (none when nqi <= 0: an empty chunk) */
    if (k->on && k->on[b]) return;    /* (kv_attend's) */
    const float* first = k->parts + gi * k->ns * R * (Dv + 2);
    float M = -INFINITY, l = 0.0f;
    for (int64_t s = 0; s < k->ns; s++) {
        float m = first[s * R * (Dv + 2) + R * Dv + r];
        M = m > M || m != m ? m : M; /* a NaN split max (a NaN score) makes the row NaN */
        if (M != M) break;
    }
    for (int64_t d = 0; d < Dv; d++)
        o[d] = 0.0f;
    for (int64_t s = 0; s < k->ns && M != -INFINITY; s++) {
        const float* ps = first + s * R * (Dv + 2);
        float m = ps[R * Dv + r];
        if (m == -INFINITY) continue;
        float f = expf(m - M);
        l += f * ps[R * Dv + R + r];
#pragma omp simd
        for (int64_t d = 0; d < Dv; d++)
            o[d] += f * ps[r * Dv + d];
    }
    kv_write(c, b, i0 + r % nqi, hk0 * G + r / nqi, o, M, l);
}

/* ---- Chunks of prefill on the attention forward ----------------------------------------------
 * A sequence whose query rows fill the GEMM path's tiles (G * sq >= KV_ATTEND_ROWS: a chunk of
 * prefill, a long speculative step; or, but on cpu-amx, sq > KV_ATTEND_SQ rows of each query head,
 * fp16 with G > 1 excepted) over a cache of the dtype is plain attention over its cache rows.
 * After the append it runs as one call of the backend's attention forward (kv_run_with's attn) on
 * views of the cache: on cpu-amx its AMX tiles, on cpu-avx512 the tiled forward with its larger
 * key blocks (docs/PERF.md); its items do nothing. Quantized caches stay on the items. */
#define KV_ATTEND_ROWS 32
/* Over 4096 keys on Zen 4, KV-cache calls, the items against the tiled forward (docs/PERF.md,
 * stop 47): MHA (G 1) with 12-24 rows 1.7-3.2x slower in every dtype; G 2 with 10-15 rows 1.05-1.6x
 * slower in bf16 and fp32 but 1.6x faster in fp16 (no AVX512-FP16: the forward converts); at 8
 * rows the items were 1.2x faster in bf16. */
#define KV_ATTEND_SQ 8

/* How many of the attention forward's tiles a sequence must give the threads before it runs there
 * (kv_attends), where the forward parallelizes over tiles of one KV head's query rows (a tile:
 * cf_attn_cpu_tile_rows query positions of a GQA group). KV_SPREAD_ANY: any (cpu-amx's tiles run
 * MLA's decode, 128 heads on one KV head and one tile, 2.3x faster on one thread). KV_SPREAD_TWO:
 * Hk * sq >= 2 threads (cpu-avx512, cpu-avx2 on Intel: that one tile was 1.6x slower there).
 * KV_SPREAD_TILE: a tile per thread (cpu-avx512 on AMD Zen 4: MLA's Sq 2, two tiles, 2.2x faster
 * than the items for bf16 and 1.2x for fp16; one tile on one thread 1.0x bf16, 0.6x fp16).
 * docs/PERF.md. */
enum { KV_SPREAD_ANY = 0, KV_SPREAD_TILE = 1, KV_SPREAD_TWO = 2 };

/* Whether sequence b runs on the attention forward (kv_attend), spread as above. */
static int kv_attends(const cf_kvcache_call* c, int64_t b, int spread) {
    int64_t L, P, sk, q0, sq;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_q_rows(c, b, &q0, &sq);
    /* (paged keys start at page row 0 in the attention call: no left pad) */
    const int64_t G = c->a.H / c->a.Hk;
    const int rows = spread != KV_SPREAD_ANY && sq > KV_ATTEND_SQ &&
                     (G == 1 || c->a.dtype != CF_F16); /* (sq rows of each head: above) */
    if (c->quant != CFLASH_KV_QUANT_NONE || (c->block_table && P != 0) || sk <= 0 || sq <= 0 ||
        (G * sq < KV_ATTEND_ROWS && !rows))
        return 0;
    if (spread == KV_SPREAD_TWO) return c->a.Hk * sq >= 2 * c->a.threads;
    if (spread == KV_SPREAD_TILE) {
        cf_attn_call d = c->a;
        d.Sq = sq;
        const int64_t n = cf_attn_cpu_tile_rows(&d, cf_attn_cpu_blocks().q);
        return c->a.Hk * ((sq + n - 1) / n) >= c->a.threads;
    }
    return 1;
}

/* v with its data moved by off elements and dims 0 and d1 set to 1 and n1. */
static cf_view kv_subview(const cf_view* v, int64_t off, int d1, int64_t n1) {
    cf_view x = *v;
    x.data = (char*)v->data + off * (int64_t)cf_dtype_size(v->dtype);
    x.shape[0] = 1, x.shape[d1] = n1;
    return x;
}

/* The attention call of sequence b over its cache rows (keys at positions P .. P + sk), batch
 * of one; q: its q rows (rotated), or NULL for the call's. */
static cf_attn_call kv_attn_call(const cf_kvcache_call* c, int64_t b, const cf_view* q) {
    const cf_attn_call* a = &c->a;
    int64_t L, P, sk, q0, sq;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_q_rows(c, b, &q0, &sq);
    cf_attn_call d = *a; /* (varlen q: lifted views, stride[0] 0, so b's offset is its rows') */
    d.B = 1, d.Sq = sq, d.Sk = sk, d.total_q = sq, d.total_k = sk;
    d.varlen = 0, d.cu_q = d.cu_k = d.cu_q_dev = d.cu_k_dev = NULL;
    d.seqused_q = d.seqused_k = NULL;
    d.q = q ? *q : kv_subview(&a->q, b * a->q.stride[0] + q0 * a->q.stride[1], 1, sq);
    d.out = kv_subview(&a->out, b * a->out.stride[0] + q0 * a->out.stride[1], 1, sq);
    if (a->lse.data)
        d.lse = kv_subview(&a->lse, b * a->lse.stride[0] + q0 * a->lse.stride[2], 2, sq);
    if (a->alibi) d.alibi = a->alibi + b * a->alibi_bstride, d.alibi_bstride = 0;
    if (c->block_table) { /* the call's page views; sequence b's row of the table */
        d.block_table = c->block_table + b * c->bt_stride;
        d.bt_stride = c->bt_stride, d.page_size = c->page_size;
        d.k = c->kc, d.v = c->vc;
    } else {
        d.block_table = NULL;
        d.k = kv_subview(&c->kc, cf_kv_row(c, &c->kc, b, P, 0), 1, sk);
        d.v = kv_subview(&c->vc, cf_kv_row(c, &c->vc, b, P, 0), 1, sk);
    }
    return d;
}

/* Sequence b on the attention forward attn (after the append): q rotated at the positions first
 * where the call has rotary (into a buffer of the dtype, as kv_item_start rounds them). */
static cflash_status kv_attend(const cf_kvcache_call* c, int64_t b, const cf_impl* attn) {
    const cf_attn_call* a = &c->a;
    if (!c->cos.data) {
        const cf_attn_call d = kv_attn_call(c, b, NULL);
        return attn->run(&d);
    }
    int64_t L, P, sk, q0, sq;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_q_rows(c, b, &q0, &sq);
    const int64_t es = (int64_t)cf_dtype_size(a->dtype);
    /* one fp32 row first (malloc's alignment; the rows of the dtype after it stay aligned too:
     * 4 D bytes on), then the rows: sq * H * D elements of the dtype plus D floats */
    const int64_t dims[4] = {sq, a->H, a->D, es};
    int64_t bytes = 0;
    const int over = cf_prod_i64(dims, 4, &bytes) || cf_add_i64(bytes, 4 * a->D, &bytes);
    float* row = over ? NULL : malloc((size_t)bytes);
    CFLASH_RETURN_IF(!row, CFLASH_ERR_OUT_OF_MEMORY,
                     "kvcache_fwd: out of memory for %lld x %lld rotated q rows", (long long)sq,
                     (long long)a->H);
    char* buf = (char*)(row + a->D);
    for (int64_t i = 0; i < sq; i++)
        for (int64_t h = 0; h < a->H; h++) {
            kv_q_row(c, b, q0, L, i, h, row); /* (rounded to the dtype: st_row keeps it) */
            st_row(buf + ((i * a->H + h) * a->D) * es, a->dtype, row, a->D);
        }
    cf_view q = a->q; /* (1, sq, H, D), contiguous */
    q.data = buf, q.shape[0] = 1, q.shape[1] = sq;
    q.stride[3] = 1, q.stride[2] = a->D, q.stride[1] = a->H * a->D, q.stride[0] = sq * a->H * a->D;
    const cf_attn_call d = kv_attn_call(c, b, &q);
    const cflash_status st = attn->run(&d);
    free(row);
    return st;
}

/* The whole call with the kernels choose picks: append, items, splits merged; with attn (the
 * backend's attention forward), the chunks of prefill on it (kv_attends; spread: KV_SPREAD_*). */
static cflash_status kv_run_with(const void* call, kv_choose_fn choose, const cf_impl* attn,
                                 int spread) {
    const cf_kvcache_call* c = call;
    const cf_attn_call* a = &c->a;
    const int64_t G = a->H / a->Hk, Dv = a->Dv;
    uint8_t* on = NULL;
    int64_t non = 0;
    /* (no query rows: nothing to attend, and B may be any size, the q views being empty) */
    for (int64_t b = 0; attn && a->Sq > 0 && b < a->B; b++)
        if (kv_attends(c, b, spread)) {
            if (!on) {
                const cf_attn_call d = kv_attn_call(c, b, NULL);
                char why[256];
                if (attn->supports && !attn->supports(&d, why, sizeof why)) {
                    cf_log(CF_LOG_DEBUG,
                           "kvcache_fwd: chunks of prefill stay off %s's attention "
                           "forward: %s",
                           attn->backend, why);
                    break;
                }
                on = calloc((size_t)a->B, 1);
                CFLASH_RETURN_IF(!on, CFLASH_ERR_OUT_OF_MEMORY,
                                 "kvcache_fwd: out of memory for %lld flags", (long long)a->B);
            }
            on[b] = 1, non++;
        }
    if (non)
        cf_log(CF_LOG_DEBUG,
               "kvcache_fwd: %lld of %lld sequences (chunks of prefill) on %s's "
               "attention forward",
               (long long)non, (long long)a->B, attn->backend);
    kv_work k;
    k.on = on;
    /* the items' rows: the longest sequence of those not on the attention forward (a decode
     * row beside a chunk of prefill gets the decode kernels, not the chunk's plan) */
    int64_t Sq = a->Sq;
    if (non) {
        Sq = 0;
        for (int64_t b = 0; b < a->B; b++) {
            int64_t q0, sq;
            cf_kv_q_rows(c, b, &q0, &sq);
            if (!on[b] && sq > Sq) Sq = sq;
        }
    }
    kv_plan(c, choose, Sq, on, &k.nh, &k.nq, &k.ns);
    k.nchunk = a->Hk / k.nh, k.nqc = (Sq + k.nq - 1) / k.nq, k.R = k.nh * G * k.nq;
    k.groups = a->B * k.nchunk * k.nqc, k.items = k.groups * k.ns;
    cf_log(CF_LOG_DEBUG, "kvcache_fwd: items %lld (groups %lld, key splits %lld)",
           (long long)k.items, (long long)k.groups, (long long)k.ns);
    k.parts = k.ns > 1 ? malloc(sizeof(float) * (size_t)(k.items * k.R * (Dv + 2))) : NULL;
    if (k.ns > 1 && !k.parts) free(on);
    CFLASH_RETURN_IF(k.ns > 1 && !k.parts, CFLASH_ERR_OUT_OF_MEMORY,
                     "kvcache_fwd: out of memory for %lld partial rows",
                     (long long)(k.items * k.R));
    int failed = 0;
    /* as many threads as items: a decode step below 512 keys (1024, the team asleep) is one item,
     * and waking a second thread for nothing cost 60-200 us a call (docs/PERF.md "Per-call cost
     * from Python") */
    const int threads = cf_threads_items(a->threads, k.items);
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * kv_scratch_floats(c, k.R));
        failed = !buf;
        /* a KV head per thread, its new rows in order (as the reference: the later of two rows
         * on one cache row is kept) */
#pragma omp for schedule(static)
        for (int64_t hk = 0; hk < a->Hk; hk++) {
            for (int64_t r = 0; r < c->total_new; r++) {
                int64_t b, n;
                if (buf && cf_kv_new_row_of(c, r, &b, &n)) kv_append_fast(c, buf, b, n, hk);
            }
        }
        /* (implicit barrier: the appended rows are in the cache before any item reads them) */
        kv_scratch w = {0};
        if (buf) kv_scratch_init(&w, buf, c, k.R);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < k.items; it++)
            if (buf) kv_run_item(c, &w, &k, choose, it);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < (k.ns > 1 ? k.groups * k.R : 0); row++)
            if (buf) kv_merge_row(c, &k, row, buf);
        free(buf);
    }
    free(k.parts);
    if (failed) free(on);
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "kvcache_fwd: out of memory for scratch");
    cflash_status st = CFLASH_OK;
    for (int64_t b = 0; non && st == CFLASH_OK && b < a->B; b++)
        if (on[b]) st = kv_attend(c, b, attn);
    free(on);
    return st;
}

static inline cflash_status kv_run(const void* call, kv_choose_fn choose) {
    return kv_run_with(call, choose, NULL, 0);
}

/* ---- Decode rows of an attention call ---------------------------------------------------------
 * An attention forward whose sequences all have few query rows per KV head (kv_decode_rows: a
 * decode step or a short speculative one through flash_attn_func, SDPA or transformers; the
 * decode rows vLLM passes to flash_attn_varlen_func) gives the tiled forward one short tile per KV
 * head, which repacks every key block for a few rows: 5x the items' time at 32768 keys on Zen 4
 * (docs/PERF.md, stop 47). It is the KV-cache call without an append over the call's keys as the
 * cache (kv_attn_decode), the reverse of kv_attend: batch mode reads k / v as (B, Sk) caches,
 * varlen the packed rows as one cache that every sequence enters at its cu_seqlens_k offset (a
 * left pad), paged through the block table; seqused_k gives the lengths. */

/* The query rows of a sequence (sq) and of a KV head (G * sq) up to which the items take an
 * attention call, by dtype (bf16_dot: the build's bf16 items multiply by vdpbf16ps): where they
 * beat the tiled forward at 4096 keys on Zen 4 (docs/PERF.md, stop 47). bf16 by vdpbf16ps
 * (cpu-avx512 on AMD): 1.15-1.2x at sq 8 with G 1 or 2, 1.1-1.4x at G 4 sq 7; 0.84-0.9x at sq
 * 12-15. fp16, and bf16 on fp32 FMA (cpu-avx2; cpu-avx512 on Intel): 1.1-2.7x at sq 4 (G 1, 2),
 * 0.55-0.75x at G 1 sq 8. fp32: 1.25-2x at 8 rows (G 8 sq 1, G 4 sq 2), even at G 1 sq 4 and G 4
 * sq 3, 0.54-0.85x at G 16 sq 1. */
static inline void kv_decode_rows(cf_dtype dt, int bf16_dot, int64_t* sq, int64_t* rows) {
    *sq = dt == CF_BF16 && bf16_dot ? 8 : dt == CF_F32 ? 2 : 4;
    *rows = dt == CF_F32 ? 8 : KV_ATTEND_ROWS - 1;
}

/* Whether attention call a may go to the items: on the CPU, none of the features the KV-cache
 * call does not take (dropout, block lists, chunks, block offsets, seqused_q; a boolean mask only
 * in batch mode without seqused_k, if kv_mask_runs reads it as left pads and lengths; a bias in
 * batch mode without seqused_k, which the items add as the attention call does, kv_row_softmax),
 * every sequence's rows within kv_decode_rows (bf16_dot as there) and, where most_rows > 0, at
 * most most_rows query rows per KV head (G * sq: a backend whose own forward beats the items
 * sooner, cpu-amx), and (varlen) every sequence's last key row in int32 (the KV-cache call's
 * lengths). */
static inline int kv_attn_decodes(const cf_attn_call* a, int bf16_dot, int64_t most_rows) {
    if (a->device_type != kDLCPU || a->dropout_p != 0.0f || a->bs_num.data || a->chunk ||
        a->q_offset || a->k_offset || a->seqused_q || a->B < 1 || a->Hk < 1 || a->Sq < 1)
        return 0;
    if ((a->mask.data || a->bias.data) && (a->varlen || a->seqused_k || a->Sk > INT32_MAX))
        return 0;
    const int64_t G = a->H / a->Hk;
    int64_t msq, mrows;
    kv_decode_rows(a->dtype, bf16_dot, &msq, &mrows);
    if (most_rows > 0 && most_rows < mrows) mrows = most_rows;
    if (!a->varlen) /* (Sq first: G * Sq may not fit; lengths: Sk, or seqused_k's int32s) */
        return a->Sq <= msq && G * a->Sq <= mrows;
    for (int64_t b = 0; b < a->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(a, b, &q0, &sq, &k0, &sk);
        if (sq > msq || G * sq > mrows || k0 + sk > INT32_MAX) return 0;
    }
    return 1;
}

/* ---- A boolean mask as left pads and lengths ----
 * transformers' SDPA masks of a decode step (PyTorch's attn_mask through cflash.sdpa) hide the
 * left padding of each sequence and, with a static cache, the slots past the tokens seen: every
 * row keeps one run of keys. Such a mask is the KV-cache call's cache_leftpad and lengths. */

/* The first index in [i, n) whose byte is nonzero (want 1) or zero (want 0), else n; 64 bytes a
 * step while none does. */
static inline int64_t kv_mask_find(const uint8_t* m, int64_t i, int64_t n, int want) {
    for (; i + 64 <= n; i += 64) {
        unsigned hit = 0;
        for (int t = 0; t < 64; t++)
            hit |= (unsigned)((m[i + t] != 0) == want);
        if (hit) break;
    }
    for (; i < n; i++)
        if ((m[i] != 0) == want) return i;
    return n;
}

/* Mask row m of n keys: 1 and [*lo, *hi) if it keeps one run of keys (at least one), else 0. */
static inline int kv_mask_run(const uint8_t* m, int64_t n, int64_t* lo, int64_t* hi) {
    *lo = kv_mask_find(m, 0, n, 1);
    if (*lo == n) return 0;
    *hi = kv_mask_find(m, *lo, n, 0);
    return kv_mask_find(m, *hi, n, 1) == n;
}

/* Batch call a's mask (kv_attn_decodes) as the KV-cache call's left pads pad[b], lengths len[b]
 * and causal flag (*causal): 1 when every row i (of Sq) of sequence b, in every head, keeps one
 * run of keys [pad[b], e_i), with e_i = len[b] for every row ("flat") or the causal stair
 * e_i = len[b] - Sq + 1 + i, and the KV-cache call, whose causal mask, windows and ALiBi align
 * on len[b], places rows and keys as the attention call does: with any of those every len[b] is
 * Sk (the call's causal mask then covers a stair); without, the flat rows keep the call
 * non-causal and stairs make it causal (not both in one call). Else 0, for the tiled forward.
 * Reads each distinct row once (broadcast dims have stride 0). */
static inline int kv_mask_runs(const cf_attn_call* a, int32_t* pad, int32_t* len, int* causal) {
    const uint8_t* m = a->mask.data;
    const int64_t* st = a->mask.stride;
    const int64_t nb = st[0] ? a->B : 1, nh = st[1] ? a->H : 1, ni = st[2] ? a->Sq : 1;
    const int placed = a->causal || a->window_left >= 0 || a->window_right >= 0 || a->alibi;
    int flats = 0, stairs = 0;
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo0 = 0, e0 = 0;
        int flat = 1, stair = ni > 1;
        for (int64_t h = 0; h < nh; h++)
            for (int64_t i = 0; i < ni; i++) {
                int64_t lo, hi;
                if (!kv_mask_run(m + b * st[0] + h * st[1] + i * st[2], a->Sk, &lo, &hi)) return 0;
                if (h == 0 && i == 0) lo0 = lo, e0 = hi;
                if (lo != lo0) return 0;
                flat &= hi == e0, stair &= hi == e0 + i;
            }
        if (!flat && !stair) return 0;
        flats += flat, stairs += !flat;
        pad[b] = (int32_t)lo0, len[b] = (int32_t)(flat ? e0 : e0 + ni - 1);
        if (placed && len[b] != a->Sk) return 0;
    }
    if (!a->causal && (placed ? stairs : flats && stairs)) return 0;
    for (int64_t b = nb; b < a->B; b++)
        pad[b] = pad[0], len[b] = len[0];
    *causal = a->causal || stairs;
    return 1;
}

/* Attention call a (kv_attn_decodes) on the items of choose, as the KV-cache call over its keys;
 * backend: the caller's name, for the log. A boolean mask of left pads and lengths (kv_mask_runs)
 * becomes the KV-cache call's; any other stays in the call, which the items add to the scores
 * (kv_bias_row), blocks it hides from every row skipped. */
static inline cflash_status kv_attn_decode(const cf_attn_call* a, kv_choose_fn choose,
                                           const char* backend) {
    cf_kvcache_call c;
    memset(&c, 0, sizeof c);
    c.a = *a;
    c.a.varlen = 0, c.a.cu_k = c.a.cu_k_dev = NULL, c.a.block_table = NULL, c.a.seqused_k = NULL;
    c.a.mask.data = NULL;
    c.kc = a->k, c.vc = a->v;
    c.page_size = a->block_table ? a->page_size : a->k.shape[1];
    c.block_table = a->block_table, c.bt_stride = a->bt_stride, c.max_pages = a->bt_stride;
    c.seqlen = a->Sk;
    /* lengths (the last key row + 1) and left pads per sequence, unless all are Sk and 0 */
    const int packed = a->varlen && !a->block_table;
    int32_t* own = NULL;
    if (a->varlen || a->seqused_k || a->mask.data) {
        own = malloc(sizeof(int32_t) * (size_t)(2 * a->B));
        if (!own)
            return cf_error(CFLASH_ERR_OUT_OF_MEMORY,
                            "attn_fwd: out of memory for %lld decode rows' lengths",
                            (long long)a->B);
    }
    const char* masked = "";
    if (a->mask.data && !kv_mask_runs(a, own + a->B, own, &c.a.causal)) {
        c.a.mask = a->mask; /* (kept: the items read it) */
        free(own);
        own = NULL;
        masked = ", a mask (added to the scores)";
    } else if (a->mask.data) {
        if (c.a.causal) c.a.window_right = 0;
        int64_t most_k = 0;
        for (int64_t b = 0; b < a->B; b++)
            most_k = own[b] - own[a->B + b] > most_k ? own[b] - own[a->B + b] : most_k;
        c.seqlens = own, c.leftpad = own + a->B, c.a.Sk = most_k;
        masked = ", a mask of left pads and lengths";
    } else if (own) {
        int64_t most_q = 0, most_k = 0;
        for (int64_t b = 0; b < a->B; b++) {
            int64_t q0, sq, k0, sk;
            cf_attn_seq(a, b, &q0, &sq, &k0, &sk);
            own[b] = (int32_t)(k0 + sk), own[a->B + b] = (int32_t)k0;
            most_q = sq > most_q ? sq : most_q, most_k = sk > most_k ? sk : most_k;
        }
        c.seqlens = own, c.leftpad = packed ? own + a->B : NULL;
        if (a->varlen) c.a.Sq = most_q;
        c.a.Sk = most_k;
    }
    if (packed) /* (the lifted views: stride 0 along dim 0, every sequence in "cache 0") */
        c.kc.shape[0] = c.vc.shape[0] = a->B;
    cf_log(
        CF_LOG_DEBUG,
        "attn_fwd: at most %lld query rows per KV head%s: on %s's KV-cache kernels (decode rows)",
        (long long)(a->H / a->Hk * c.a.Sq), masked, backend);
    const cflash_status st = kv_run(&c, choose);
    free(own);
    return st;
}
