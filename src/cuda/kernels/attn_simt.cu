/* cuda-simt attention: fp32 math on CUDA cores, any arch NVRTC can target, fp32/fp16/bf16, every
 * feature (causal, window, softcap, ALiBi, dropout, GQA, varlen, Dv != D), head dims up to CF_DMAX.
 * Kernels (blocks of CF_WARPS warps, one warp per row):
 *   cf_attn_fwd_simt        one warp per query row; lane l scores key j0 + l of a shared K tile,
 *                           online softmax across tiles, lanes own output dims d = lane + 32 t.
 *   cf_attn_bwd_delta_simt  delta_i = rowsum(dout_i * out_i).
 *   cf_attn_bwd_dq_simt     one warp per query row: dq_i = sum_j ds_ij k_j (K, V tiles shared).
 *   cf_attn_bwd_dkdv_simt   one warp per key row j of KV head hk: dk_j, dv_j summed over the query
 *                           heads of the group and the queries that see j (Q, dO tiles shared).
 * No atomics anywhere: the backward is deterministic whatever `deterministic` says.
 * Compiled per variant with -DCF_DTYPE=0|1|2 (fp32|fp16|bf16) -DCF_DMAX=64|128|256. */
#include "cf_common.cuh"

#ifndef CF_DMAX
#define CF_DMAX 128
#endif
#define CF_WARPS 4
#define CF_NPL (CF_DMAX / 32) /* output elements per lane */

/* ---- Forward ------------------------------------------------------------------------------ */
/* smem: Ks[tile][D + 1] then qs[CF_WARPS][CF_DMAX] (floats). */
extern "C" __global__ void __launch_bounds__(CF_WARPS * 32) cf_attn_fwd_simt(cf_attn_args a) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const cf_i64 b = blockIdx.z, h = blockIdx.y, hk = h / (a.H / a.Hk);
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 row0 = (cf_i64)blockIdx.x * CF_WARPS;
    if (row0 >= sq) return; /* uniform over the block */
    const cf_i64 i = row0 + w;
    const bool active = i < sq;
    const int T = a.tile, KS = (int)a.D + 1;
    float* Ks = smem;
    float* qs = smem + T * KS + w * CF_DMAX;
    const cf_i64 last = (row0 + CF_WARPS < sq ? row0 + CF_WARPS : sq) - 1;
    cf_i64 blo, bhi, tmp, lo = 0, hi = 0;
    cf_key_range(&a, row0, sq, sk, &blo, &tmp);
    cf_key_range(&a, last, sq, sk, &tmp, &bhi);
    if (active) cf_key_range(&a, i, sq, sk, &lo, &hi);
    const float slope = cf_slope(&a, b, h);

    if (active) {
        const cf_i64 qb = b * a.q_sb + (q0 + i) * a.q_ss + h * a.q_sh;
        for (int d = lane; d < a.D; d += 32)
            qs[d] = cf_ld(a.q, qb + d);
    }
    float m = CF_NEG_INF, l = 0.0f, acc[CF_NPL];
#pragma unroll
    for (int t = 0; t < CF_NPL; t++)
        acc[t] = 0.0f;

    for (cf_i64 j0 = blo; j0 < bhi; j0 += T) {
        const int n = (int)(bhi - j0 < T ? bhi - j0 : T);
        __syncthreads(); /* previous tile consumed; qs written */
        for (int e = threadIdx.x; e < n * a.D; e += CF_WARPS * 32) {
            const int r = e / (int)a.D, d = e - r * (int)a.D;
            Ks[r * KS + d] = cf_ld(a.k, b * a.k_sb + (k0 + j0 + r) * a.k_ss + hk * a.k_sh + d);
        }
        __syncthreads();
        if (!active) continue; /* warp-uniform */
        const cf_i64 j = j0 + lane;
        float s = CF_NEG_INF;
        if (lane < n && j >= lo && j < hi) {
            float dot = 0.0f;
            for (int d = 0; d < a.D; d++)
                dot += qs[d] * Ks[lane * KS + d];
            float t;
            s = cf_score(&a, a.scale * dot, slope, i, j, sq, sk, &t);
        }
        const float mnew = fmaxf(m, cf_warp_max(s));
        if (mnew == CF_NEG_INF) continue; /* nothing visible yet */
        const float corr = expf(m - mnew);
        const float p = s == CF_NEG_INF ? 0.0f : expf(s - mnew);
        l = l * corr + cf_warp_sum(p);
        m = mnew;
        float pd = p;
        if (p != 0.0f && !cf_dropout_keep_word(&a, b, h, i, j)) pd = 0.0f;
#pragma unroll
        for (int t = 0; t < CF_NPL; t++)
            acc[t] *= corr;
        for (int jj = 0; jj < n; jj++) {
            const float pj = __shfl_sync(CF_FULL, pd, jj);
            if (pj == 0.0f) continue; /* uniform: same value in every lane */
            const cf_i64 vb = b * a.v_sb + (k0 + j0 + jj) * a.v_ss + hk * a.v_sh;
#pragma unroll
            for (int t = 0; t < CF_NPL; t++) {
                const int d = lane + 32 * t;
                if (d < a.Dv) acc[t] += pj * cf_ld(a.v, vb + d);
            }
        }
    }
    if (!active) return;
    const float inv = l > 0.0f ? a.keep_scale / l : 0.0f;
    const cf_i64 ob = b * a.o_sb + (q0 + i) * a.o_ss + h * a.o_sh;
