/* Reference KV-cache attention (backend cpu-ref): append the (rotated) new keys and values into
 * the cache, then one query row at a time with an online softmax over the sequence's visible
 * cache positions, fp32 accumulation. Ignores num_splits (one pass). No intrinsics. */
#include <math.h>
#include <stdlib.h>

#include "core/backend.h"
#include "core/ops_call.h"
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

static void append(const cf_kvcache_call* c, float* buf, int64_t b, int64_t n, int64_t hk) {
    const cf_attn_call* a = &c->a;
    int64_t L, P, sk;
    cf_kv_seq(c, b, &L, &P, &sk);
    load_rotated(c, buf, &c->knew, at4(&c->knew, b, n, hk, 0), a->D, L + n);
    int64_t ko = cf_kv_row(c, &c->kc, b, L + n, hk), vo = cf_kv_row(c, &c->vc, b, L + n, hk);
    for (int64_t d = 0; d < a->D; d++)
        cf_store(c->kc.data, a->dtype, ko + d, buf[d]);
    for (int64_t d = 0; d < a->Dv; d++)
        cf_store(c->vc.data, a->dtype, vo + d,
                 cf_load(c->vnew.data, a->dtype, at4(&c->vnew, b, n, hk, d)));
}

static void attend_row(const cf_kvcache_call* c, float* q, float* acc, int64_t b, int64_t h,
                       int64_t i) {
    const cf_attn_call* a = &c->a;
    const int64_t hk = h / (a->H / a->Hk);
    int64_t L, P, sk, lo, hi;
    cf_kv_seq(c, b, &L, &P, &sk);
    load_rotated(c, q, &a->q, at4(&a->q, b, i, h, 0), a->D, cf_kv_qpos(c, L, i));
    if (c->cos.data) /* the rotated q is rounded to the dtype, as the new keys are */
        for (int64_t d = 0; d < a->D; d++)
            q[d] = cf_round_to(a->dtype, q[d]);
    cf_attn_key_range(a, i, a->Sq, sk, &lo, &hi);
    const float slope = cf_attn_slope(a, b, h);
    float m = -INFINITY, l = 0.0f;
    for (int64_t d = 0; d < a->Dv; d++)
        acc[d] = 0.0f;
    for (int64_t j = lo; j < hi; j++) {
        int64_t ko = cf_kv_row(c, &c->kc, b, P + j, hk), vo = cf_kv_row(c, &c->vc, b, P + j, hk);
        float dot = 0.0f;
        for (int64_t d = 0; d < a->D; d++)
            dot += q[d] * cf_load(c->kc.data, a->dtype, ko + d);
        float s = cf_attn_score(a, a->scale * dot, slope, i, j, a->Sq, sk);
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
            acc[d] += p * cf_load(c->vc.data, a->dtype, vo + d);
    }
    float inv = l != 0.0f ? 1.0f / l : 0.0f; /* l NaN (a NaN score): NaN out and lse */
    for (int64_t d = 0; d < a->Dv; d++)
        cf_store(a->out.data, a->dtype, at4(&a->out, b, i, h, d), acc[d] * inv);
    if (a->lse.data)
        ((float*)a->lse.data)[b * a->lse.stride[0] + h * a->lse.stride[1] + i * a->lse.stride[2]] =
            l != 0.0f ? m + logf(l) : -INFINITY;
}

static cflash_status ref_kvcache_run(const void* call) {
    const cf_kvcache_call* c = call;
    const cf_attn_call* a = &c->a;
    const int64_t nd = (a->D > a->Dv ? a->D : a->Dv);
    int failed = 0;
#pragma omp parallel num_threads(a->threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * (size_t)nd * 2);
        failed = !buf;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < a->B * c->Sn * a->Hk; r++)
            if (buf) append(c, buf, r / (c->Sn * a->Hk), (r / a->Hk) % c->Sn, r % a->Hk);
                /* (the implicit barrier: every row is in the cache before any query reads it) */
#pragma omp for schedule(dynamic, 4)
        for (int64_t r = 0; r < a->B * a->H * a->Sq; r++)
            if (buf)
                attend_row(c, buf, buf + nd, r / (a->H * a->Sq), (r / a->Sq) % a->H, r % a->Sq);
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
