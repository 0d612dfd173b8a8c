/* Reference RMSNorm / LayerNorm forward and backward (backend cpu-ref): one row at a time in
 * fp32, two passes (statistics, then output), dropout through the shared Philox keying. The last
 * fallback and the C twin of the tests' fp64 oracle; no intrinsics. */
#include <math.h>
#include <stdlib.h>

#include "core/backend.h"
#include "core/ops_call.h"
#include "core/status.h"

static inline float ld(const cf_view* v, int64_t r, int64_t j) {
    return cf_load(v->data, v->dtype, r * v->stride[0] + j * v->stride[1]);
}
static inline void st(const cf_view* v, int64_t r, int64_t j, float x) {
    cf_store(v->data, v->dtype, r * v->stride[0] + j * v->stride[1], x);
}
static inline float wt(const cf_view* w, int64_t j, float dflt) {
    return w->data ? cf_load(w->data, w->dtype, j * w->stride[0]) : dflt;
}

/* h[j] = dropout(x) + residual for row r, as the forward computes it. */
static void row_input(const cf_norm_call* c, float* h, int64_t r) {
    const float ks = 1.0f / (1.0f - c->dropout_p);
    for (int64_t j = 0; j < c->N; j++) {
        float v = ld(&c->x, r, j);
        if (c->dropout_p > 0.0f) v = cf_norm_keep(c, r, j) ? v * ks : 0.0f;
        if (c->residual.data) v += ld(&c->residual, r, j);
        h[j] = v;
    }
}

/* mean (0 for RMS) and rstd of h. */
static void row_stats(const cf_norm_call* c, const float* h, float* mean, float* rstd) {
    float mu = 0.0f, var = 0.0f;
    if (!c->rms) {
        for (int64_t j = 0; j < c->N; j++)
            mu += h[j];
        mu /= (float)c->N;
    }
    for (int64_t j = 0; j < c->N; j++)
        var += (h[j] - mu) * (h[j] - mu);
    *mean = mu;
    *rstd = 1.0f / sqrtf(var / (float)c->N + c->eps);
}

static cflash_status ref_norm_fwd_run(const void* call) {
    const cf_norm_call* c = call;
    int failed = 0;
#pragma omp parallel num_threads(c->threads) reduction(| : failed)
    {
        float* h = malloc(sizeof(float) * (size_t)c->N);
        failed = !h;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < c->M; r++) {
            if (!h) continue;
            float mu, rs;
            row_input(c, h, r);
            if (c->residual_out.data)
                for (int64_t j = 0; j < c->N; j++)
                    st(&c->residual_out, r, j, h[j]);
            row_stats(c, h, &mu, &rs);
            for (int64_t j = 0; j < c->N; j++)
                st(&c->out, r, j,
                   (h[j] - mu) * rs * wt(&c->weight, j, 1.0f) + wt(&c->bias, j, 0.0f));
            if (c->mean.data) ((float*)c->mean.data)[r * c->mean.stride[0]] = mu;
            if (c->rstd.data) ((float*)c->rstd.data)[r * c->rstd.stride[0]] = rs;
        }
        free(h);
    }
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "cpu-ref norm_fwd: out of memory");
    return CFLASH_OK;
}

/* Backward: per row, dh = rstd * (g - mean(g) [LayerNorm] - xhat * mean(g * xhat)) with
 * g = dy * weight, plus dresidual_out; dweight/dbias summed over rows in row order. */
static cflash_status ref_norm_bwd_run(const void* call) {
    const cf_norm_call* c = call;
    const int64_t N = c->N;
    float* h = malloc(sizeof(float) * (size_t)N * 2);
    float* acc = calloc((size_t)N * 2, sizeof(float)); /* dweight, dbias */
    if (!h || !acc) {
        free(h), free(acc);
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY, "cpu-ref norm_bwd: out of memory");
    }
    float* g = h + N;
    const float ks = 1.0f / (1.0f - c->dropout_p);
    for (int64_t r = 0; r < c->M; r++) {
        float mu, rs, mg = 0.0f, mgx = 0.0f;
        for (int64_t j = 0; j < N; j++)
            h[j] = ld(&c->x, r, j);
        row_stats(c, h, &mu, &rs);
        if (c->mean.data) mu = ((const float*)c->mean.data)[r * c->mean.stride[0]];
        if (c->rstd.data) rs = ((const float*)c->rstd.data)[r * c->rstd.stride[0]];
        for (int64_t j = 0; j < N; j++) {
            float dy = ld(&c->dy, r, j), xh = (h[j] - mu) * rs;
            g[j] = dy * wt(&c->weight, j, 1.0f);
            h[j] = xh;
            acc[j] += dy * xh;
            acc[N + j] += dy;
            mg += g[j];
            mgx += g[j] * xh;
        }
        mg = c->rms ? 0.0f : mg / (float)N;
        mgx /= (float)N;
        for (int64_t j = 0; j < N; j++) {
            float dh = rs * (g[j] - mg - h[j] * mgx);
            if (c->dresidual_out.data) dh += ld(&c->dresidual_out, r, j);
            if (c->dresidual.data) st(&c->dresidual, r, j, dh);
            if (c->dropout_p > 0.0f) dh = cf_norm_keep(c, r, j) ? dh * ks : 0.0f;
            st(&c->dx, r, j, dh);
        }
    }
    for (int64_t j = 0; j < N; j++) {
        if (c->dweight.data)
            cf_store(c->dweight.data, c->dweight.dtype, j * c->dweight.stride[0], acc[j]);
        if (c->dbias.data)
            cf_store(c->dbias.data, c->dbias.dtype, j * c->dbias.stride[0], acc[N + j]);
    }
    free(h);
    free(acc);
    return CFLASH_OK;
}

const cf_impl cf_impl_ref_norm_fwd = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_NORM_FWD,
    .device_type = kDLCPU,
    .supports = NULL,
    .run = ref_norm_fwd_run,
};

const cf_impl cf_impl_ref_norm_bwd = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_NORM_BWD,
    .device_type = kDLCPU,
    .supports = NULL,
    .run = ref_norm_bwd_run,
};