#pragma unroll
    for (int t = 0; t < CF_NPL; t++) {
        const int d = lane + 32 * t;
        if (d < a.Dv) cf_st(a.out, ob + d, acc[t] * inv);
    }
    if (a.lse && lane == 0)
        a.lse[b * a.lse_sb + h * a.lse_sh + (q0 + i) * a.lse_ss] =
            l > 0.0f ? m + logf(l) : CF_NEG_INF;
}

/* ---- Backward: delta ---------------------------------------------------------------------- */
extern "C" __global__ void __launch_bounds__(CF_WARPS * 32) cf_attn_bwd_delta_simt(cf_attn_args a) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const cf_i64 b = blockIdx.z, h = blockIdx.y;
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 i = (cf_i64)blockIdx.x * CF_WARPS + w;
    if (i >= sq) return;
    const cf_i64 ob = b * a.o_sb + (q0 + i) * a.o_ss + h * a.o_sh;
    const cf_i64 gb = b * a.do_sb + (q0 + i) * a.do_ss + h * a.do_sh;
    float s = 0.0f;
    for (int d = lane; d < a.Dv; d += 32)
        s += cf_ld(a.out, ob + d) * cf_ld(a.dout, gb + d);
    s = cf_warp_sum(s);
    if (lane == 0) a.delta[(b * a.H + h) * a.Sq + i] = s;
}

/* ---- Backward: dq ------------------------------------------------------------------------- */
/* smem: Ks[tile][D + 1], Vs[tile][Dv + 1], qs[CF_WARPS][CF_DMAX], gs[CF_WARPS][CF_DMAX]. */
extern "C" __global__ void __launch_bounds__(CF_WARPS * 32) cf_attn_bwd_dq_simt(cf_attn_args a) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const cf_i64 b = blockIdx.z, h = blockIdx.y, hk = h / (a.H / a.Hk);
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 row0 = (cf_i64)blockIdx.x * CF_WARPS;
    if (row0 >= sq) return;
    const cf_i64 i = row0 + w;
    const int T = a.tile, KS = (int)a.D + 1, VS = (int)a.Dv + 1;
    float* Ks = smem;
    float* Vs = Ks + T * KS;
    float* qs = Vs + T * VS + w * CF_DMAX;
    float* gs = Vs + T * VS + CF_WARPS * CF_DMAX + w * CF_DMAX;
    const cf_i64 last = (row0 + CF_WARPS < sq ? row0 + CF_WARPS : sq) - 1;
    cf_i64 blo, bhi, tmp, lo = 0, hi = 0;
    cf_key_range(&a, row0, sq, sk, &blo, &tmp);
    cf_key_range(&a, last, sq, sk, &tmp, &bhi);
    float lse = CF_NEG_INF, delta = 0.0f;
    if (i < sq) {
        lse = a.lse[b * a.lse_sb + h * a.lse_sh + (q0 + i) * a.lse_ss];
        delta = a.delta[(b * a.H + h) * a.Sq + i];
        cf_key_range(&a, i, sq, sk, &lo, &hi);
    }
    const bool active = i < sq && lse != CF_NEG_INF; /* a row that saw no key has dq = 0 */
    const float slope = cf_slope(&a, b, h);
    if (active) {
        const cf_i64 qb = b * a.q_sb + (q0 + i) * a.q_ss + h * a.q_sh;
        const cf_i64 gb = b * a.do_sb + (q0 + i) * a.do_ss + h * a.do_sh;
        for (int d = lane; d < a.D; d += 32)
            qs[d] = cf_ld(a.q, qb + d);
        for (int d = lane; d < a.Dv; d += 32)
            gs[d] = cf_ld(a.dout, gb + d);
    }
    float acc[CF_NPL];
