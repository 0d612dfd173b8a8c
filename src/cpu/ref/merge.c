/* Reference merge of partial attention results by their LSE (backend cpu-ref): per output row,
 * lse = max + log(sum exp(lse_s - max)), out = sum exp(lse_s - lse) out_s, in fp32. */
#include <math.h>

#include "core/backend.h"
#include "core/ops_call.h"
#include "core/status.h"

static cflash_status ref_merge_run(const void* call) {
    const cf_merge_call* c = call;
    const int64_t rows = c->B * c->Sq * c->H;
#pragma omp parallel for num_threads(c->threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int64_t b = r / (c->Sq * c->H), i = (r / c->H) % c->Sq, h = r % c->H;
        const float* lp = c->lp.data;
        int64_t lo = b * c->lp.stride[1] + h * c->lp.stride[2] + i * c->lp.stride[3];
        float m = -INFINITY, sum = 0.0f;
        for (int64_t s = 0; s < c->NS; s++) { /* a NaN part LSE makes the row NaN */
            const float l = lp[lo + s * c->lp.stride[0]];
            m = l > m || l != l ? l : m;
            if (m != m) break;
        }
        if (m != -INFINITY)
            for (int64_t s = 0; s < c->NS; s++)
                sum += expf(lp[lo + s * c->lp.stride[0]] - m);
        float lse = m == -INFINITY ? -INFINITY : m + logf(sum);
        int64_t oo = b * c->out.stride[0] + i * c->out.stride[1] + h * c->out.stride[2];
        for (int64_t d = 0; d < c->Dv; d++) {
            float acc = 0.0f;
            for (int64_t s = 0; s < c->NS; s++) {
                float l = lp[lo + s * c->lp.stride[0]];
                if (l == -INFINITY) continue; /* an empty part: its out may be anything */
                acc += expf(l - lse) * cf_load(c->op.data, c->op.dtype,
                                               s * c->op.stride[0] + b * c->op.stride[1] +
                                                   i * c->op.stride[2] + h * c->op.stride[3] + d);
            }
            cf_store(c->out.data, c->out.dtype, oo + d, acc);
        }
        if (c->lse.data)
            ((float*)
                 c->lse.data)[b * c->lse.stride[0] + h * c->lse.stride[1] + i * c->lse.stride[2]] =
                lse;
    }
    return CFLASH_OK;
}

const cf_impl cf_impl_ref_attn_merge = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_ATTN_MERGE,
    .device_type = kDLCPU,
    .supports = NULL,
    .run = ref_merge_run,
};
