/* Reference KV-cache attention (backend cpu-ref): append the (rotated) new keys and values into
 * the cache (quantized when the cache is), then one query row at a time with an online softmax
 * over the sequence's visible cache positions, each cache row read as its value (codes times
 * their scales), fp32 accumulation. Ignores num_splits (one pass). No intrinsics. */
#include <math.h>
#include <stdlib.h>

#include "core/backend.h"
#include "core/ops_call.h"
#include "core/quant.h"
#include "core/status.h"

static inline int64_t at4(const cf_view* v, int64_t b, int64_t s, int64_t h, int64_t d) {
    return b * v->stride[0] + s * v->stride[1] + h * v->stride[2] + d * v->stride[3];
}

/* dst[0..D) = src row (offset si in view sv) rotated at position pos (or copied), in fp32. */
static void load_rotated(const cf_kvcache_call* c, float* dst, const cf_view* sv, int64_t si,
                         int64_t D, int64_t pos) {
    for (int64_t d = 0; d < D; d++)
        dst[d] = cf_load(sv->data, sv->dtype, si + d);
    if (!c->cos.data) return;
    const int64_t half = c->rd / 2;
    for (int64_t i = 0; i < half; i++) {
        int64_t ia = c->interleaved ? 2 * i : i, ib = c->interleaved ? 2 * i + 1 : i + half;
        float co = cf_load(c->cos.data, c->cos.dtype, pos * c->cos.stride[0] + i);
        float sn = cf_load(c->sin.data, c->sin.dtype, pos * c->sin.stride[0] + i);
        float a = dst[ia], b = dst[ib];
        dst[ia] = a * co - b * sn;
        dst[ib] = a * sn + b * co;
    }
}

/* x[0..n) (fp32) into cache row t of batch b, KV head hk of the K (is_v 0) or V cache: stored in
 * the dtype, or quantized (core/quant.h). */
static void store_row(const cf_kvcache_call* c, int is_v, int64_t b, int64_t t, int64_t hk,
                      float* x, int64_t n) {
    if (c->quant != CFLASH_KV_QUANT_NONE) {
        cf_kv_quant_store(c, is_v, b, t, hk, x, n);
        return;
    }
    const cf_view* v = is_v ? &c->vc : &c->kc;
    const int64_t o = cf_kv_row(c, v, b, t, hk);
    for (int64_t d = 0; d < n; d++)
        cf_store(v->data, c->a.dtype, o + d, x[d]);
}

/* dst[0..n) = the values of cache row t of batch b, KV head hk (K: is_v 0, or V). */
static void load_row(const cf_kvcache_call* c, int is_v, int64_t b, int64_t t, int64_t hk,
                     float* dst, int64_t n) {
    const cf_view* v = is_v ? &c->vc : &c->kc;
    const int64_t o = cf_kv_row(c, v, b, t, hk);
    if (c->quant == CFLASH_KV_QUANT_NONE) {
        for (int64_t d = 0; d < n; d++)
            dst[d] = cf_load(v->data, c->a.dtype, o + d);
    } else if (c->quant == CFLASH_KV_QUANT_INT8) {
        const cf_view* sv = is_v ? &c->vs : &c->ks;
        const float scale = ((const float*)sv->data)[cf_kv_row(c, sv, b, t, hk)];
        for (int64_t d = 0; d < n; d++)
            dst[d] = (float)((const int8_t*)v->data)[o + d] * scale;
    } else {
        const float ds = cf_kv_descale(c, is_v, b, hk);
        for (int64_t d = 0; d < n; d++)
            dst[d] = cf_fp8_to_f32(((const uint8_t*)v->data)[o + d],
                                   c->quant == CFLASH_KV_QUANT_FP8_E5M2) *
                     ds;
    }
}

/* New row n of batch b (row n0 + n of k_new / v_new) into cache position L + n (an MLA latent
 * cache: the k_new row only, V being a view of it). */
static void append(const cf_kvcache_call* c, float* buf, int64_t b, int64_t n, int64_t hk) {
    const cf_attn_call* a = &c->a;
    int64_t L, P, sk, n0, sn;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_new_rows(c, b, &n0, &sn);
    load_rotated(c, buf, &c->knew, at4(&c->knew, b, n0 + n, hk, 0), a->D, L + n);
    store_row(c, 0, b, L + n, hk, buf, a->D);
    if (c->latent) { /* V is a view of the row just stored */
        cf_kv_latent_scale(c, b, L + n, hk);
        return;
    }
    for (int64_t d = 0; d < a->Dv; d++)
        buf[d] = cf_load(c->vnew.data, a->dtype, at4(&c->vnew, b, n0 + n, hk, d));
    store_row(c, 1, b, L + n, hk, buf, a->Dv);
}

