/* Reference attention backward (backend cpu-ref): recomputes each probability from q, k and the
 * forward's LSE. dq per query row; dk and dv of one (b, KV head) are summed in fp32 over the query
 * heads of its group, so memory is O(Sk * (D + Dv)) per thread and the result deterministic. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/status.h"
#include "core/threads.h"
#include "cpu/ref/attn_ref.h"

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
    float delta = 0.0f;            /* rowsum(dO * O) */
    for (int64_t d = 0; d < c->Dv; d++)
        delta += cf_load(c->dout.data, c->dtype, ref_at4(&c->dout, b, qi, h, d)) *
                 cf_load(c->out.data, c->dtype, ref_at4(&c->out, b, qi, h, d));
    for (int64_t j = lo; j < hi; j++) {
        const int64_t kj = k0 + j;
        const float ds =
            ref_pair_grad(c, b, h, hk, qi, kj, i, j, sq, sk, lse, delta, dv + j * c->Dv);
        for (int64_t d = 0; d < c->D; d++) {
            dq[d] += ds * cf_load(c->k.data, c->dtype, ref_at4(&c->k, b, kj, hk, d));
            dk[j * c->D + d] += ds * cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, qi, h, d));
        }
    }
    for (int64_t d = 0; d < c->D; d++)
        cf_store(c->dq.data, c->dtype, ref_at4(&c->dq, b, qi, h, d), dq[d]);
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
        for (int64_t d = 0; d < c->D; d++)
            cf_store(c->dk.data, c->dtype, ref_at4(&c->dk, b, k0 + j, hk, d), dk[j * c->D + d]);
        for (int64_t d = 0; d < c->Dv; d++)
            cf_store(c->dv.data, c->dtype, ref_at4(&c->dv, b, k0 + j, hk, d), dv[j * c->Dv + d]);
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
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t g = 0; g < n; g++)
        if (!bwd_group(c, g / c->Hk, g % c->Hk)) failed = 1;
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY,
                     "cpu-ref attn_bwd: out of memory for the fp32 dk/dv of Sk = %lld rows",
                     (long long)c->Sk);
    return CFLASH_OK;
}

const cf_impl cf_impl_ref_attn_bwd = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = NULL,
    .run = ref_bwd_run,
};
