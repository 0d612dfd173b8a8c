/* cuda-mma attention, forward and (at the end of the file) backward: tensor cores (mma.sync
 * m16n8k16, fp32 accumulation), ldmatrix for the operand fragments, cp.async for global -> shared
 * copies; sm_80 and newer, fp16 and bf16, head dims multiple of 8 up to CF_DMAX, every mask
 * feature, dropout, GQA, varlen, Dv != D. One block = 4 warps = 64 query rows of one (b, h); each
 * warp owns 16 rows: S (16 x BK)  = Q_w (16 x D) K_tile^T           (A: ldmatrix.x4, B:
 * ldmatrix.x2) online softmax on the S fragments in registers (rows g and g + 8 of each thread) O
 * (16 x Dv) += P (16 x BK, the S fragments repacked to fp16/bf16) V_tile (ldmatrix.x2.trans)
 * Compiled per variant with -DCF_DTYPE=1|2 (fp16|bf16) -DCF_DMAX=64|128|256. */
#include "cf_common.cuh"

#ifndef CF_DMAX
#define CF_DMAX 128
#endif
#if CF_DTYPE != 1 && CF_DTYPE != 2
#error "attn_mma.cu: CF_DTYPE must be 1 (fp16) or 2 (bf16)"
#endif
#define BQ 64
#define BK (CF_DMAX >= 256 ? 32 : 64)
#define LDS (CF_DMAX + 8)  /* shared row stride in halves: 16-byte rows, no ldmatrix conflicts */
#define NT_S (BK / 8)      /* n-tiles of S */
#define NT_O (CF_DMAX / 8) /* n-tiles of O */

typedef unsigned short cf_h;

CF_DEV cf_u32 smem_u32(const void* p) {
    return (cf_u32)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared; src_bytes = 0 writes zeros (rows or dims out of range). */
CF_DEV void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}
CF_DEV void cp_async_wait_all() {
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::);
}

CF_DEV void ldmatrix_x4(cf_u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
CF_DEV void ldmatrix_x2(cf_u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p)));
}
CF_DEV void ldmatrix_x2_trans(cf_u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p)));
}