#pragma unroll
    for (int t = 0; t < CF_NPL; t++)
        acc[t] = 0.0f;

    for (cf_i64 j0 = blo; j0 < bhi; j0 += T) {
        const int n = (int)(bhi - j0 < T ? bhi - j0 : T);
        __syncthreads();
        for (int e = threadIdx.x; e < n * a.D; e += CF_WARPS * 32) {
            const int r = e / (int)a.D, d = e - r * (int)a.D;
            Ks[r * KS + d] = cf_ld(a.k, b * a.k_sb + (k0 + j0 + r) * a.k_ss + hk * a.k_sh + d);
        }
        for (int e = threadIdx.x; e < n * a.Dv; e += CF_WARPS * 32) {
            const int r = e / (int)a.Dv, d = e - r * (int)a.Dv;
            Vs[r * VS + d] = cf_ld(a.v, b * a.v_sb + (k0 + j0 + r) * a.v_ss + hk * a.v_sh + d);
        }
        __syncthreads();
        if (!active) continue;
        const cf_i64 j = j0 + lane;
        float ds = 0.0f;
        if (lane < n && j >= lo && j < hi) {
            float dot = 0.0f, dpk = 0.0f, t;
            for (int d = 0; d < a.D; d++)
                dot += qs[d] * Ks[lane * KS + d];
            for (int d = 0; d < a.Dv; d++)
                dpk += gs[d] * Vs[lane * VS + d];
            const float s = cf_score(&a, a.scale * dot, slope, i, j, sq, sk, &t);
            const float p = expf(s - lse);
            const float dp = cf_dropout_keep_word(&a, b, h, i, j) ? dpk * a.keep_scale : 0.0f;
            ds = p * (dp - delta);
            if (a.softcap > 0.0f) ds *= 1.0f - t * t;
            ds *= a.scale;
        }
        for (int jj = 0; jj < n; jj++) {
            const float dj = __shfl_sync(CF_FULL, ds, jj);
            if (dj == 0.0f) continue;
#pragma unroll
            for (int t = 0; t < CF_NPL; t++) {
                const int d = lane + 32 * t;
                if (d < a.D) acc[t] += dj * Ks[jj * KS + d];
            }
        }
    }
    if (i >= sq) return;
    const cf_i64 qb = b * a.dq_sb + (q0 + i) * a.dq_ss + h * a.dq_sh;
#pragma unroll
    for (int t = 0; t < CF_NPL; t++) {
        const int d = lane + 32 * t;
        if (d < a.D) cf_st(a.dq, qb + d, acc[t]);
    }
}

/* ---- Backward: dk, dv --------------------------------------------------------------------- */
/* smem: Qs[tile][D + 1], Gs[tile][Dv + 1], lse[tile], delta[tile], ks[CF_WARPS][CF_DMAX],
 * vs[CF_WARPS][CF_DMAX]. */
extern "C" __global__ void __launch_bounds__(CF_WARPS * 32) cf_attn_bwd_dkdv_simt(cf_attn_args a) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const cf_i64 b = blockIdx.z, hk = blockIdx.y, group = a.H / a.Hk;
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 key0 = (cf_i64)blockIdx.x * CF_WARPS;
    if (key0 >= sk) return;
    const cf_i64 j = key0 + w;
    const bool active = j < sk;
    const int T = a.tile, QS = (int)a.D + 1, GS = (int)a.Dv + 1;
    float* Qs = smem;
    float* Gs = Qs + T * QS;
    float* Ls = Gs + T * GS;
    float* Ds = Ls + T;
    float* ks = Ds + T + w * CF_DMAX;
    float* vs = Ds + T + CF_WARPS * CF_DMAX + w * CF_DMAX;
    const cf_i64 lastk = (key0 + CF_WARPS < sk ? key0 + CF_WARPS : sk) - 1;
    cf_i64 ilo, ihi, tmp;
    cf_query_range(&a, key0, sq, sk, &ilo, &tmp);
    cf_query_range(&a, lastk, sq, sk, &tmp, &ihi);
    if (active) {
        const cf_i64 kb = b * a.k_sb + (k0 + j) * a.k_ss + hk * a.k_sh;
        const cf_i64 vb = b * a.v_sb + (k0 + j) * a.v_ss + hk * a.v_sh;
        for (int d = lane; d < a.D; d += 32)
            ks[d] = cf_ld(a.k, kb + d);
        for (int d = lane; d < a.Dv; d += 32)
            vs[d] = cf_ld(a.v, vb + d);
    }
    float dk[CF_NPL], dv[CF_NPL];
