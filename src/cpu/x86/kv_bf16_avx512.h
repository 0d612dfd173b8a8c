/* KV-cache bf16 score kernel on AVX-512 with AVX512-BF16 (included by src/cpu/kvcache_fast.h in
 * the cpu-avx512 build only, after ops_avx512.c's kv_dots_bf16): four keys by four query rows
 * per pass (16 independent vdpbf16ps chains, each loaded key feeding four), each row's four sums
 * reduced by one tree and stored as one 4-float vector (no per-score scalar stores).
 * P.V: see kv_pv_dp below.
 * Softmax of a fully visible 16-key block: the block max is reduced only when some score exceeds
 * the running max (rare after the first blocks), and the sum of P is kept as 16 lanes per row,
 * reduced once per item. */

/* [sum a0, sum a1, sum a2, sum a3] (the tree of reduce4, kept in a register). */
static inline __m128 kv_sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 u = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
    __m256 v = _mm256_add_ps(_mm512_castps512_ps256(u),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

/* Whether kv_dots_bf16x4 serves a block: bf16 keys, R rows, head dim D. */
static inline int kv_dots_x4_ok(cf_dtype dt, int64_t R, int64_t D) {
    return dt == CF_BF16 && cf_cpu()->avx512bf16 && D % 32 == 0 && R % 4 == 0 && R * D <= 256 * 32;
}

/* s[r * KV_KB + t] = q_r . k_t (q exactly bf16, as for kv_dots_bf16), keys in fours. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_dots_bf16x4(const float* restrict q, int64_t R, int64_t D, const void* const* rows, int64_t nb,
               float* restrict s) {
    __m512i qb[256]; /* R * D / 32 <= 256 */
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d += 32)
            qb[(r * D + d) / 32] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(q + r * D + d + 16),
                                                                _mm512_loadu_ps(q + r * D + d));
    const int64_t nd = D / 32;
    int64_t t = 0;
    for (; t + 4 <= nb; t += 4) {
        const uint16_t *k0 = rows[t], *k1 = rows[t + 1], *k2 = rows[t + 2], *k3 = rows[t + 3];
        if (t + 8 <= nb) /* the next four keys into L1 (the block is already in L2) */
            for (int64_t u = t + 4; u < t + 8; u++)
                for (int64_t o = 0; o < D; o += 32)
                    _mm_prefetch((const char*)((const uint16_t*)rows[u] + o), _MM_HINT_T0);
        for (int64_t r = 0; r < R; r += 4) {
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
            __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
            const __m512i* qr = qb + r * nd;
            for (int64_t c = 0; c < nd; c++) {
                __m512bh x0 = (__m512bh)_mm512_loadu_si512(k0 + 32 * c),
                         x1 = (__m512bh)_mm512_loadu_si512(k1 + 32 * c),
                         x2 = (__m512bh)_mm512_loadu_si512(k2 + 32 * c),
                         x3 = (__m512bh)_mm512_loadu_si512(k3 + 32 * c);
                __m512bh q0 = (__m512bh)qr[c];
                a00 = _mm512_dpbf16_ps(a00, q0, x0), a01 = _mm512_dpbf16_ps(a01, q0, x1);
                a02 = _mm512_dpbf16_ps(a02, q0, x2), a03 = _mm512_dpbf16_ps(a03, q0, x3);
                __m512bh q1 = (__m512bh)qr[nd + c];
                a10 = _mm512_dpbf16_ps(a10, q1, x0), a11 = _mm512_dpbf16_ps(a11, q1, x1);
                a12 = _mm512_dpbf16_ps(a12, q1, x2), a13 = _mm512_dpbf16_ps(a13, q1, x3);
                __m512bh q2 = (__m512bh)qr[2 * nd + c];
                a20 = _mm512_dpbf16_ps(a20, q2, x0), a21 = _mm512_dpbf16_ps(a21, q2, x1);
                a22 = _mm512_dpbf16_ps(a22, q2, x2), a23 = _mm512_dpbf16_ps(a23, q2, x3);
                __m512bh q3 = (__m512bh)qr[3 * nd + c];
                a30 = _mm512_dpbf16_ps(a30, q3, x0), a31 = _mm512_dpbf16_ps(a31, q3, x1);
                a32 = _mm512_dpbf16_ps(a32, q3, x2), a33 = _mm512_dpbf16_ps(a33, q3, x3);
            }
            float* o = s + r * KV_KB + t;
            _mm_storeu_ps(o, kv_sum4(a00, a01, a02, a03));
            _mm_storeu_ps(o + KV_KB, kv_sum4(a10, a11, a12, a13));
            _mm_storeu_ps(o + 2 * KV_KB, kv_sum4(a20, a21, a22, a23));
            _mm_storeu_ps(o + 3 * KV_KB, kv_sum4(a30, a31, a32, a33));
        }
    }
    if (t < nb) kv_dots_bf16(q, R, D, rows + t, nb - t, s + t);
}