/* d += a (16x16, row) * b (16x8, col), fp32 accumulators. */
CF_DEV void mma16816(float* d, const cf_u32* a, const cf_u32* b) {
#if CF_DTYPE == 1
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#endif
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Two floats -> one register of two halves (lo in the low 16 bits). */
CF_DEV cf_u32 pack2(float lo, float hi) {
    cf_u32 r;
#if CF_DTYPE == 1
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

/* Copies rows [r0, r0 + nrows) of a (row stride rs, elements) matrix with `dims` valid columns
 * into a shared tile of `rows` rows x CF_DMAX columns (stride LDS); rows >= nrows and columns
 * >= dims become zeros. dims % 8 == 0. */
CF_DEV void load_tile(cf_h* dst, const cf_h* src, cf_i64 rs, int rows, int nrows, int dims) {
    const int chunks = CF_DMAX / 8;
    for (int e = threadIdx.x; e < rows * chunks; e += blockDim.x) {
        const int r = e / chunks, c = (e - r * chunks) * 8;
        const bool ok = r < nrows && c < dims;
        cp_async16(dst + r * LDS + c, ok ? (const void*)(src + r * rs + c) : (const void*)src,
                   ok ? 16 : 0);
    }
}

extern "C" __global__ void __launch_bounds__(128) cf_attn_fwd_mma(cf_attn_args a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    cf_h* Qs = (cf_h*)smem_raw;
    cf_h* Ks = Qs + BQ * LDS;
    cf_h* Vs = Ks + BK * LDS;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3;
    const cf_i64 b = blockIdx.z, h = blockIdx.y, hk = h / (a.H / a.Hk);
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 row0 = (cf_i64)blockIdx.x * BQ;
    if (row0 >= sq) return;
    const int D = (int)a.D, Dv = (int)a.Dv;
    const int Dp = (D + 15) & ~15; /* k extent of Q K^T, zero-padded */

    const cf_h* qg = (const cf_h*)a.q + b * a.q_sb + (q0 + row0) * a.q_ss + h * a.q_sh;
    const int nq = (int)(sq - row0 < BQ ? sq - row0 : BQ);
    load_tile(Qs, qg, a.q_ss, BQ, nq, D);
    cp_async_wait_all();

    const cf_i64 last = (row0 + BQ < sq ? row0 + BQ : sq) - 1;
    cf_i64 blo, bhi, tmp;
    cf_key_range(&a, row0, sq, sk, &blo, &tmp);
    cf_key_range(&a, last, sq, sk, &tmp, &bhi);

    /* This thread's two rows: i[0] = row g, i[1] = row g + 8 of the warp's 16. */
    cf_i64 ri[2], lo[2], hi[2];
    bool live[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        ri[r] = row0 + w * 16 + g + 8 * r;
        live[r] = ri[r] < sq;
        lo[r] = hi[r] = 0;
        if (live[r]) cf_key_range(&a, ri[r], sq, sk, &lo[r], &hi[r]);
    }
    const float slope = cf_slope(&a, b, h);
    float m[2] = {CF_NEG_INF, CF_NEG_INF}, l[2] = {0.0f, 0.0f};
    float o[NT_O][4];
#pragma unroll
    for (int t = 0; t < NT_O; t++)
        o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;

    const cf_h* kg = (const cf_h*)a.k + b * a.k_sb + k0 * a.k_ss + hk * a.k_sh;
    const cf_h* vg = (const cf_h*)a.v + b * a.v_sb + k0 * a.v_ss + hk * a.v_sh;
    for (cf_i64 j0 = blo; j0 < bhi; j0 += BK) {
        const int nk = (int)(bhi - j0 < BK ? bhi - j0 : BK);
        __syncthreads(); /* the previous tile is consumed */
        load_tile(Ks, kg + j0 * a.k_ss, a.k_ss, BK, nk, D);
        load_tile(Vs, vg + j0 * a.v_ss, a.v_ss, BK, nk, Dv);
        cp_async_wait_all();
        __syncthreads();

        /* S = Q_w K^T */
        float s[NT_S][4];
#pragma unroll
        for (int t = 0; t < NT_S; t++)
            s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
        for (int kk = 0; kk < Dp; kk += 16) {
            cf_u32 af[4];
            ldmatrix_x4(af, Qs + (w * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
            for (int t = 0; t < NT_S; t++) {
                cf_u32 bf[2];
                ldmatrix_x2(bf, Ks + (t * 8 + (lane & 7)) * LDS + kk + ((lane >> 3) & 1) * 8);
                mma16816(s[t], af, bf);
            }
        }

        /* Scale, softcap, ALiBi, masks; the tile's row maxima. */
        float mt[2] = {CF_NEG_INF, CF_NEG_INF};
#pragma unroll
        for (int t = 0; t < NT_S; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const cf_i64 j = j0 + t * 8 + tg * 2 + (e & 1);
                float x = CF_NEG_INF;
                if (live[r] && j >= lo[r] && j < hi[r]) {
                    float th;
                    x = cf_score(&a, a.scale * s[t][e], slope, ri[r], j, sq, sk, &th);
                }
                s[t][e] = x;
                mt[r] = fmaxf(mt[r], x);
            }
        float corr[2], mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(CF_FULL, mt[r], 1));
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(CF_FULL, mt[r], 2));
            const float mn = fmaxf(m[r], mt[r]);
            mu[r] = mn == CF_NEG_INF ? 0.0f : mn; /* nothing visible yet: keep everything 0 */
            corr[r] = expf(m[r] - mu[r]);
            m[r] = mn;
        }
        /* P = exp(S - m); row sums before dropout; dropout on the weights applied to V. */
        float ls[2] = {0.0f, 0.0f};
        cf_u32 pf[NT_S][2];
#pragma unroll
        for (int t = 0; t < NT_S; t++) {
            float p[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                p[e] = s[t][e] == CF_NEG_INF ? 0.0f : expf(s[t][e] - mu[r]);
                ls[r] += p[e];
            }
            if (a.dropout_p > 0.0f) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const cf_i64 j = j0 + t * 8 + tg * 2 + (e & 1);
                    if (p[e] != 0.0f && !cf_dropout_keep_word(&a, b, h, ri[e >> 1], j)) p[e] = 0.0f;
                }
            }
            pf[t][0] = pack2(p[0], p[1]); /* row g */
            pf[t][1] = pack2(p[2], p[3]); /* row g + 8 */
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            ls[r] += __shfl_xor_sync(CF_FULL, ls[r], 1);
            ls[r] += __shfl_xor_sync(CF_FULL, ls[r], 2);
            l[r] = l[r] * corr[r] + ls[r];
        }
#pragma unroll
        for (int t = 0; t < NT_O; t++) {
            o[t][0] *= corr[0];
            o[t][1] *= corr[0];
            o[t][2] *= corr[1];
            o[t][3] *= corr[1];
        }
        /* O += P V: k runs over the tile's keys in steps of 16 (two S n-tiles). */
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            const cf_u32 af[4] = {pf[2 * kk][0], pf[2 * kk][1], pf[2 * kk + 1][0],
                                  pf[2 * kk + 1][1]};
#pragma unroll
            for (int t = 0; t < NT_O; t++) {
                if (t * 8 >= Dv) break;
                cf_u32 bf[2];
                ldmatrix_x2_trans(bf, Vs + (kk * 16 + (lane & 15)) * LDS + t * 8);
                mma16816(o[t], af, bf);
            }
        }
    }

    /* Out = O / l (scaled for dropout); rows that saw nothing get 0 and lse -inf. */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (!live[r]) continue;
        const float inv = l[r] > 0.0f ? a.keep_scale / l[r] : 0.0f;
        const cf_i64 ob = b * a.o_sb + (q0 + ri[r]) * a.o_ss + h * a.o_sh;