#pragma unroll
    for (int t = 0; t < CF_NPL; t++)
        dk[t] = dv[t] = 0.0f;

    for (cf_i64 h = hk * group; h < (hk + 1) * group; h++) {
        const float slope = cf_slope(&a, b, h);
        for (cf_i64 i0 = ilo; i0 < ihi; i0 += T) {
            const int n = (int)(ihi - i0 < T ? ihi - i0 : T);
            __syncthreads();
            for (int e = threadIdx.x; e < n * a.D; e += CF_WARPS * 32) {
                const int r = e / (int)a.D, d = e - r * (int)a.D;
                Qs[r * QS + d] = cf_ld(a.q, b * a.q_sb + (q0 + i0 + r) * a.q_ss + h * a.q_sh + d);
            }
            for (int e = threadIdx.x; e < n * a.Dv; e += CF_WARPS * 32) {
                const int r = e / (int)a.Dv, d = e - r * (int)a.Dv;
                Gs[r * GS + d] =
                    cf_ld(a.dout, b * a.do_sb + (q0 + i0 + r) * a.do_ss + h * a.do_sh + d);
            }
            for (int r = threadIdx.x; r < n; r += CF_WARPS * 32) {
                Ls[r] = a.lse[b * a.lse_sb + h * a.lse_sh + (q0 + i0 + r) * a.lse_ss];
                Ds[r] = a.delta[(b * a.H + h) * a.Sq + i0 + r];
            }
            __syncthreads();
            if (!active) continue;
            const cf_i64 i = i0 + lane;
            float pk = 0.0f, ds = 0.0f;
            if (lane < n && Ls[lane] != CF_NEG_INF) {
                cf_i64 lo, hi;
                cf_key_range(&a, i, sq, sk, &lo, &hi);
                if (j >= lo && j < hi) {
                    float dot = 0.0f, dpk = 0.0f, t;
                    for (int d = 0; d < a.D; d++)
                        dot += Qs[lane * QS + d] * ks[d];
                    for (int d = 0; d < a.Dv; d++)
                        dpk += Gs[lane * GS + d] * vs[d];
                    const float s = cf_score(&a, a.scale * dot, slope, i, j, sq, sk, &t);
                    const float p = expf(s - Ls[lane]);
                    const int keep = cf_dropout_keep_word(&a, b, h, i, j);
                    pk = keep ? p * a.keep_scale : 0.0f;
                    const float dp = keep ? dpk * a.keep_scale : 0.0f;
                    ds = p * (dp - Ds[lane]);
                    if (a.softcap > 0.0f) ds *= 1.0f - t * t;
                    ds *= a.scale;
                }
            }
            for (int ii = 0; ii < n; ii++) {
                const float pi = __shfl_sync(CF_FULL, pk, ii);
                const float di = __shfl_sync(CF_FULL, ds, ii);
                if (pi != 0.0f) {
#pragma unroll
                    for (int t = 0; t < CF_NPL; t++) {
                        const int d = lane + 32 * t;
                        if (d < a.Dv) dv[t] += pi * Gs[ii * GS + d];
                    }
                }
                if (di != 0.0f) {
#pragma unroll
                    for (int t = 0; t < CF_NPL; t++) {
                        const int d = lane + 32 * t;
                        if (d < a.D) dk[t] += di * Qs[ii * QS + d];
                    }
                }
            }
        }
    }
    if (!active) return;
    const cf_i64 kb = b * a.dk_sb + (k0 + j) * a.dk_ss + hk * a.dk_sh;
    const cf_i64 vb = b * a.dv_sb + (k0 + j) * a.dv_ss + hk * a.dv_sh;
#pragma unroll
    for (int t = 0; t < CF_NPL; t++) {
        const int d = lane + 32 * t;
        if (d < a.D) cf_st(a.dk, kb + d, dk[t]);
        if (d < a.Dv) cf_st(a.dv, vb + d, dv[t]);
    }
}

/* ---- KV cache: append, then attention with split-KV --------------------------------------- */

