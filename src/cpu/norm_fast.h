/* Fast RMSNorm / LayerNorm body (included once per ISA after ops_fast_common.h). Forward: rows in
 * contiguous blocks per thread; each row is read once (x, residual), h kept in fp32 scratch, and
 * written once (out, residual_out). Backward: the same, with dweight/dbias summed per chunk of
 * rows and the chunks summed in order at the end; the chunks depend on M and N only, so the sums
 * are the same bits for any thread count. */

/* weight / bias as fp32 [N] (1 / 0 when absent). */
static void norm_wb(const cf_norm_call* c, float* w, float* bias) {
    if (c->weight.data) {
        for (int64_t j = 0; j < c->N; j++)
            w[j] = cf_load(c->weight.data, c->weight.dtype, j * c->weight.stride[0]);
    } else {
        for (int64_t j = 0; j < c->N; j++)
            w[j] = 1.0f;
    }
    for (int64_t j = 0; j < c->N; j++)
        bias[j] = c->bias.data ? cf_load(c->bias.data, c->bias.dtype, j * c->bias.stride[0]) : 0.0f;
}

/* h = dropout(x) + residual for row r into h (fp32), with t as scratch. */
static void norm_input(const cf_norm_call* c, int64_t r, float* restrict h, float* restrict t) {
    const int64_t N = c->N;
    ld_row(h, at(&c->x, r * c->x.stride[0]), c->x.dtype, N);
    if (c->dropout_p > 0.0f) {
        const float ks = 1.0f / (1.0f - c->dropout_p);
        for (int64_t j = 0; j < N; j++)
            h[j] = cf_norm_keep(c, r, j) ? h[j] * ks : 0.0f;
    }
    if (c->residual.data) {
        ld_row(t, at(&c->residual, r * c->residual.stride[0]), c->residual.dtype, N);
#pragma omp simd
        for (int64_t j = 0; j < N; j++)
            h[j] += t[j];
    }
}

static void norm_stats(const cf_norm_call* c, const float* restrict h, float* mean, float* rstd) {
    const int64_t N = c->N;
    float mu = 0.0f, var = 0.0f;
    if (!c->rms) {
#pragma omp simd reduction(+ : mu)
        for (int64_t j = 0; j < N; j++)
            mu += h[j];
        mu /= (float)N;
    }
#pragma omp simd reduction(+ : var)
    for (int64_t j = 0; j < N; j++)
        var += (h[j] - mu) * (h[j] - mu);
    *mean = mu;
    *rstd = 1.0f / sqrtf(var / (float)N + c->eps);
}

static cflash_status fast_norm_fwd_run(const void* call) {
    const cf_norm_call* c = call;
    const int64_t N = c->N;
#ifdef CF_OPS_NORM_ROW_BF16
    const int fused_bf16 = c->dtype == CF_BF16 && c->out.dtype == CF_BF16 && c->dropout_p == 0.0f;
    const int plain_bf16 = fused_bf16 && !c->residual.data && !c->residual_out.data;
#endif
    int failed = 0;
#pragma omp parallel num_threads(c->threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * (size_t)(4 * N + 64));
        failed = !buf;
        if (buf) {
            float *h = buf, *t = h + N, *w = t + N, *bias = w + N;
            norm_wb(c, w, bias);
            int64_t r0, r1;
            part(c->M, CF_TID, CF_NT, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) {
                float mu, rs;
                if (r + 1 < r1) {
                    prefetch_row(at(&c->x, (r + 1) * c->x.stride[0]), c->x.dtype, N, 0);
                    prefetch_row(at(&c->out, (r + 1) * c->out.stride[0]), c->out.dtype, N, 1);
                    if (c->residual.data)
                        prefetch_row(at(&c->residual, (r + 1) * c->residual.stride[0]),
                                     c->residual.dtype, N, 0);
                    if (c->residual_out.data)
                        prefetch_row(at(&c->residual_out, (r + 1) * c->residual_out.stride[0]),
                                     c->residual_out.dtype, N, 1);
                }
#ifdef CF_OPS_NORM_ROW_BF16
                if (fused_bf16) { /* bf16 in and out, no dropout: fused rows */
                    if (plain_bf16)
                        norm_row_bf16(c, r, w, bias, &mu, &rs);
                    else
                        norm_row_res_bf16(c, r, w, bias, h, &mu, &rs);
                    if (c->mean.data) ((float*)c->mean.data)[r * c->mean.stride[0]] = mu;
                    if (c->rstd.data) ((float*)c->rstd.data)[r * c->rstd.stride[0]] = rs;
                    continue;
                }
#endif
                norm_input(c, r, h, t);
                if (c->residual_out.data)
                    st_row(at(&c->residual_out, r * c->residual_out.stride[0]),
                           c->residual_out.dtype, h, N);
                norm_stats(c, h, &mu, &rs);
#pragma omp simd
                for (int64_t j = 0; j < N; j++)
                    t[j] = (h[j] - mu) * rs * w[j] + bias[j];
                st_row(at(&c->out, r * c->out.stride[0]), c->out.dtype, t, N);
                if (c->mean.data) ((float*)c->mean.data)[r * c->mean.stride[0]] = mu;
                if (c->rstd.data) ((float*)c->rstd.data)[r * c->rstd.stride[0]] = rs;
            }
        }
        free(buf);
    }
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "norm_fwd: out of memory for scratch rows");
    return CFLASH_OK;
}

