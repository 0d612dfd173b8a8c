/* Fast KV-cache attention body (included once per ISA after ops_fast_common.h).
 * 1. Append: the new k (rotated) and v rows go into the cache, rows split over threads.
 * 2. Attention: one work item = (batch b, KV head hk, key split s). The G = H / Hk query heads of
 *    the group and their Sq rows (R = G * Sq rows) are computed in one pass over the group's keys
 *    (GQA folded: each K/V row is read from memory once per item), in blocks of KV_KB keys:
 *    convert the block to fp32, scores for all R rows, online softmax, P V accumulation.
 * 3. Splits (num_splits > 1, or chosen when there are fewer (b, hk) groups than threads) keep
 *    (max, sum, acc) per split and are merged by their LSE, as cflash_attn_merge does. */

#define KV_KB 32

static void kv_append_fast(const cf_kvcache_call* c, float* buf, int64_t b, int64_t n, int64_t hk) {
    const cf_attn_call* a = &c->a;
    int64_t L, P, sk;
    cf_kv_seq(c, b, &L, &P, &sk);
    const cf_view *kn = &c->knew, *vn = &c->vnew;
    ld_row(buf, at(kn, b * kn->stride[0] + n * kn->stride[1] + hk * kn->stride[2]), a->dtype, a->D);
    if (c->cos.data) {
        const int64_t half = c->rd / 2, pos = L + n;
        for (int64_t i = 0; i < half; i++) {
            int64_t ia = c->interleaved ? 2 * i : i, ib = c->interleaved ? 2 * i + 1 : i + half;
            float co = cf_load(c->cos.data, c->cos.dtype, pos * c->cos.stride[0] + i);
            float sn = cf_load(c->sin.data, c->sin.dtype, pos * c->sin.stride[0] + i);
            float x = buf[ia], y = buf[ib];
            buf[ia] = x * co - y * sn;
            buf[ib] = x * sn + y * co;
        }
    }
    st_row(at(&c->kc, cf_kv_row(c, &c->kc, b, L + n, hk)), a->dtype, buf, a->D);
    memcpy(at(&c->vc, cf_kv_row(c, &c->vc, b, L + n, hk)),
           at(vn, b * vn->stride[0] + n * vn->stride[1] + hk * vn->stride[2]),
           (size_t)a->Dv * cf_dtype_size(a->dtype));
}

typedef struct kv_scratch {
    float *q, *acc, *m, *l, *s, *kf, *vf;
    int64_t *lo, *hi;
} kv_scratch;

static size_t kv_scratch_floats(const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    return (size_t)(R * a->D + R * a->Dv + 2 * R + R * KV_KB + KV_KB * (a->D + a->Dv) + 4 * R + 64);
}

static void kv_scratch_init(kv_scratch* w, float* p, const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    w->q = p, p += R * a->D;
    w->acc = p, p += R * a->Dv;
    w->m = p, p += R;
    w->l = p, p += R;
    w->s = p, p += R * KV_KB;
    w->kf = p, p += KV_KB * a->D;
    w->vf = p, p += KV_KB * a->Dv;
    w->lo = (int64_t*)p, p += 2 * R;
    w->hi = (int64_t*)p;
}

/* Keys [j0, j1) of batch b for KV head hk: leaves the unnormalised acc, the running max m and
 * the sum l of each of the R = G * Sq rows (r = g * Sq + i) in w. */