/* Element offset of cache row (position t, KV head hk) of batch b (paged or not). */
CF_DEV cf_i64 cf_kv_row(const cf_kv_args& k, cf_i64 s0, cf_i64 s1, cf_i64 s2, cf_i64 b, cf_i64 t,
                        cf_i64 hk) {
    cf_i64 page, row;
    if (k.block_table) {
        page = k.block_table[b * k.bt_stride + t / k.page_size];
        row = t % k.page_size;
    } else {
        page = k.batch_idx ? k.batch_idx[b] : b;
        row = t;
    }
    return page * s0 + row * s1 + hk * s2;
}

/* Old length L, left pad P, keys sk = L + Sn - P of batch b (src/core/ops_call.h: cf_kv_seq). */
CF_DEV void cf_kv_seq(const cf_kv_args& k, cf_i64 b, cf_i64* L, cf_i64* P, cf_i64* sk) {
    *L = k.seqlens ? k.seqlens[b] : k.seqlen;
    *P = k.leftpad ? k.leftpad[b] : 0;
    *sk = *L + k.Sn - *P;
}

/* Row src (D values at element offset si) rotated at position pos into dst (shared), in fp32. */
CF_DEV void cf_kv_rotate_into(const cf_kv_args& k, float* dst, const void* src, cf_i64 si,
                              cf_i64 pos, int lane) {
    const int D = (int)k.a.D;
    for (int d = lane; d < D; d += 32)
        dst[d] = cf_ld(src, si + d);
    __syncwarp();
    if (!k.cos) return;
    const cf_i64 half = k.rd / 2;
    for (cf_i64 i = lane; i < half; i += 32) {
        const cf_i64 ia = k.interleaved ? 2 * i : i, ib = k.interleaved ? 2 * i + 1 : i + half;
        const float co = cf_ldt(k.cos, k.cs_dt, pos * k.cos_s0 + i);
        const float sn = cf_ldt(k.sin, k.cs_dt, pos * k.sin_s0 + i);
        const float x0 = dst[ia], x1 = dst[ib];
        dst[ia] = x0 * co - x1 * sn;
        dst[ib] = x0 * sn + x1 * co;
    }
    __syncwarp();
}

/* One warp per new row (b, n, hk): rotated k and v into the cache at position L + n.
 * smem: CF_WARPS * CF_DMAX floats. */
extern "C" __global__ void __launch_bounds__(CF_WARPS * 32) cf_kv_append_simt(cf_kv_args k) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const cf_i64 r = (cf_i64)blockIdx.x * CF_WARPS + w; /* over B * Sn * Hk */
    if (r >= k.a.B * k.Sn * k.a.Hk) return;
    const cf_i64 b = r / (k.Sn * k.a.Hk), n = (r / k.a.Hk) % k.Sn, hk = r % k.a.Hk;
    cf_i64 L, P, sk;
    cf_kv_seq(k, b, &L, &P, &sk);
    float* buf = smem + w * CF_DMAX;
    cf_kv_rotate_into(k, buf, k.knew, b * k.kn_sb + n * k.kn_ss + hk * k.kn_sh, L + n, lane);
    const cf_i64 ko = cf_kv_row(k, k.kc_s0, k.kc_s1, k.kc_s2, b, L + n, hk);
    const cf_i64 vo = cf_kv_row(k, k.vc_s0, k.vc_s1, k.vc_s2, b, L + n, hk);
    const cf_i64 vi = b * k.vn_sb + n * k.vn_ss + hk * k.vn_sh;
    for (int d = lane; d < k.a.D; d += 32)
        cf_st(k.kc, ko + d, buf[d]);
    for (int d = lane; d < k.a.Dv; d += 32)
        cf_st(k.vc, vo + d, cf_ld(k.vnew, vi + d));
}

/* One warp per query row, keys of split blockIdx.z % splits; as cf_attn_fwd_simt otherwise.
 * smem: Ks[tile][D + 1], qs[CF_WARPS][CF_DMAX]. */