/* The sum of the 16 lane partials of a row's l. */
static inline float kv_sum16(const float* lv) {
    return _mm512_reduce_add_ps(_mm512_loadu_ps(lv));
}

/* One row of a fully visible 16-key block (no softcap, no ALiBi): s = scale * s; if some score
 * exceeds the running max m, m moves and l, lv and acc (Dv) are rescaled; then s = exp(s - m)
 * (the polynomial of exp_row) and lv += s. */
static inline void kv_softmax16(float* s, float scale, float* m, float* l, float* lv, float* acc,
                                int64_t Dv) {
    __m512 x = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_loadu_ps(s));
    if (_mm512_cmp_ps_mask(x, _mm512_set1_ps(*m), _CMP_GT_OQ)) {
        const float mx = _mm512_reduce_max_ps(x), alpha = fexp(*m - mx);
        *m = mx;
        *l *= alpha;
        const __m512 va = _mm512_set1_ps(alpha);
        _mm512_storeu_ps(lv, _mm512_mul_ps(va, _mm512_loadu_ps(lv)));
        int64_t d = 0;
        for (; d + 16 <= Dv; d += 16)
            _mm512_storeu_ps(acc + d, _mm512_mul_ps(va, _mm512_loadu_ps(acc + d)));
        for (; d < Dv; d++)
            acc[d] *= alpha;
    }
    const __m512 l2e = _mm512_set1_ps(1.44269504088896341f), c1 = _mm512_set1_ps(0.693359375f),
                 c2 = _mm512_set1_ps(-2.12194440e-4f), lo = _mm512_set1_ps(-87.0f);
    x = _mm512_sub_ps(x, _mm512_set1_ps(*m));
    const __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ); /* x >= -87 or NaN */
    x = _mm512_max_ps(lo, x);                                      /* a NaN x passes */
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, l2e), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(k, c2, _mm512_fnmadd_ps(k, c1, x));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    p = _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, k));
    _mm512_storeu_ps(s, p);
    _mm512_storeu_ps(lv, _mm512_add_ps(_mm512_loadu_ps(lv), p));
}

/* ---- P.V with vdpbf16ps: P rounded to bf16 (as the naive bf16 computation materializes it),
 * two keys per instruction. A pair of V rows is interleaved with vpunpck{l,h}wd, so acc is kept
 * permuted within each 32-element chunk (lanes 4i..4i+3 of the low half: elements 8i..8i+3, of
 * the high half: 8i+4..8i+7) and put back in order once per item by kv_pv_unpermute. ---- */

/* Whether kv_pv_dp (and its permuted acc layout) serves R rows, V of dtype dt and width Dv. */
static inline int kv_pv_dp_ok(cf_dtype dt, int64_t R, int64_t Dv) {
    return dt == CF_BF16 && cf_cpu()->avx512bf16 && Dv % 64 == 0 && R <= 64;
}

#define KV_DP4(A0, A1, A2, A3, X)                                                                  \
    A0 = _mm512_dpbf16_ps(A0, (__m512bh)(X), (__m512bh)p0);                                        \
    A1 = _mm512_dpbf16_ps(A1, (__m512bh)(X), (__m512bh)p1);                                        \
    A2 = _mm512_dpbf16_ps(A2, (__m512bh)(X), (__m512bh)p2);                                        \
    A3 = _mm512_dpbf16_ps(A3, (__m512bh)(X), (__m512bh)p3)

