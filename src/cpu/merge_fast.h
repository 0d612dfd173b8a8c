/* Fast LSE merge body (included once per ISA after ops_fast_common.h): rows split over threads;
 * per row the part weights exp(lse_s - lse) are computed once and the partial outputs are summed
 * in fp32 vector loops. */

static cflash_status fast_merge_run(const void* call) {
    const cf_merge_call* c = call;
    const int64_t rows = c->B * c->Sq * c->H, Dv = c->Dv, NS = c->NS;
    int failed = 0;
#pragma omp parallel num_threads(c->threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * (size_t)(2 * Dv + NS + 16));
        failed = !buf;
        if (buf) {
            float *acc = buf, *row = acc + Dv, *w = row + Dv;
            int64_t r0, r1;
            part(rows, CF_TID, CF_NT, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) {
                int64_t b = r / (c->Sq * c->H), i = (r / c->H) % c->Sq, h = r % c->H;
                const float* lp = (const float*)c->lp.data + b * c->lp.stride[1] +
                                  h * c->lp.stride[2] + i * c->lp.stride[3];
                float m = -INFINITY, sum = 0.0f;
                for (int64_t s = 0; s < NS; s++) { /* a NaN part LSE makes the row NaN */
                    const float l = lp[s * c->lp.stride[0]];
                    m = l > m || l != l ? l : m;
                    if (m != m) break;
                }
                for (int64_t s = 0; s < NS; s++) {
                    float l = lp[s * c->lp.stride[0]];
                    w[s] = (m == -INFINITY || l == -INFINITY) ? 0.0f : expf(l - m);
                    sum += w[s];
                }
                float lse = m == -INFINITY ? -INFINITY : m + logf(sum);
                for (int64_t d = 0; d < Dv; d++)
                    acc[d] = 0.0f;
                for (int64_t s = 0; s < NS; s++) {
                    /* parts with LSE -inf hold no key (their out may be anything); a weight that
                     * underflows to 0 still multiplies out (0 * NaN is NaN, as a naive sum) */
                    if (m == -INFINITY || lp[s * c->lp.stride[0]] == -INFINITY) continue;
                    float ws = w[s] / sum;
                    ld_row(row,
                           at(&c->op, s * c->op.stride[0] + b * c->op.stride[1] +
                                          i * c->op.stride[2] + h * c->op.stride[3]),
                           c->op.dtype, Dv);
#pragma omp simd
                    for (int64_t d = 0; d < Dv; d++)
                        acc[d] += ws * row[d];
                }
                st_row(
                    at(&c->out, b * c->out.stride[0] + i * c->out.stride[1] + h * c->out.stride[2]),
                    c->out.dtype, acc, Dv);
                if (c->lse.data)
                    ((float*)c->lse.data)[b * c->lse.stride[0] + h * c->lse.stride[1] +
                                          i * c->lse.stride[2]] = lse;
            }
        }
        free(buf);
    }
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY,
                     "attn_merge: out of memory for scratch rows");
    return CFLASH_OK;
}
