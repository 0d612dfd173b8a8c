/* Reference attention backward (backend cpu-ref): recomputes each probability from q, k and the
 * forward's LSE. dq per query row; dk and dv of one (b, KV head) are summed in fp32 over the query
 * heads of its group, so memory is O(Sk * (D + Dv)) per thread and the result deterministic.
 * dbias (per row of dbias, over the (b, h) it broadcasts to) and dsinks (per head) are separate
 * passes that recompute what they need, so each output element has one writer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/status.h"
#include "core/threads.h"
#include "cpu/ref/attn_ref.h"

/* rowsum(dO * O) of query row qi of head h (sequence b). */
static float row_delta(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi) {
    float delta = 0.0f;
    for (int64_t d = 0; d < c->Dv; d++)
        delta += cf_load(c->dout.data, c->dtype, ref_at4(&c->dout, b, qi, h, d)) *
                 cf_load(c->out.data, c->dtype, ref_at4(&c->out, b, qi, h, d));
    return delta;
}

/* Gradients of one query row i of head h (sequence b) into dq (D) and the group's dk/dv (Sk rows).
 */
static void bwd_row(const cf_attn_call* c, float* dq, float* dk, float* dv, int64_t b, int64_t h,
                    int64_t q0, int64_t k0, int64_t i, int64_t sq, int64_t sk) {
    const int64_t hk = h / (c->H / c->Hk), qi = q0 + i;
    const float lse = ((const float*)c->lse.data)[ref_at3(&c->lse, b, h, qi)];
    memset(dq, 0, sizeof(float) * (size_t)c->D);
    int64_t lo, hi;
    cf_attn_key_range(c, i, sq, sk, &lo, &hi);
    if (lse == -INFINITY) hi = lo; /* a row that saw no key has no gradient */
    const float delta = row_delta(c, b, h, qi), fix = ref_row_fix(c, b, h, qi, k0, i, sq, sk, lse);
    for (int64_t j = lo; j < hi; j++) {
        const int64_t ko = cf_attn_kv_off(c, &c->k, b, k0, j, hk);
        float ds_s, ds;
        if (!ref_pair_grad(c, b, h, qi, k0, i, j, sq, sk, lse, fix, delta, dv + j * c->Dv, &ds_s,
                           &ds))
            continue;
        for (int64_t d = 0; d < c->D; d++) {
            dq[d] += ds * cf_load(c->k.data, c->dtype, ko + d);
            dk[j * c->D + d] += ds * cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, qi, h, d));
        }
    }
    for (int64_t d = 0; d < c->D; d++)
        cf_store(c->dq.data, c->dtype, ref_at4(&c->dq, b, qi, h, d), dq[d]);
}

/* One row (b', h', i) of dbias (batch calls only): dL/d(score) summed over the (b, h) that the
 * bias broadcasts to, in a fixed order. acc: Sk floats. */
static void dbias_row(const cf_attn_call* c, float* acc, int64_t bb, int64_t hh, int64_t i) {
    const int64_t b0 = c->dbias.shape[0] == 1 ? 0 : bb, b1 = c->dbias.shape[0] == 1 ? c->B : bb + 1;
    const int64_t h0 = c->dbias.shape[1] == 1 ? 0 : hh, h1 = c->dbias.shape[1] == 1 ? c->H : hh + 1;
    for (int64_t j = 0; j < c->Sk; j++)
        acc[j] = 0.0f;
    for (int64_t b = b0; b < b1; b++)
        for (int64_t h = h0; h < h1; h++) {
            int64_t q0, sq, k0, sk; /* seqused_q / seqused_k shorten a batch's rows */
            cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
            if (i >= sq) continue;
            const float lse = ((const float*)c->lse.data)[ref_at3(&c->lse, b, h, i)];
            if (lse == -INFINITY) continue;
            const float delta = row_delta(c, b, h, i),
                        fix = ref_row_fix(c, b, h, i, 0, i, sq, sk, lse);
            int64_t lo, hi;
            cf_attn_key_range(c, i, sq, sk, &lo, &hi);
            for (int64_t j = lo; j < hi; j++) {
                float ds_s, ds;
                if (ref_pair_grad(c, b, h, i, 0, i, j, sq, sk, lse, fix, delta, NULL, &ds_s, &ds))
                    acc[j] += ds_s;
            }
        }
    for (int64_t j = 0; j < c->Sk; j++)
        cf_store(c->dbias.data, c->dbias.dtype,
                 bb * c->dbias.stride[0] + hh * c->dbias.stride[1] + i * c->dbias.stride[2] + j,
                 acc[j]);
}