/* acc[r] += sum_t bf16(p[r * KV_KB + t]) v_t (acc permuted), keys in pairs, rows in fours. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_pv_dp(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
         const float* restrict p) {
    uint32_t pp[64 * KV_KB / 2]; /* row r, pair k: bf16(p[2k]) | bf16(p[2k + 1]) << 16 */
    const int64_t np = (nb + 1) / 2, Rd = R;
    const __mmask16 live = nb >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nb) - 1u);
    for (int64_t r = 0; r < Rd; r++)
        _mm256_storeu_si256(
            (__m256i*)(pp + r * (KV_KB / 2)),
            (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(live, p + r * KV_KB)));
    const uint16_t zero[64] = {0};
    for (int64_t d = 0; d < Dv; d += 64) {
        int64_t r = 0;
        for (; r + 4 <= Rd; r += 4) {
            float* o = acc + r * Dv + d;
            const uint32_t* pr = pp + r * (KV_KB / 2);
            __m512 a00 = _mm512_loadu_ps(o), a01 = _mm512_loadu_ps(o + 16),
                   a02 = _mm512_loadu_ps(o + 32), a03 = _mm512_loadu_ps(o + 48);
            __m512 a10 = _mm512_loadu_ps(o + Dv), a11 = _mm512_loadu_ps(o + Dv + 16),
                   a12 = _mm512_loadu_ps(o + Dv + 32), a13 = _mm512_loadu_ps(o + Dv + 48);
            __m512 a20 = _mm512_loadu_ps(o + 2 * Dv), a21 = _mm512_loadu_ps(o + 2 * Dv + 16),
                   a22 = _mm512_loadu_ps(o + 2 * Dv + 32), a23 = _mm512_loadu_ps(o + 2 * Dv + 48);
            __m512 a30 = _mm512_loadu_ps(o + 3 * Dv), a31 = _mm512_loadu_ps(o + 3 * Dv + 16),
                   a32 = _mm512_loadu_ps(o + 3 * Dv + 32), a33 = _mm512_loadu_ps(o + 3 * Dv + 48);
            for (int64_t k = 0; k < np; k++) {
                const uint16_t* v0 = (const uint16_t*)rows[2 * k] + d;
                const uint16_t* v1 = 2 * k + 1 < nb ? (const uint16_t*)rows[2 * k + 1] + d : zero;
                const __m512i x0 = _mm512_loadu_si512(v0), y0 = _mm512_loadu_si512(v1);
                const __m512i x1 = _mm512_loadu_si512(v0 + 32), y1 = _mm512_loadu_si512(v1 + 32);
                const __m512i l0 = _mm512_unpacklo_epi16(x0, y0),
                              h0 = _mm512_unpackhi_epi16(x0, y0);
                const __m512i l1 = _mm512_unpacklo_epi16(x1, y1),
                              h1 = _mm512_unpackhi_epi16(x1, y1);
                const __m512i p0 = _mm512_set1_epi32((int)pr[k]),
                              p1 = _mm512_set1_epi32((int)pr[KV_KB / 2 + k]),
                              p2 = _mm512_set1_epi32((int)pr[KV_KB + k]),
                              p3 = _mm512_set1_epi32((int)pr[3 * KV_KB / 2 + k]);
                KV_DP4(a00, a10, a20, a30, l0);
                KV_DP4(a01, a11, a21, a31, h0);
                KV_DP4(a02, a12, a22, a32, l1);
                KV_DP4(a03, a13, a23, a33, h1);
            }
            _mm512_storeu_ps(o, a00), _mm512_storeu_ps(o + 16, a01);
            _mm512_storeu_ps(o + 32, a02), _mm512_storeu_ps(o + 48, a03);
            _mm512_storeu_ps(o + Dv, a10), _mm512_storeu_ps(o + Dv + 16, a11);
            _mm512_storeu_ps(o + Dv + 32, a12), _mm512_storeu_ps(o + Dv + 48, a13);
            _mm512_storeu_ps(o + 2 * Dv, a20), _mm512_storeu_ps(o + 2 * Dv + 16, a21);
            _mm512_storeu_ps(o + 2 * Dv + 32, a22), _mm512_storeu_ps(o + 2 * Dv + 48, a23);
            _mm512_storeu_ps(o + 3 * Dv, a30), _mm512_storeu_ps(o + 3 * Dv + 16, a31);
            _mm512_storeu_ps(o + 3 * Dv + 32, a32), _mm512_storeu_ps(o + 3 * Dv + 48, a33);
        }
        for (; r < Rd; r++) {
            float* o = acc + r * Dv + d;
            const uint32_t* pr = pp + r * (KV_KB / 2);
            __m512 a0 = _mm512_loadu_ps(o), a1 = _mm512_loadu_ps(o + 16),
                   a2 = _mm512_loadu_ps(o + 32), a3 = _mm512_loadu_ps(o + 48);
            for (int64_t k = 0; k < np; k++) {
                const uint16_t* v0 = (const uint16_t*)rows[2 * k] + d;
                const uint16_t* v1 = 2 * k + 1 < nb ? (const uint16_t*)rows[2 * k + 1] + d : zero;
                const __m512i x0 = _mm512_loadu_si512(v0), y0 = _mm512_loadu_si512(v1);
                const __m512i x1 = _mm512_loadu_si512(v0 + 32), y1 = _mm512_loadu_si512(v1 + 32);
                const __m512bh pv = (__m512bh)_mm512_set1_epi32((int)pr[k]);
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_unpacklo_epi16(x0, y0), pv);
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_unpackhi_epi16(x0, y0), pv);
                a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_unpacklo_epi16(x1, y1), pv);
                a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_unpackhi_epi16(x1, y1), pv);
            }
            _mm512_storeu_ps(o, a0), _mm512_storeu_ps(o + 16, a1);
            _mm512_storeu_ps(o + 32, a2), _mm512_storeu_ps(o + 48, a3);
        }
    }
}
#undef KV_DP4

/* The R rows of acc (width Dv) from kv_pv_dp's permuted layout back to element order. */
static void kv_pv_unpermute(float* acc, int64_t R, int64_t Dv) {
    const __m512i i0 = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i i1 =
        _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
    for (int64_t i = 0; i < R * Dv; i += 32) {
        __m512 lo = _mm512_loadu_ps(acc + i), hi = _mm512_loadu_ps(acc + i + 16);
        _mm512_storeu_ps(acc + i, _mm512_permutex2var_ps(lo, i0, hi));
        _mm512_storeu_ps(acc + i + 16, _mm512_permutex2var_ps(lo, i1, hi));
    }
}