#pragma unroll
        for (int t = 0; t < NT_O; t++) {
            const int d = t * 8 + tg * 2;
            if (d < Dv) cf_st(a.out, ob + d, o[t][2 * r] * inv);
            if (d + 1 < Dv) cf_st(a.out, ob + d + 1, o[t][2 * r + 1] * inv);
        }
        if (a.lse && tg == 0)
            a.lse[b * a.lse_sb + h * a.lse_sh + (q0 + ri[r]) * a.lse_ss] =
                l[r] > 0.0f ? m[r] + logf(l[r]) : CF_NEG_INF;
    }
}

/* ---- Backward (tensor cores) -------------------------------------------------------------- */
/* Two kernels, no atomics (deterministic), both shaped like the forward: two products whose
 * fragments stay in registers, then one or two products that reuse them as A operands.
 *   cf_attn_bwd_dq_mma    64 query rows per block:  S = Q K^T, dP = dO V^T, dS, dQ += dS K
 *   cf_attn_bwd_dkdv_mma  64 keys of KV head hk per block, over the group's query heads:
 *                         S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q
 * delta = rowsum(dO * O) comes from cf_attn_bwd_delta_simt (a.delta). Shared memory: four tiles of
 * 64 rows x LDS halves (+ 2 x 64 floats for the dkdv kernel). */
#define BT 64         /* rows of every backward tile */
#define NT_T (BT / 8) /* n-tiles of a 64-wide product */

/* Scores -> dS (and P with dropout) for one element: query i, key j of sequence (sq, sk). */
CF_DEV void bwd_elem(const cf_attn_args& a, float s, float dpv, float lse, float delta, float slope,
                     cf_i64 b, cf_i64 h, cf_i64 i, cf_i64 j, cf_i64 sq, cf_i64 sk, float* pk,
                     float* ds) {
    float th;
    const float x = cf_score(&a, a.scale * s, slope, i, j, sq, sk, &th);
    const float p = expf(x - lse);
    const int keep = cf_dropout_keep_word(&a, b, h, i, j);
    *pk = keep ? p * a.keep_scale : 0.0f;
    const float dp = keep ? dpv * a.keep_scale : 0.0f;
    float d = p * (dp - delta);
    if (a.softcap > 0.0f) d *= 1.0f - th * th;
    *ds = d * a.scale;
}

