/* Reference attention forward (backend cpu-ref): one query row at a time with an online softmax
 * over its visible keys, fp32 accumulation, memory O(Dv) per row. The test oracle's C twin and
 * the last fallback: every feature, every dtype, any strides; no intrinsics. */
#include <math.h>
#include <stdlib.h>

#include "core/backend.h"
#include "core/philox.h"
#include "core/status.h"
#include "core/threads.h"
#include "cpu/ref/attn_ref.h"

/* One row: out (Dv) and lse of query i (position qi in the view) of sequence b, head h. */
static void fwd_row(const cf_attn_call* c, float* acc, int64_t b, int64_t h, int64_t q0, int64_t k0,
                    int64_t i, int64_t sq, int64_t sk) {
    const int64_t hk = h / (c->H / c->Hk), qi = q0 + i;
    const float keep_scale = 1.0f / (1.0f - c->dropout_p);
    int64_t lo, hi;
    cf_attn_key_range(c, i, sq, sk, &lo, &hi);
    float m = -INFINITY, l = 0.0f;
    for (int64_t d = 0; d < c->Dv; d++)
        acc[d] = 0.0f;
    for (int64_t j = lo; j < hi; j++) {
        float s = ref_score(c, b, h, hk, qi, k0 + j, i, j, sq, sk);
        if (s > m) { /* rescale what was accumulated under the old maximum */
            float r = expf(m - s);
            l *= r;
            for (int64_t d = 0; d < c->Dv; d++)
                acc[d] *= r;
            m = s;
        }
        float p = expf(s - m);
        l += p;
        /* a dropped weight is 0 (still times v: 0 * NaN is NaN, as in dropout(P) V) */
        if (!cf_dropout_keep(c->seed, c->offset, c->dropout_p, (uint64_t)b, (uint64_t)h,
                             (uint64_t)(i + c->q_offset), (uint64_t)(j + c->k_offset)))
            p = 0.0f;
        for (int64_t d = 0; d < c->Dv; d++)
            acc[d] += p * cf_load(c->v.data, c->dtype, ref_at4(&c->v, b, k0 + j, hk, d));
    }
    /* No visible key (or every score -inf): out 0, lse -inf. A NaN score: l NaN, NaN both. */
    float inv = l != 0.0f ? keep_scale / l : 0.0f;
    for (int64_t d = 0; d < c->Dv; d++)
        cf_store(c->out.data, c->dtype, ref_at4(&c->out, b, qi, h, d), acc[d] * inv);
    if (c->lse.data)
        ((float*)c->lse.data)[ref_at3(&c->lse, b, h, q0 + i)] = l != 0.0f ? m + logf(l) : -INFINITY;
}

static cflash_status ref_fwd_run(const void* call) {
    const cf_attn_call* c = call;
    int64_t rows = c->B * c->H * c->Sq; /* (b, h, i) with i < max Sq; short sequences skip */
    int failed = 0;
    const int nt = cf_threads_items(c->threads, (rows + 15) / 16); /* chunks of 16 rows */
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        float* acc = malloc(sizeof(float) * (size_t)c->Dv);
        if (!acc) failed = 1;
#pragma omp for schedule(dynamic, 16)
        for (int64_t r = 0; r < rows; r++) {
            if (!acc) continue;
            int64_t b = r / (c->H * c->Sq), h = (r / c->Sq) % c->H, i = r % c->Sq;
            int64_t q0, sq, k0, sk;
            cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
            if (i < sq) fwd_row(c, acc, b, h, q0, k0, i, sq, sk);
        }
        free(acc);
    }
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY,
                     "cpu-ref attn_fwd: out of memory for %lld floats", (long long)c->Dv);
    return CFLASH_OK;
}

const cf_impl cf_impl_ref_attn_fwd = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = NULL, /* everything on the CPU */
    .run = ref_fwd_run,
};