static void kv_item(const cf_kvcache_call* c, kv_scratch* w, int64_t b, int64_t hk, int64_t j0,
                    int64_t j1) {
    const cf_attn_call* a = &c->a;
    const int64_t G = a->H / a->Hk, Sq = a->Sq, R = G * Sq, D = a->D, Dv = a->Dv;
    int64_t L, P, sk;
    cf_kv_seq(c, b, &L, &P, &sk);
    int64_t jlo = j1, jhi = j0;
    for (int64_t r = 0; r < R; r++) {
        int64_t g = r / Sq, i = r % Sq, h = hk * G + g, lo, hi;
        float* q = w->q + r * D;
        ld_row(q, at(&a->q, b * a->q.stride[0] + i * a->q.stride[1] + h * a->q.stride[2]), a->dtype,
               D);
        if (c->cos.data) { /* rotate at the query's position and round to the dtype */
            const int64_t half = c->rd / 2, pos = cf_kv_qpos(c, L, i);
            for (int64_t t = 0; t < half; t++) {
                int64_t ia = c->interleaved ? 2 * t : t, ib = c->interleaved ? 2 * t + 1 : t + half;
                float co = cf_load(c->cos.data, c->cos.dtype, pos * c->cos.stride[0] + t);
                float sn = cf_load(c->sin.data, c->sin.dtype, pos * c->sin.stride[0] + t);
                float x = q[ia], y = q[ib];
                q[ia] = x * co - y * sn;
                q[ib] = x * sn + y * co;
            }
            for (int64_t d = 0; d < D; d++)
                q[d] = cf_round_to(a->dtype, q[d]);
        }
        cf_attn_key_range(a, i, Sq, sk, &lo, &hi);
        lo = lo > j0 ? lo : j0;
        hi = hi < j1 ? hi : j1;
        w->lo[r] = lo, w->hi[r] = hi;
        if (lo < hi) {
            if (lo < jlo) jlo = lo;
            if (hi > jhi) jhi = hi;
        }
        w->m[r] = -INFINITY;
        w->l[r] = 0.0f;
    }
    memset(w->acc, 0, sizeof(float) * (size_t)(R * Dv));
    const size_t es = cf_dtype_size(a->dtype);
    for (int64_t jb = jlo; jb < jhi; jb += KV_KB) {
        const int64_t nb = jhi - jb < KV_KB ? jhi - jb : KV_KB;
        for (int64_t t = 0; t < nb; t++) {
            int64_t ko = cf_kv_row(c, &c->kc, b, P + jb + t, hk);
            ld_row(w->kf + t * D, (const char*)c->kc.data + ko * (int64_t)es, a->dtype, D);
        }
        for (int64_t r = 0; r < R; r++) {
            const int64_t i = r % Sq, h = hk * G + r / Sq;
            const float* q = w->q + r * D;
            float* s = w->s + r * KV_KB;
            const float slope = cf_attn_slope(a, b, h);
            float mx = -INFINITY;
            for (int64_t t = 0; t < nb; t++) {
                const int64_t j = jb + t;
                if (j < w->lo[r] || j >= w->hi[r]) {
                    s[t] = -INFINITY;
                    continue;
                }
                const float* k = w->kf + t * D;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < D; d++)
                    dot += q[d] * k[d];
                float x = a->scale * dot;
                if (a->softcap > 0.0f || slope != 0.0f)
                    x = cf_attn_score(a, x, slope, i, j, Sq, sk);
                s[t] = x;
                mx = x > mx ? x : mx;
            }
            if (mx == -INFINITY) { /* nothing visible in this block: P row is 0 */
                for (int64_t t = 0; t < nb; t++)
                    s[t] = 0.0f;
                continue;
            }
            const float mnew = mx > w->m[r] ? mx : w->m[r];
            const float alpha = fexp(w->m[r] - mnew);
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t t = 0; t < nb; t++) {
                float p = fexp(s[t] - mnew);
                s[t] = p;
                sum += p;
            }
            if (alpha != 1.0f) {
                float* acc = w->acc + r * Dv;
#pragma omp simd
                for (int64_t d = 0; d < Dv; d++)
                    acc[d] *= alpha;
            }
            w->l[r] = w->l[r] * alpha + sum;
            w->m[r] = mnew;
        }
        for (int64_t t = 0; t < nb; t++) {
            int64_t vo = cf_kv_row(c, &c->vc, b, P + jb + t, hk);
            ld_row(w->vf + t * Dv, (const char*)c->vc.data + vo * (int64_t)es, a->dtype, Dv);
        }
        for (int64_t r = 0; r < R; r++) {
            if (w->m[r] == -INFINITY) continue;
            float* acc = w->acc + r * Dv;
            const float* s = w->s + r * KV_KB;
            for (int64_t t = 0; t < nb; t++) {
                const float p = s[t];
                if (p == 0.0f) continue;
                const float* v = w->vf + t * Dv;
#pragma omp simd
                for (int64_t d = 0; d < Dv; d++)
                    acc[d] += p * v[d];
            }
        }
    }
}

/* Splits per (b, hk) group: as given, else enough items for every thread twice over when the
 * groups are fewer, with at least 512 keys per split. */
