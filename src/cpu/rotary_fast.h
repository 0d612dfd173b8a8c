/* Fast rotary embedding body (included once per ISA by ops_generic.c / x86/ops_*.c / arm/ops_neon.c
 * after ops_fast_common.h): rows split in contiguous blocks over threads; per row the cos/sin row
 * is converted once. When a row's heads are dense (and, in place, everything rotates) the whole row
 * is converted to fp32 with one call, rotated head by head, and stored with one call; otherwise
 * head by head. The next row is prefetched while this one is computed. */

/* o[0..rd) = rotation of x[0..rd) (fp32) with the row's factors. */
static inline void rotate_head(const cf_rotary_call* c, const float* restrict x, float* restrict o,
                               const float* restrict co, const float* restrict si,
                               const float* restrict ce, const float* restrict se) {
    const int64_t half = c->rd / 2;
    if (c->interleaved) {
        int64_t d = 0;
#if defined(CF_OPS_AVX512) /* pair swap within lanes instead of x[d ^ 1] (which does not           \
                            * vectorize)                                                           \
                            */
        for (; d + 16 <= c->rd; d += 16) {
            __m512 v = _mm512_loadu_ps(x + d);
            _mm512_storeu_ps(o + d, _mm512_fmadd_ps(v, _mm512_loadu_ps(ce + d),
                                                    _mm512_mul_ps(_mm512_permute_ps(v, 0xB1),
                                                                  _mm512_loadu_ps(se + d))));
        }
#elif defined(CF_OPS_AVX2)
        for (; d + 8 <= c->rd; d += 8) {
            __m256 v = _mm256_loadu_ps(x + d);
            _mm256_storeu_ps(o + d, _mm256_fmadd_ps(v, _mm256_loadu_ps(ce + d),
                                                    _mm256_mul_ps(_mm256_permute_ps(v, 0xB1),
                                                                  _mm256_loadu_ps(se + d))));
        }
#elif defined(CF_OPS_NEON) /* REV64 swaps the pairs */
        for (; d + 4 <= c->rd; d += 4) {
            const float32x4_t v = vld1q_f32(x + d);
            vst1q_f32(o + d, vfmaq_f32(vmulq_f32(vrev64q_f32(v), vld1q_f32(se + d)), v,
                                       vld1q_f32(ce + d)));
        }
#endif
        for (; d < c->rd; d++)
            o[d] = x[d] * ce[d] + x[d ^ 1] * se[d];
    } else {
#pragma omp simd
        for (int64_t i = 0; i < half; i++) {
            o[i] = x[i] * co[i] - x[i + half] * si[i];
            o[i + half] = x[i] * si[i] + x[i + half] * co[i];
        }
    }
}

static cflash_status fast_rotary_run(const void* call) {
    const cf_rotary_call* c = call;
    const int64_t half = c->rd / 2, D = c->D, H = c->H, rows = c->B * c->S;
    const size_t xs = cf_dtype_size(c->dtype);
    /* whole rows: heads dense in x and out, and nothing to leave untouched in place */
    const int whole = (H == 1 || (c->x.stride[2] == D && c->out.stride[2] == D)) &&
                      (!c->inplace || (c->rd == D && c->nrot == H));
    const int64_t nbuf = whole ? 2 * H * D : 2 * D;
#ifdef CF_OPS_ROTARY_ROW_BF16
    const int fused_bf16 =
        whole && c->dtype == CF_BF16 && c->rd == D && c->nrot == H && D % 32 == 0;
#endif
    int failed = 0;
#pragma omp parallel num_threads(c->threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * (size_t)(nbuf + 6 * half + 32));
        failed = !buf;
        if (buf) {
            float *x = buf, *o = x + nbuf / 2, *co = o + nbuf / 2, *si = co + half, *ce = si + half,
                  *se = ce + 2 * half;
            int64_t r0, r1;
            part(rows, CF_TID, CF_NT, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) {
                int64_t b = r / c->S, s = r % c->S, s0, len, off;
                cf_rotary_seq(c, b, &s0, &len, &off);
                if (s >= len) continue;
                int64_t pos = off + s;
                ld_row(co, at(&c->cos, pos * c->cos.stride[0]), c->cos.dtype, half);
                ld_row(si, at(&c->sin, pos * c->sin.stride[0]), c->sin.dtype, half);
                if (c->conjugate)
#pragma omp simd
                    for (int64_t i = 0; i < half; i++)
                        si[i] = -si[i];
                if (c->interleaved) /* per-element factors: o[d] = x[d] ce[d] + x[d^1] se[d] */
                    for (int64_t i = 0; i < half; i++) {
                        ce[2 * i] = ce[2 * i + 1] = co[i];
                        se[2 * i] = -si[i];
                        se[2 * i + 1] = si[i];
                    }
                int64_t xrow = b * c->x.stride[0] + (s0 + s) * c->x.stride[1];
                int64_t orow = b * c->out.stride[0] + (s0 + s) * c->out.stride[1];
                const char* src = (const char*)c->x.data + xrow * (int64_t)xs;
                char* dst = (char*)c->out.data + orow * (int64_t)xs;
                if (whole) {
                    if (r + 1 < r1 && s + 1 < len) {
                        prefetch_row(src + c->x.stride[1] * (int64_t)xs, c->dtype, H * D, 0);
                        if (!c->inplace)
                            prefetch_row(dst + c->out.stride[1] * (int64_t)xs, c->dtype, H * D, 1);
                    }
#ifdef CF_OPS_ROTARY_ROW_BF16
                    if (fused_bf16) { /* bf16 in registers, no fp32 scratch rows */
                        rotary_row_bf16(c, (const uint16_t*)src, (uint16_t*)dst, co, si);
                        continue;
                    }
#endif
                    /* in groups of heads whose fp32 rows stay in L1 */
                    const int64_t hg = D >= 2048 ? 1 : 2048 / D;
                    for (int64_t h0 = 0; h0 < H; h0 += hg) {
                        const int64_t nh = H - h0 < hg ? H - h0 : hg;
                        ld_row(x, src + h0 * D * (int64_t)xs, c->dtype, nh * D);
                        for (int64_t h = h0; h < h0 + nh; h++) {
                            float *xh = x + (h - h0) * D, *oh = o + (h - h0) * D;
                            if (h < c->nrot) rotate_head(c, xh, oh, co, si, ce, se);
                            for (int64_t d = h < c->nrot ? c->rd : 0; d < D; d++)
                                oh[d] = xh[d];
                        }
                        st_row(dst + h0 * D * (int64_t)xs, c->dtype, o, nh * D);
                    }
                    continue;
                }
                for (int64_t h = 0; h < H; h++) {
                    const char* hs = src + h * c->x.stride[2] * (int64_t)xs;
                    char* hd = dst + h * c->out.stride[2] * (int64_t)xs;
                    if (h >= c->nrot) {
                        if (!c->inplace) memcpy(hd, hs, (size_t)D * xs);
                        continue;
                    }
                    ld_row(x, hs, c->dtype, c->inplace ? c->rd : D);
                    rotate_head(c, x, o, co, si, ce, se);
                    if (!c->inplace)
                        for (int64_t d = c->rd; d < D; d++)
                            o[d] = x[d];
                    st_row(hd, c->dtype, o, c->inplace ? c->rd : D);
                }
            }
        }
        free(buf);
    }
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "rotary: out of memory for scratch rows");
    return CFLASH_OK;
}