/* Query row i of batch b (row q0 + i of q), head h; kr, vr: scratch rows of D, Dv floats. */
static void attend_row(const cf_kvcache_call* c, float* q, float* acc, float* kr, float* vr,
                       int64_t b, int64_t h, int64_t i) {
    const cf_attn_call* a = &c->a;
    const int64_t hk = h / (a->H / a->Hk);
    int64_t L, P, sk, lo, hi, q0, sq;
    cf_kv_seq(c, b, &L, &P, &sk);
    cf_kv_q_rows(c, b, &q0, &sq);
    load_rotated(c, q, &a->q, at4(&a->q, b, q0 + i, h, 0), a->D, cf_kv_qpos(c, L, i));
    if (c->cos.data) /* the rotated q is rounded to the dtype, as the new keys are */
        for (int64_t d = 0; d < a->D; d++)
            q[d] = cf_round_to(a->dtype, q[d]);
    cf_attn_key_range(a, i, sq, sk, &lo, &hi);
    const float slope = cf_attn_slope(a, b, h);
    /* A sink is a key of score sink and value 0: the softmax starts from it. */
    float m = cf_attn_sink(a, h), l = m == -INFINITY ? 0.0f : 1.0f;
    for (int64_t d = 0; d < a->Dv; d++)
        acc[d] = 0.0f;
    for (int64_t j = lo; j < hi; j++) {
        load_row(c, 0, b, P + j, hk, kr, a->D);
        load_row(c, 1, b, P + j, hk, vr, a->Dv);
        float dot = 0.0f;
        for (int64_t d = 0; d < a->D; d++)
            dot += q[d] * kr[d];
        float s = cf_attn_score(a, a->scale * dot, slope, i, j, sq, sk);
        if (s > m) {
            float r = expf(m - s);
            l *= r;
            for (int64_t d = 0; d < a->Dv; d++)
                acc[d] *= r;
            m = s;
        }
        float p = expf(s - m);
        l += p;
        for (int64_t d = 0; d < a->Dv; d++)
            acc[d] += p * vr[d];
    }
    /* no visible key: out 0, lse -inf (the sink when there is one); l NaN (a NaN score): NaN
     * out and lse */
    float inv = l != 0.0f ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < a->Dv; d++)
        cf_store(a->out.data, a->dtype, at4(&a->out, b, q0 + i, h, d), acc[d] * inv);
    if (a->lse.data)
        ((float*)a->lse
             .data)[b * a->lse.stride[0] + h * a->lse.stride[1] + (q0 + i) * a->lse.stride[2]] =
            l != 0.0f ? m + logf(l) : -INFINITY;
}

static cflash_status ref_kvcache_run(const void* call) {
    const cf_kvcache_call* c = call;
    const cf_attn_call* a = &c->a;
    const int64_t nd = (a->D > a->Dv ? a->D : a->Dv);
    int failed = 0;
#pragma omp parallel num_threads(a->threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * (size_t)nd * 4);
        failed = !buf;
        /* a KV head per thread, its new rows in order: where two rows land on one cache row
         * (a repeated cache_batch_idx, a page in two block-table rows) the later one is kept,
         * on every run (cflash.h) */
#pragma omp for schedule(static)
        for (int64_t hk = 0; hk < a->Hk; hk++) {
            for (int64_t r = 0; r < c->total_new; r++) {
                int64_t b, n;
                if (buf && cf_kv_new_row_of(c, r, &b, &n)) append(c, buf, b, n, hk);
            }
        }
        /* (the implicit barrier: every row is in the cache before any query reads it) */
#pragma omp for schedule(dynamic, 4)
        for (int64_t r = 0; r < a->B * a->H * a->Sq; r++) {
            const int64_t b = r / (a->H * a->Sq), i = r % a->Sq;
            int64_t q0, sq;
            cf_kv_q_rows(c, b, &q0, &sq);
            if (buf && i < sq)
                attend_row(c, buf, buf + nd, buf + 2 * nd, buf + 3 * nd, b, (r / a->Sq) % a->H, i);
        }
        free(buf);
    }
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "cpu-ref kvcache_fwd: out of memory");
    return CFLASH_OK;
}

const cf_impl cf_impl_ref_kvcache_fwd = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCPU,
    .supports = NULL,
    .run = ref_kvcache_run,
};