extern "C" __global__ void __launch_bounds__(CF_WARPS * 32) cf_kv_attn_simt(cf_kv_args k) {
    extern __shared__ float smem[];
    const cf_attn_args& a = k.a;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const cf_i64 b = blockIdx.z / k.splits, sp = blockIdx.z % k.splits, h = blockIdx.y;
    const cf_i64 hk = h / (a.H / a.Hk), sq = a.Sq;
    cf_i64 L, P, sk;
    cf_kv_seq(k, b, &L, &P, &sk);
    const cf_i64 row0 = (cf_i64)blockIdx.x * CF_WARPS;
    if (row0 >= sq) return;
    const cf_i64 i = row0 + w;
    const bool active = i < sq;
    const int T = a.tile, KS = (int)a.D + 1;
    float* Ks = smem;
    float* qs = smem + T * KS + w * CF_DMAX;
    const cf_i64 last = (row0 + CF_WARPS < sq ? row0 + CF_WARPS : sq) - 1;
    cf_i64 blo, bhi, tmp, lo = 0, hi = 0;
    cf_key_range(&a, row0, sq, sk, &blo, &tmp);
    cf_key_range(&a, last, sq, sk, &tmp, &bhi);
    const cf_i64 c0 = sp * k.chunk, c1 = c0 + k.chunk; /* this split's keys */
    if (blo < c0) blo = c0;
    if (bhi > c1) bhi = c1;
    if (active) {
        cf_key_range(&a, i, sq, sk, &lo, &hi);
        if (lo < c0) lo = c0;
        if (hi > c1) hi = c1;
        const cf_i64 pos = k.qpos_shift ? L + i : L;
        cf_kv_rotate_into(k, qs, a.q, b * a.q_sb + i * a.q_ss + h * a.q_sh, pos, lane);
        if (k.cos)
            for (int d = lane; d < a.D; d += 32)
                qs[d] = cf_round(qs[d]);
    }
    const float slope = cf_slope(&a, b, h);
    float m = CF_NEG_INF, l = 0.0f, acc[CF_NPL];
#pragma unroll
    for (int t = 0; t < CF_NPL; t++)
        acc[t] = 0.0f;

    for (cf_i64 j0 = blo; j0 < bhi; j0 += T) {
        const int n = (int)(bhi - j0 < T ? bhi - j0 : T);
        __syncthreads();
        for (int e = threadIdx.x; e < n * a.D; e += CF_WARPS * 32) {
            const int r = e / (int)a.D, d = e - r * (int)a.D;
            Ks[r * KS + d] =
                cf_ld(k.kc, cf_kv_row(k, k.kc_s0, k.kc_s1, k.kc_s2, b, P + j0 + r, hk) + d);
        }
        __syncthreads();
        if (!active) continue;
        const cf_i64 j = j0 + lane;
        float s = CF_NEG_INF;
        if (lane < n && j >= lo && j < hi) {
            float dot = 0.0f, t;
            for (int d = 0; d < a.D; d++)
                dot += qs[d] * Ks[lane * KS + d];
            s = cf_score(&a, a.scale * dot, slope, i, j, sq, sk, &t);
        }
        const float mnew = fmaxf(m, cf_warp_max(s));
        if (mnew == CF_NEG_INF) continue;
        const float corr = expf(m - mnew);
        const float p = s == CF_NEG_INF ? 0.0f : expf(s - mnew);
        l = l * corr + cf_warp_sum(p);
        m = mnew;
#pragma unroll
        for (int t = 0; t < CF_NPL; t++)
            acc[t] *= corr;
        for (int jj = 0; jj < n; jj++) {
            const float pj = __shfl_sync(CF_FULL, p, jj);
            if (pj == 0.0f) continue;
            const cf_i64 vb = cf_kv_row(k, k.vc_s0, k.vc_s1, k.vc_s2, b, P + j0 + jj, hk);
#pragma unroll
            for (int t = 0; t < CF_NPL; t++) {
                const int d = lane + 32 * t;
                if (d < a.Dv) acc[t] += pj * cf_ld(k.vc, vb + d);
            }
        }
    }
    if (!active) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float lse = l > 0.0f ? m + logf(l) : CF_NEG_INF;
    if (k.splits == 1) {
        const cf_i64 ob = b * a.o_sb + i * a.o_ss + h * a.o_sh;
#pragma unroll
        for (int t = 0; t < CF_NPL; t++) {
            const int d = lane + 32 * t;
            if (d < a.Dv) cf_st(a.out, ob + d, acc[t] * inv);
        }
        if (a.lse && lane == 0) a.lse[b * a.lse_sb + h * a.lse_sh + i * a.lse_ss] = lse;
    } else {
        float* o = k.opart + (((sp * a.B + b) * sq + i) * a.H + h) * a.Dv;
#pragma unroll
        for (int t = 0; t < CF_NPL; t++) {
            const int d = lane + 32 * t;
            if (d < a.Dv) o[d] = acc[t] * inv;
        }
        if (lane == 0) k.lpart[((sp * a.B + b) * a.H + h) * sq + i] = lse;
    }
}