extern "C" __global__ void __launch_bounds__(128) cf_attn_bwd_dq_mma(cf_attn_args a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    cf_h* Qs = (cf_h*)smem_raw;
    cf_h* Gs = Qs + BT * LDS;
    cf_h* Ks = Gs + BT * LDS;
    cf_h* Vs = Ks + BT * LDS;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3;
    const cf_i64 b = blockIdx.z, h = blockIdx.y, hk = h / (a.H / a.Hk);
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 row0 = (cf_i64)blockIdx.x * BT;
    if (row0 >= sq) return;
    const int D = (int)a.D, Dv = (int)a.Dv, Dp = (D + 15) & ~15, Dvp = (Dv + 15) & ~15;
    const int nq = (int)(sq - row0 < BT ? sq - row0 : BT);
    load_tile(Qs, (const cf_h*)a.q + b * a.q_sb + (q0 + row0) * a.q_ss + h * a.q_sh, a.q_ss, BT, nq,
              D);
    load_tile(Gs, (const cf_h*)a.dout + b * a.do_sb + (q0 + row0) * a.do_ss + h * a.do_sh, a.do_ss,
              BT, nq, Dv);
    cp_async_wait_all();
    const cf_i64 last = row0 + nq - 1;
    cf_i64 blo, bhi, tmp;
    cf_key_range(&a, row0, sq, sk, &blo, &tmp);
    cf_key_range(&a, last, sq, sk, &tmp, &bhi);
    cf_i64 ri[2], lo[2], hi[2];
    float lse[2], delta[2];
    bool live[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        ri[r] = row0 + w * 16 + g + 8 * r;
        live[r] = ri[r] < sq;
        lo[r] = hi[r] = 0;
        lse[r] = CF_NEG_INF;
        delta[r] = 0.0f;
        if (live[r]) {
            cf_key_range(&a, ri[r], sq, sk, &lo[r], &hi[r]);
            lse[r] = a.lse[b * a.lse_sb + h * a.lse_sh + (q0 + ri[r]) * a.lse_ss];
            delta[r] = a.delta[(b * a.H + h) * a.Sq + ri[r]];
            if (lse[r] == CF_NEG_INF) live[r] = false; /* saw no key: dq = 0 */
        }
    }
    const float slope = cf_slope(&a, b, h);
    float dq[NT_O][4];
#pragma unroll
    for (int t = 0; t < NT_O; t++)
        dq[t][0] = dq[t][1] = dq[t][2] = dq[t][3] = 0.0f;
    const cf_h* kg = (const cf_h*)a.k + b * a.k_sb + k0 * a.k_ss + hk * a.k_sh;
    const cf_h* vg = (const cf_h*)a.v + b * a.v_sb + k0 * a.v_ss + hk * a.v_sh;
    for (cf_i64 j0 = blo; j0 < bhi; j0 += BT) {
        const int nk = (int)(bhi - j0 < BT ? bhi - j0 : BT);
        __syncthreads();
        load_tile(Ks, kg + j0 * a.k_ss, a.k_ss, BT, nk, D);
        load_tile(Vs, vg + j0 * a.v_ss, a.v_ss, BT, nk, Dv);
        cp_async_wait_all();
        __syncthreads();
        float s[NT_T][4], dp[NT_T][4];
#pragma unroll
        for (int t = 0; t < NT_T; t++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[t][e] = dp[t][e] = 0.0f;
        for (int kk = 0; kk < Dp; kk += 16) {
            cf_u32 af[4];
            ldmatrix_x4(af, Qs + (w * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
            for (int t = 0; t < NT_T; t++) {
                cf_u32 bf[2];
                ldmatrix_x2(bf, Ks + (t * 8 + (lane & 7)) * LDS + kk + ((lane >> 3) & 1) * 8);
                mma16816(s[t], af, bf);
            }
        }
        for (int kk = 0; kk < Dvp; kk += 16) {
            cf_u32 af[4];
            ldmatrix_x4(af, Gs + (w * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
            for (int t = 0; t < NT_T; t++) {
                cf_u32 bf[2];
                ldmatrix_x2(bf, Vs + (t * 8 + (lane & 7)) * LDS + kk + ((lane >> 3) & 1) * 8);
                mma16816(dp[t], af, bf);
            }
        }
        cf_u32 df[NT_T][2];
#pragma unroll
        for (int t = 0; t < NT_T; t++) {
            float d[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const cf_i64 j = j0 + t * 8 + tg * 2 + (e & 1);
                float pk;
                d[e] = 0.0f;
                if (live[r] && j >= lo[r] && j < hi[r])
                    bwd_elem(a, s[t][e], dp[t][e], lse[r], delta[r], slope, b, h, ri[r], j, sq, sk,
                             &pk, &d[e]);
            }
            df[t][0] = pack2(d[0], d[1]);
            df[t][1] = pack2(d[2], d[3]);
        }
        /* dQ += dS K */
#pragma unroll
        for (int kk = 0; kk < BT / 16; kk++) {
            const cf_u32 af[4] = {df[2 * kk][0], df[2 * kk][1], df[2 * kk + 1][0],
                                  df[2 * kk + 1][1]};
#pragma unroll
            for (int t = 0; t < NT_O; t++) {
                if (t * 8 >= D) break;
                cf_u32 bf[2];
                ldmatrix_x2_trans(bf, Ks + (kk * 16 + (lane & 15)) * LDS + t * 8);
                mma16816(dq[t], af, bf);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const cf_i64 i = row0 + w * 16 + g + 8 * r;
        if (i >= sq) continue;
        const cf_i64 ob = b * a.dq_sb + (q0 + i) * a.dq_ss + h * a.dq_sh;
#pragma unroll
        for (int t = 0; t < NT_O; t++) {
            const int d = t * 8 + tg * 2;
            if (d < D) cf_st(a.dq, ob + d, dq[t][2 * r]);
            if (d + 1 < D) cf_st(a.dq, ob + d + 1, dq[t][2 * r + 1]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) cf_attn_bwd_dkdv_mma(cf_attn_args a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    cf_h* Ks = (cf_h*)smem_raw;
    cf_h* Vs = Ks + BT * LDS;
    cf_h* Qs = Vs + BT * LDS;
    cf_h* Gs = Qs + BT * LDS;
    float* Ls = (float*)(Gs + BT * LDS);
    float* Ds = Ls + BT;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3;
    const cf_i64 b = blockIdx.z, hk = blockIdx.y, group = a.H / a.Hk;
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 key0 = (cf_i64)blockIdx.x * BT;
    if (key0 >= sk) return;
    const int D = (int)a.D, Dv = (int)a.Dv, Dp = (D + 15) & ~15, Dvp = (Dv + 15) & ~15;
    const int nk = (int)(sk - key0 < BT ? sk - key0 : BT);
    load_tile(Ks, (const cf_h*)a.k + b * a.k_sb + (k0 + key0) * a.k_ss + hk * a.k_sh, a.k_ss, BT,
              nk, D);
    load_tile(Vs, (const cf_h*)a.v + b * a.v_sb + (k0 + key0) * a.v_ss + hk * a.v_sh, a.v_ss, BT,
              nk, Dv);
    cp_async_wait_all();
    cf_i64 ilo, ihi, tmp;
    cf_query_range(&a, key0, sq, sk, &ilo, &tmp);
    cf_query_range(&a, key0 + nk - 1, sq, sk, &tmp, &ihi);
    cf_i64 kj[2];
#pragma unroll
    for (int r = 0; r < 2; r++)
        kj[r] = key0 + w * 16 + g + 8 * r; /* this thread's two keys */
    float dk[NT_O][4], dv[NT_O][4];
#pragma unroll
    for (int t = 0; t < NT_O; t++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            dk[t][e] = dv[t][e] = 0.0f;

    for (cf_i64 h = hk * group; h < (hk + 1) * group; h++) {
        const float slope = cf_slope(&a, b, h);
        const cf_h* qg = (const cf_h*)a.q + b * a.q_sb + q0 * a.q_ss + h * a.q_sh;
        const cf_h* gg = (const cf_h*)a.dout + b * a.do_sb + q0 * a.do_ss + h * a.do_sh;
        for (cf_i64 i0 = ilo; i0 < ihi; i0 += BT) {
            const int nq = (int)(ihi - i0 < BT ? ihi - i0 : BT);
            __syncthreads();
            load_tile(Qs, qg + i0 * a.q_ss, a.q_ss, BT, nq, D);
            load_tile(Gs, gg + i0 * a.do_ss, a.do_ss, BT, nq, Dv);
            for (int r = threadIdx.x; r < BT; r += blockDim.x) {
                Ls[r] = r < nq ? a.lse[b * a.lse_sb + h * a.lse_sh + (q0 + i0 + r) * a.lse_ss]
                               : CF_NEG_INF;
                Ds[r] = r < nq ? a.delta[(b * a.H + h) * a.Sq + i0 + r] : 0.0f;
            }
            cp_async_wait_all();
            __syncthreads();
            /* S^T = K_w Q^T and dP^T = V_w dO^T: rows are this warp's keys, columns queries. */
            float s[NT_T][4], dp[NT_T][4];
#pragma unroll
            for (int t = 0; t < NT_T; t++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    s[t][e] = dp[t][e] = 0.0f;
            for (int kk = 0; kk < Dp; kk += 16) {
                cf_u32 af[4];
                ldmatrix_x4(af, Ks + (w * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
                for (int t = 0; t < NT_T; t++) {
                    cf_u32 bf[2];
                    ldmatrix_x2(bf, Qs + (t * 8 + (lane & 7)) * LDS + kk + ((lane >> 3) & 1) * 8);
                    mma16816(s[t], af, bf);
                }
            }
            for (int kk = 0; kk < Dvp; kk += 16) {
                cf_u32 af[4];
                ldmatrix_x4(af, Vs + (w * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
                for (int t = 0; t < NT_T; t++) {
                    cf_u32 bf[2];
                    ldmatrix_x2(bf, Gs + (t * 8 + (lane & 7)) * LDS + kk + ((lane >> 3) & 1) * 8);
                    mma16816(dp[t], af, bf);
                }
            }
            cf_u32 pf[NT_T][2], df[NT_T][2];
#pragma unroll
            for (int t = 0; t < NT_T; t++) {
                float p[4], d[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1, qi = t * 8 + tg * 2 + (e & 1);
                    const cf_i64 i = i0 + qi, j = kj[r];
                    p[e] = d[e] = 0.0f;
                    if (qi < nq && j < sk && Ls[qi] != CF_NEG_INF) {
                        cf_i64 lo, hi;
                        cf_key_range(&a, i, sq, sk, &lo, &hi);
                        if (j >= lo && j < hi)
                            bwd_elem(a, s[t][e], dp[t][e], Ls[qi], Ds[qi], slope, b, h, i, j, sq,
                                     sk, &p[e], &d[e]);
                    }
                }
                pf[t][0] = pack2(p[0], p[1]);
                pf[t][1] = pack2(p[2], p[3]);
                df[t][0] = pack2(d[0], d[1]);
                df[t][1] = pack2(d[2], d[3]);
            }
            /* dV += P^T dO, dK += dS^T Q: k runs over the tile's queries in steps of 16. */
#pragma unroll
            for (int kk = 0; kk < BT / 16; kk++) {
                const cf_u32 ap[4] = {pf[2 * kk][0], pf[2 * kk][1], pf[2 * kk + 1][0],
                                      pf[2 * kk + 1][1]};
                const cf_u32 ad[4] = {df[2 * kk][0], df[2 * kk][1], df[2 * kk + 1][0],
                                      df[2 * kk + 1][1]};
#pragma unroll
                for (int t = 0; t < NT_O; t++) {
                    cf_u32 bf[2];
                    if (t * 8 < Dv) {
                        ldmatrix_x2_trans(bf, Gs + (kk * 16 + (lane & 15)) * LDS + t * 8);
                        mma16816(dv[t], ap, bf);
                    }
                    if (t * 8 < D) {
                        ldmatrix_x2_trans(bf, Qs + (kk * 16 + (lane & 15)) * LDS + t * 8);
                        mma16816(dk[t], ad, bf);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const cf_i64 j = kj[r];
        if (j >= sk) continue;
        const cf_i64 kb = b * a.dk_sb + (k0 + j) * a.dk_ss + hk * a.dk_sh;
        const cf_i64 vb = b * a.dv_sb + (k0 + j) * a.dv_ss + hk * a.dv_sh;
#pragma unroll
        for (int t = 0; t < NT_O; t++) {
            const int d = t * 8 + tg * 2;
            if (d < D) cf_st(a.dk, kb + d, dk[t][2 * r]);
            if (d + 1 < D) cf_st(a.dk, kb + d + 1, dk[t][2 * r + 1]);
            if (d < Dv) cf_st(a.dv, vb + d, dv[t][2 * r]);
            if (d + 1 < Dv) cf_st(a.dv, vb + d + 1, dv[t][2 * r + 1]);
        }
    }
}