/* Chunks of rows for the dweight / dbias partial sums: a function of M and N only (at most 64,
 * at least 16 rows each, partials within 64 MB). */
static int64_t norm_chunks(int64_t M, int64_t N) {
    int64_t n = (M + 15) / 16, cap = ((int64_t)64 << 20) / (8 * N);
    if (n > 64) n = 64;
    if (n > cap) n = cap;
    return n < 1 ? 1 : n;
}

static cflash_status fast_norm_bwd_run(const void* call) {
    const cf_norm_call* c = call;
    const int64_t N = c->N, nch = norm_chunks(c->M, N);
    const int nt = cf_threads_items(c->threads, nch);
    float* part_acc = calloc((size_t)nch * 2 * (size_t)N, sizeof(float)); /* dweight, dbias */
    CFLASH_RETURN_IF(!part_acc, CFLASH_ERR_OUT_OF_MEMORY, "norm_bwd: out of memory");
    int failed = 0;
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * (size_t)(5 * N + 64));
        failed = !buf;
        if (buf) {
            float *h = buf, *dy = h + N, *g = dy + N, *w = g + N, *tmp = w + N;
            norm_wb(c, w, tmp);
            const float ks = 1.0f / (1.0f - c->dropout_p);
            int64_t c0, c1;
            part(nch, CF_TID, CF_NT, &c0, &c1);
            /* chunk ch: rows [M * ch / nch, M * (ch + 1) / nch), none empty (nch <= M) */
            const int64_t r1 = c->M * c1 / nch; /* the thread's last row + 1 */
            int64_t ch = c0;
            for (int64_t r = c->M * c0 / nch; r < r1; r++) {
                float mu, rs, mg = 0.0f, mgx = 0.0f;
                while (r >= c->M * (ch + 1) / nch)
                    ch++;
                float *dw = part_acc + (size_t)ch * 2 * (size_t)N, *db = dw + N;
                if (r + 1 < r1) {
                    prefetch_row(at(&c->x, (r + 1) * c->x.stride[0]), c->x.dtype, N, 0);
                    prefetch_row(at(&c->dy, (r + 1) * c->dy.stride[0]), c->dy.dtype, N, 0);
                    prefetch_row(at(&c->dx, (r + 1) * c->dx.stride[0]), c->dx.dtype, N, 1);
                }
                ld_row(h, at(&c->x, r * c->x.stride[0]), c->x.dtype, N);
                ld_row(dy, at(&c->dy, r * c->dy.stride[0]), c->dy.dtype, N);
                norm_stats(c, h, &mu, &rs);
                if (c->mean.data) mu = ((const float*)c->mean.data)[r * c->mean.stride[0]];
                if (c->rstd.data) rs = ((const float*)c->rstd.data)[r * c->rstd.stride[0]];
#pragma omp simd reduction(+ : mg, mgx)
                for (int64_t j = 0; j < N; j++) {
                    float xh = (h[j] - mu) * rs;
                    h[j] = xh;
                    g[j] = dy[j] * w[j];
                    dw[j] += dy[j] * xh;
                    db[j] += dy[j];
                    mg += g[j];
                    mgx += g[j] * xh;
                }
                mg = c->rms ? 0.0f : mg / (float)N;
                mgx /= (float)N;
#pragma omp simd
                for (int64_t j = 0; j < N; j++)
                    g[j] = rs * (g[j] - mg - h[j] * mgx);
                if (c->dresidual_out.data) {
                    ld_row(tmp, at(&c->dresidual_out, r * c->dresidual_out.stride[0]),
                           c->dresidual_out.dtype, N);
#pragma omp simd
                    for (int64_t j = 0; j < N; j++)
                        g[j] += tmp[j];
                }
                if (c->dresidual.data)
                    st_row(at(&c->dresidual, r * c->dresidual.stride[0]), c->dresidual.dtype, g, N);
                if (c->dropout_p > 0.0f)
                    for (int64_t j = 0; j < N; j++)
                        g[j] = cf_norm_keep(c, r, j) ? g[j] * ks : 0.0f;
                st_row(at(&c->dx, r * c->dx.stride[0]), c->dx.dtype, g, N);
            }
        }
        free(buf);
    }
    if (!failed)
        for (int64_t j = 0; j < N; j++) {
            float sw = 0.0f, sb = 0.0f;
            for (int64_t t = 0; t < nch; t++) {
                sw += part_acc[(size_t)t * 2 * (size_t)N + (size_t)j];
                sb += part_acc[(size_t)t * 2 * (size_t)N + (size_t)(N + j)];
            }
            if (c->dweight.data)
                cf_store(c->dweight.data, c->dweight.dtype, j * c->dweight.stride[0], sw);
            if (c->dbias.data) cf_store(c->dbias.data, c->dbias.dtype, j * c->dbias.stride[0], sb);
        }
    free(part_acc);
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "norm_bwd: out of memory for scratch rows");
    return CFLASH_OK;
}