static int64_t kv_splits(const cf_kvcache_call* c) {
    const cf_attn_call* a = &c->a;
    int64_t ns = c->num_splits;
    if (ns == 0) {
        int64_t groups = a->B * a->Hk, want = 2 * (int64_t)a->threads;
        ns = groups >= want ? 1 : (want + groups - 1) / groups;
        int64_t by_len = a->Sk / 512;
        if (ns > by_len) ns = by_len;
    }
    if (ns > a->Sk) ns = a->Sk;
    if (ns > 256) ns = 256;
    return ns < 1 ? 1 : ns;
}

static cflash_status fast_kvcache_run(const void* call) {
    const cf_kvcache_call* c = call;
    const cf_attn_call* a = &c->a;
    const int64_t G = a->H / a->Hk, R = G * a->Sq, Dv = a->Dv, ns = kv_splits(c);
    const int64_t items = a->B * a->Hk * ns;
    /* per item: acc (R * Dv), m (R), l (R) */
    float* parts = malloc(sizeof(float) * (size_t)(items * R * (Dv + 2) + 1));
    CFLASH_RETURN_IF(!parts, CFLASH_ERR_OUT_OF_MEMORY,
                     "kvcache_fwd: out of memory for %lld partial rows", (long long)(items * R));
    int failed = 0;
#pragma omp parallel num_threads(a->threads) reduction(| : failed)
    {
        float* buf = malloc(sizeof(float) * kv_scratch_floats(c, R));
        failed = !buf;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < a->B * c->Sn * a->Hk; r++)
            if (buf) kv_append_fast(c, buf, r / (c->Sn * a->Hk), (r / a->Hk) % c->Sn, r % a->Hk);
        /* (implicit barrier: the appended rows are in the cache before any item reads them) */
        kv_scratch w = {0};
        if (buf) kv_scratch_init(&w, buf, c, R);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            if (!buf) continue;
            int64_t b = it / (a->Hk * ns), hk = (it / ns) % a->Hk, s = it % ns, L, P, sk;
            cf_kv_seq(c, b, &L, &P, &sk);
            kv_item(c, &w, b, hk, sk * s / ns, sk * (s + 1) / ns);
            float* dst = parts + it * R * (Dv + 2);
            memcpy(dst, w.acc, sizeof(float) * (size_t)(R * Dv));
            memcpy(dst + R * Dv, w.m, sizeof(float) * (size_t)R);
            memcpy(dst + R * Dv + R, w.l, sizeof(float) * (size_t)R);
        }
        /* merge the splits of each row by their LSE and write out / lse */
#pragma omp for schedule(static)
        for (int64_t row = 0; row < a->B * a->Hk * R; row++) {
            if (!buf) continue;
            int64_t b = row / (a->Hk * R), hk = (row / R) % a->Hk, r = row % R;
            int64_t g = r / a->Sq, i = r % a->Sq, h = hk * G + g;
            const float* base = parts + (b * a->Hk + hk) * ns * R * (Dv + 2);
            float M = -INFINITY, l = 0.0f;
            for (int64_t s = 0; s < ns; s++) {
                float m = base[s * R * (Dv + 2) + R * Dv + r];
                M = m > M ? m : M;
            }
            float* o = buf;
            for (int64_t d = 0; d < Dv; d++)
                o[d] = 0.0f;
            for (int64_t s = 0; s < ns && M != -INFINITY; s++) {
                const float* ps = base + s * R * (Dv + 2);
                float m = ps[R * Dv + r];
                if (m == -INFINITY) continue;
                float f = expf(m - M);
                l += f * ps[R * Dv + R + r];
#pragma omp simd
                for (int64_t d = 0; d < Dv; d++)
                    o[d] += f * ps[r * Dv + d];
            }
            float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma omp simd
            for (int64_t d = 0; d < Dv; d++)
                o[d] *= inv;
            st_row(at(&a->out, b * a->out.stride[0] + i * a->out.stride[1] + h * a->out.stride[2]),
                   a->dtype, o, Dv);
            if (a->lse.data)
                ((float*)a->lse
                     .data)[b * a->lse.stride[0] + h * a->lse.stride[1] + i * a->lse.stride[2]] =
                    l > 0.0f ? M + logf(l) : -INFINITY;
        }
        free(buf);
    }
    free(parts);
    CFLASH_RETURN_IF(failed, CFLASH_ERR_OUT_OF_MEMORY, "kvcache_fwd: out of memory for scratch");
    return CFLASH_OK;
}