/* dsinks[h] = -sum over the rows (b, i) of exp(sink - lse) * rowsum(dO * O) (exp((sink - lse) - r)
 * where |lse| is far, see CF_ATTN_LSE_FAR), in a fixed order. */
static void dsink_head(const cf_attn_call* c, int64_t h) {
    const float sink = cf_attn_sink(c, h);
    float acc = 0.0f;
    for (int64_t b = 0; b < c->B && sink != -INFINITY; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        for (int64_t i = 0; i < sq; i++) {
            const float lse = ((const float*)c->lse.data)[ref_at3(&c->lse, b, h, q0 + i)];
            const float fix = ref_row_fix(c, b, h, q0 + i, k0, i, sq, sk, lse);
            acc -= expf((sink - lse) - fix) * row_delta(c, b, h, q0 + i);
        }
    }
    c->dsinks[h] = acc;
}

/* All gradients of sequence b, KV head hk: dq of its query heads, then its dk and dv. */
static int bwd_group(const cf_attn_call* c, int64_t b, int64_t hk) {
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float* dq = malloc(sizeof(float) * (size_t)c->D);
    float* dk = calloc((size_t)(sk * c->D) + 1, sizeof(float));
    float* dv = calloc((size_t)(sk * c->Dv) + 1, sizeof(float));
    int ok = dq && dk && dv;
    const int64_t group = c->H / c->Hk;
    for (int64_t h = hk * group; ok && h < (hk + 1) * group; h++)
        for (int64_t i = 0; i < sq; i++)
            bwd_row(c, dq, dk, dv, b, h, q0, k0, i, sq, sk);
    for (int64_t j = 0; ok && j < sk; j++) {
        const int64_t ko = cf_attn_kv_off(c, &c->dk, b, k0, j, hk),
                      vo = cf_attn_kv_off(c, &c->dv, b, k0, j, hk);
        for (int64_t d = 0; d < c->D; d++)
            cf_store(c->dk.data, c->dtype, ko + d, dk[j * c->D + d]);
        for (int64_t d = 0; d < c->Dv; d++)
            cf_store(c->dv.data, c->dtype, vo + d, dv[j * c->Dv + d]);
    }
    free(dq);
    free(dk);
    free(dv);
    return ok;
}

static cflash_status ref_bwd_run(const void* call) {
    const cf_attn_call* c = call;
    const int64_t n = c->B * c->Hk;
    int failed = 0;
    const int nt = cf_threads_items(c->threads, n);
    cf_attn_zero_unused(c);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t g = 0; g < n; g++)
        if (!bwd_group(c, g / c->Hk, g % c->Hk)) failed = 1;
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY,
                     "cpu-ref attn_bwd: out of memory for the fp32 dk/dv of Sk = %lld rows",
                     (long long)c->Sk);
    if (c->dbias.data) {
        const int64_t nr = c->dbias.shape[0] * c->dbias.shape[1] * c->Sq;
#pragma omp parallel num_threads(cf_threads_items(c->threads, nr)) reduction(| : failed)
        {
            float* acc = malloc(sizeof(float) * (size_t)(c->Sk + 1));
            if (!acc) failed = 1;
#pragma omp for schedule(dynamic, 4)
            for (int64_t r = 0; r < nr; r++)
                if (acc)
                    dbias_row(c, acc, r / (c->dbias.shape[1] * c->Sq),
                              (r / c->Sq) % c->dbias.shape[1], r % c->Sq);
            free(acc);
        }
        CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY,
                         "cpu-ref attn_bwd: out of memory for a dbias row of Sk = %lld",
                         (long long)c->Sk);
    }
    if (c->dsinks) {
#pragma omp parallel for num_threads(cf_threads_items(c->threads, c->H))
        for (int64_t h = 0; h < c->H; h++)
            dsink_head(c, h);
    }
    return CFLASH_OK;
}

const cf_impl cf_impl_ref_attn_bwd = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = NULL,
    .run = ref_bwd_run,
};
