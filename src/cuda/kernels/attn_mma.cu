/* cuda-mma attention, forward and (at the end of the file) backward: tensor cores (mma.sync
 * m16n8k16, fp32 accumulation), ldmatrix for the operand fragments, cp.async for global -> shared
 * copies; sm_80 and newer, fp16 and bf16, head dims multiple of 8 up to CF_DMAX, every mask
 * feature, dropout, GQA, varlen, Dv != D. One block = 4 warps = 64 query rows of one (b, h); each
 * warp owns 16 rows:
 *   S (16 x BK) = Q_w (16 x D) K_tile^T         A: ldmatrix.x4, B: ldmatrix.x4 (two n-tiles)
 *   online softmax on the S fragments in registers (rows g and g + 8 of each thread), in log2
 *   units (exp2); tiles that every row sees whole, without softcap / ALiBi / dropout, skip the
 *   per-element masks
 *   O (16 x Dv) += P (16 x BK, S's fragments repacked to fp16/bf16) V_tile   (ldmatrix.x4.trans)
 * K and V tiles are pipelined with cp.async groups: V(j) loads during S(j) and its softmax,
 * K(j + 1) during P V(j). Compiled per variant with -DCF_DTYPE=1|2 (fp16|bf16)
 * -DCF_DMAX=64|128|256. */
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
/* Forward pipeline (kept a define so that a variant can be timed through CFLASH_NVRTC_OPTIONS;
 * the host sizes shared memory with the same value, cuda_attn.c's MMA_FWD_STAGES):
 *   1: one K and one V buffer; V(j) loads during S(j) and its softmax, K(j + 1) during P V(j)
 *      (CF_FWD_KEARLY 1: during the softmax and P V(j), V(j) during S(j) alone)
 *   2: two K/V buffer pairs; tile j + 1 loads during all of tile j, one barrier a tile */
#ifndef CF_FWD_STAGES
#define CF_FWD_STAGES 1
#endif
#ifndef CF_FWD_KEARLY
#define CF_FWD_KEARLY 0
#endif
/* CF_EX2_FTZ 1: softmax exponentials by ex2.approx.ftz (results below 2^-126 flush to 0, which a
 * sum of at least 1 cannot see) instead of exp2f's denormal-safe sequence. */
#ifndef CF_EX2_FTZ
#define CF_EX2_FTZ 0
#endif
/* CF_FWD_MINB / CF_BWD_MINB n > 1: a multiprocessor must hold n blocks of the forward / the dQ
 * kernel (__launch_bounds__' second argument, which caps the registers). */
#if defined(CF_FWD_MINB) && CF_FWD_MINB > 1
#define CF_FWD_BOUNDS __launch_bounds__(128, CF_FWD_MINB)
#else
#define CF_FWD_BOUNDS __launch_bounds__(128)
#endif
#if defined(CF_BWD_MINB) && CF_BWD_MINB > 1
#define CF_DQ_BOUNDS __launch_bounds__(128, CF_BWD_MINB)
#else
#define CF_DQ_BOUNDS __launch_bounds__(128)
#endif
/* CF_BWD_ATOMIC_DQ 1: the dK/dV kernel also adds dS K for each query tile into a.dq_acc (fp32
 * atomics, not deterministic) and the dQ kernel is not run; cf_attn_bwd_dq_store writes dq from it
 * (the host's MMA_BWD_ATOMIC_DQ allocates it and sizes shared memory for the dS tile). */
#ifndef CF_BWD_ATOMIC_DQ
#define CF_BWD_ATOMIC_DQ 0
#endif
/* CF_LOAD_T 1: tiles load through load_tile_t (unrolled, each thread's row addresses stepped
 * once a row) instead of load_tile's loop (index arithmetic and 64-bit products per 16 bytes). */
#ifndef CF_LOAD_T
#define CF_LOAD_T 0
#endif
/* CF_FULL_N 1: when the head dims are CF_DMAX (D = Dv = CF_DMAX), the products run without their
 * per-step extent checks. CF_SKIP_RESCALE 1: the forward leaves O alone on tiles where no row
 * maximum of the warp moved (the factor is exactly 1). */
#ifndef CF_FULL_N
#define CF_FULL_N 0
#endif
/* In a kernel whose locals D and Dv hold the head dims: whether the products may skip the checks
 * (bench/sass_fwd_path.py --full defines it 1 to count that path alone). */
#ifndef CF_IS_FULL
#define CF_IS_FULL (D == CF_DMAX && Dv == CF_DMAX)
#endif
/* CF_PICK((full call), (call)): the product for this kernel's head dims; without CF_FULL_N the
 * plain call alone, so that the default kernels are compiled as before. */
#if CF_FULL_N
#define CF_PICK(f, g)                                                                              \
    do {                                                                                           \
        if (CF_IS_FULL)                                                                            \
            f;                                                                                     \
        else                                                                                       \
            g;                                                                                     \
    } while (0)
#else
#define CF_PICK(f, g) g
#endif
#ifndef CF_SKIP_RESCALE
#define CF_SKIP_RESCALE 0
#endif
#define CF_LOG2E 1.4426950408889634f
#define CF_LN2 0.6931471805599453f

typedef unsigned short cf_h;

CF_DEV cf_u32 smem_u32(const void* p) {
    return (cf_u32)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared; src_bytes = 0 writes zeros (rows or dims out of range). */
CF_DEV void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}
CF_DEV void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
/* Waits for every committed group (memory clobber: shared reads stay after it). */
CF_DEV void cp_async_wait0() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

CF_DEV void ldmatrix_x4(cf_u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
CF_DEV void ldmatrix_x4_trans(cf_u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
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

/* 2^x for the softmax weights (see CF_EX2_FTZ). */
CF_DEV float ex2(float x) {
#if CF_EX2_FTZ
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
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

/* load_tile for blocks of 128 threads and ROWS rows: thread t copies the 16-byte column chunk
 * t % CH of rows t / CH + k (128 / CH), its source address stepped by a row stride per copy. */
template <int ROWS>
CF_DEV void load_tile_t(cf_h* dst, const cf_h* src, cf_i64 rs, int nrows, int dims) {
    constexpr int CH = CF_DMAX / 8, RS = 128 / CH;
    static_assert(ROWS % RS == 0, "load_tile_t: rows per pass");
    const int c = (int)(threadIdx.x % CH) * 8, r0 = (int)(threadIdx.x / CH);
    const cf_h* s = src + r0 * rs + c;
    cf_h* d = dst + r0 * LDS + c;
    const bool cok = c < dims;
#pragma unroll
    for (int k = 0; k < ROWS / RS; k++) {
        const bool ok = cok && r0 + k * RS < nrows;
        cp_async16(d + k * RS * LDS, ok ? (const void*)s : (const void*)src, ok ? 16 : 0);
        s += RS * rs;
    }
}

/* Copies rows [r0, r0 + nrows) of a (row stride rs, elements) matrix with `dims` valid columns
 * into a shared tile of `rows` rows x CF_DMAX columns (stride LDS); rows >= nrows and columns
 * >= dims become zeros. dims % 8 == 0. */
CF_DEV void load_tile(cf_h* dst, const cf_h* src, cf_i64 rs, int rows, int nrows, int dims) {
#if CF_LOAD_T /* rows is a constant at every call: one branch is left */
    if (rows == 64) return load_tile_t<64>(dst, src, rs, nrows, dims);
    if (rows == 32) return load_tile_t<32>(dst, src, rs, nrows, dims);
#endif
    const int chunks = CF_DMAX / 8;
    for (int e = threadIdx.x; e < rows * chunks; e += blockDim.x) {
        const int r = e / chunks, c = (e - r * chunks) * 8;
        const bool ok = r < nrows && c < dims;
        cp_async16(dst + r * LDS + c, ok ? (const void*)(src + r * rs + c) : (const void*)src,
                   ok ? 16 : 0);
    }
}

/* One warp's S (16 x 8 NT) = A_w B^T over k extent Kp (a multiple of 16): A's 16 rows from row
 * 16 w of As, B's 8 NT rows from Bs, both row-major (stride LDS) in shared memory. A by
 * ldmatrix.x4 per k step, B two n-tiles per ldmatrix.x4. */
template <int NT, bool FULL = false>
CF_DEV void mm_abt(float (*s)[4], const cf_h* As, const cf_h* Bs, int Kp, int w, int lane) {
#pragma unroll
    for (int t = 0; t < NT; t++)
        s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < CF_DMAX; kk += 16) {
        if (!FULL && kk >= Kp) break;
        cf_u32 af[4];
        ldmatrix_x4(af, As + (w * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
        for (int t = 0; t < NT; t += 2) {
            cf_u32 bf[4];
            ldmatrix_x4(bf, Bs + (t * 8 + (lane & 7) + ((lane >> 4) << 3)) * LDS + kk +
                                ((lane >> 3) & 1) * 8);
            mma16816(s[t], af, bf);
            mma16816(s[t + 1], af, bf + 2);
        }
    }
}

/* acc (16 x n, NT n-tiles of 8) += A (16 x 16 KT: the register fragments f[2 kk], f[2 kk + 1] of
 * each k step, as S's accumulators repacked) B, B = Bs's first 16 KT rows (row-major, stride LDS):
 * two n-tiles per ldmatrix.x4.trans; columns of Bs past n must be zeros (load_tile). */
template <int KT, int NT = NT_O, bool FULL = false>
CF_DEV void mm_fb(float (*acc)[4], const cf_u32 (*f)[2], const cf_h* Bs, int n, int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        const cf_u32 af[4] = {f[2 * kk][0], f[2 * kk][1], f[2 * kk + 1][0], f[2 * kk + 1][1]};
#pragma unroll
        for (int t = 0; t < NT; t += 2) {
            if (!FULL && t * 8 >= n) break;
            cf_u32 bf[4];
            ldmatrix_x4_trans(bf, Bs + (kk * 16 + (lane & 15)) * LDS + t * 8 + (lane >> 4) * 8);
            mma16816(acc[t], af, bf);
            if (FULL || (t + 1) * 8 < n) mma16816(acc[t + 1], af, bf + 2);
        }
    }
}

extern "C" __global__ void CF_FWD_BOUNDS cf_attn_fwd_mma(cf_attn_args a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    cf_h* Qs = (cf_h*)smem_raw;
    cf_h* const KV = Qs + BQ * LDS; /* stage st: K at KV + 2 st BK LDS, V after it */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3;
    const cf_i64 b = blockIdx.z, h = blockIdx.y, hk = h / (a.H / a.Hk);
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    /* Last query blocks first: under a causal mask they see the most keys. */
    const cf_i64 row0 = (cf_i64)(gridDim.x - 1 - blockIdx.x) * BQ;
    if (row0 >= sq) return;
    const int D = (int)a.D, Dv = (int)a.Dv;
    const int Dp = (D + 15) & ~15; /* k extent of Q K^T, zero-padded */

    const cf_h* qg = (const cf_h*)a.q + b * a.q_sb + (q0 + row0) * a.q_ss + h * a.q_sh;
    const int nq = (int)(sq - row0 < BQ ? sq - row0 : BQ);
    load_tile(Qs, qg, a.q_ss, BQ, nq, D);
    cp_async_commit();

    /* Keys [blo, bhi) are visible to some row of the block, [lo_all, hi_all) to every row (key
     * ranges grow with the row). */
    const cf_i64 last = (row0 + BQ < sq ? row0 + BQ : sq) - 1;
    cf_i64 blo, bhi, lo_all, hi_all;
    cf_key_range(&a, row0, sq, sk, &blo, &hi_all);
    cf_key_range(&a, last, sq, sk, &lo_all, &bhi);

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
    /* No softcap, ALiBi or dropout: a tile that every row sees needs no per-element work. */
    const bool plain = !(a.softcap > 0.0f) && slope == 0.0f && !(a.dropout_p > 0.0f);
    const float scale2 = a.scale * CF_LOG2E; /* scores in log2 units: p = exp2(s - m) */
    float m[2] = {CF_NEG_INF, CF_NEG_INF}, l[2] = {0.0f, 0.0f};
    float o[NT_O][4];
#pragma unroll
    for (int t = 0; t < NT_O; t++)
        o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;

    /* Pipeline (CF_FWD_STAGES): the K and V tiles of keys j1.. into stage st. */
    const cf_h* kg = (const cf_h*)a.k + b * a.k_sb + k0 * a.k_ss + hk * a.k_sh;
    const cf_h* vg = (const cf_h*)a.v + b * a.v_sb + k0 * a.v_ss + hk * a.v_sh;
    auto load_k = [&](cf_i64 j1, int st) {
        load_tile(KV + 2 * st * BK * LDS, kg + j1 * a.k_ss, a.k_ss, BK,
                  (int)(bhi - j1 < BK ? bhi - j1 : BK), D);
    };
    auto load_v = [&](cf_i64 j1, int st) {
        load_tile(KV + (2 * st + 1) * BK * LDS, vg + j1 * a.v_ss, a.v_ss, BK,
                  (int)(bhi - j1 < BK ? bhi - j1 : BK), Dv);
    };
    /* One stage: V(j) has landed and every warp is done with K(j); K(j + 1) starts loading. */
    auto next_k = [&](cf_i64 j0) {
        cp_async_wait0(); /* V(j) */
        __syncthreads();  /* ... seen by every warp, and every warp is done with K(j) */
        if (j0 + BK < bhi) {
            load_k(j0 + BK, 0);
            cp_async_commit();
        }
    };
    if (blo < bhi) {
        load_k(blo, 0);
        if (CF_FWD_STAGES == 2) load_v(blo, 0);
        cp_async_commit();
    }
    int st = 0;
    for (cf_i64 j0 = blo; j0 < bhi; j0 += BK) {
        const cf_h* Ks = KV + 2 * st * BK * LDS;
        const cf_h* Vs = Ks + BK * LDS;
        cp_async_wait0(); /* Q and K(j) (2 stages: and V(j)) */
        __syncthreads();  /* ... seen by every warp, and every warp is done with tile j - 1 */
        if (CF_FWD_STAGES == 2) {
            if (j0 + BK < bhi) {
                load_k(j0 + BK, st ^ 1);
                load_v(j0 + BK, st ^ 1);
                cp_async_commit();
            }
        } else {
            load_v(j0, 0);
            cp_async_commit();
        }

        float s[NT_S][4];
        CF_PICK((mm_abt<NT_S, true>(s, Qs, Ks, Dp, w, lane)),
                (mm_abt<NT_S>(s, Qs, Ks, Dp, w, lane)));
        if (CF_FWD_STAGES == 1 && CF_FWD_KEARLY) next_k(j0);

        /* Scale (log2 units), softcap, ALiBi, masks; the tile's row maxima. */
        float mt[2] = {CF_NEG_INF, CF_NEG_INF};
        if (plain && j0 >= lo_all && j0 + BK <= hi_all) {
#pragma unroll
            for (int t = 0; t < NT_S; t++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    s[t][e] *= scale2;
                    mt[e >> 1] = fmaxf(mt[e >> 1], s[t][e]);
                }
        } else {
#pragma unroll
            for (int t = 0; t < NT_S; t++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1;
                    const cf_i64 j = j0 + t * 8 + tg * 2 + (e & 1);
                    float x = CF_NEG_INF;
                    if (live[r] && j >= lo[r] && j < hi[r]) {
                        float th;
                        x = cf_score(&a, a.scale * s[t][e], slope, ri[r], j, sq, sk, &th) *
                            CF_LOG2E;
                    }
                    s[t][e] = x;
                    mt[r] = fmaxf(mt[r], x);
                }
        }
        float corr[2], mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(CF_FULL, mt[r], 1));
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(CF_FULL, mt[r], 2));
            const float mn = fmaxf(m[r], mt[r]);
            mu[r] = mn == CF_NEG_INF ? 0.0f : mn; /* nothing visible yet: keep everything 0 */
            corr[r] = ex2(m[r] - mu[r]);          /* exp2(-inf) = 0 */
            m[r] = mn;
        }
        /* P = exp2(S - m) (masked scores are -inf: 0); row sums before dropout; dropout on the
         * weights applied to V. */
        float ls[2] = {0.0f, 0.0f};
        cf_u32 pf[NT_S][2];
#pragma unroll
        for (int t = 0; t < NT_S; t++) {
            float p[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                p[e] = ex2(s[t][e] - mu[e >> 1]);
                ls[e >> 1] += p[e];
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
#if CF_SKIP_RESCALE
        if (__any_sync(CF_FULL, corr[0] != 1.0f || corr[1] != 1.0f))
#endif
#pragma unroll
            for (int t = 0; t < NT_O; t++) {
                o[t][0] *= corr[0];
                o[t][1] *= corr[0];
                o[t][2] *= corr[1];
                o[t][3] *= corr[1];
            }
        if (CF_FWD_STAGES == 1 && !CF_FWD_KEARLY) next_k(j0);
        CF_PICK((mm_fb<BK / 16, NT_O, true>(o, pf, Vs, Dv, lane)),
                (mm_fb<BK / 16>(o, pf, Vs, Dv, lane))); /* O += P V */
        if (CF_FWD_STAGES == 2) st ^= 1;
    }
    cp_async_wait0(); /* Q when no key is visible */

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
                l[r] > 0.0f ? m[r] * CF_LN2 + logf(l[r]) : CF_NEG_INF;
    }
}

/* ---- Backward (tensor cores) -------------------------------------------------------------- */
/* Two kernels, no atomics (deterministic), both shaped like the forward: two products whose
 * fragments stay in registers, then one or two products that reuse them as A operands.
 *   cf_attn_bwd_dq_mma    64 query rows per block:  S = Q K^T, dP = dO V^T, dS, dQ += dS K
 *   cf_attn_bwd_dkdv_mma  64 keys of KV head hk per block, over the group's query heads:
 *                         S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q
 * delta = rowsum(dO * O) comes from cf_attn_bwd_delta_simt (a.delta). Shared memory: four tiles of
 * 64 rows x LDS halves (+ 2 x 64 floats for the dkdv kernel). As in the forward, the loads of the
 * next tile overlap the products that no longer need the buffer (dq: V during dS and dQ, K after;
 * dkdv: dO, lse, delta during dK, Q after), and tiles that every pair sees, without softcap,
 * ALiBi or dropout, compute dS without the per-element masks (bwd_fast). */
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

/* 4 bytes global -> shared; src_bytes = 0 writes zeros. */
CF_DEV void cp_async4(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}

/* dS of one element on the fast path (no softcap, ALiBi or dropout; key visible): s is the raw
 * product, lse2 the row's lse in log2 units. */
CF_DEV float bwd_fast(float s, float dpv, float scale2, float lse2, float delta, float scale) {
    return ex2(fmaf(s, scale2, -lse2)) * (dpv - delta) * scale;
}

extern "C" __global__ void CF_DQ_BOUNDS cf_attn_bwd_dq_mma(cf_attn_args a) {
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
    const cf_i64 row0 = (cf_i64)(gridDim.x - 1 - blockIdx.x) * BT; /* most keys first (causal) */
    if (row0 >= sq) return;
    const int D = (int)a.D, Dv = (int)a.Dv, Dp = (D + 15) & ~15, Dvp = (Dv + 15) & ~15;
    const int nq = (int)(sq - row0 < BT ? sq - row0 : BT);
    load_tile(Qs, (const cf_h*)a.q + b * a.q_sb + (q0 + row0) * a.q_ss + h * a.q_sh, a.q_ss, BT, nq,
              D);
    load_tile(Gs, (const cf_h*)a.dout + b * a.do_sb + (q0 + row0) * a.do_ss + h * a.do_sh, a.do_ss,
              BT, nq, Dv);
    const cf_i64 last = row0 + nq - 1;
    cf_i64 blo, bhi, lo_all, hi_all;
    cf_key_range(&a, row0, sq, sk, &blo, &hi_all);
    cf_key_range(&a, last, sq, sk, &lo_all, &bhi);
    const cf_h* kg = (const cf_h*)a.k + b * a.k_sb + k0 * a.k_ss + hk * a.k_sh;
    const cf_h* vg = (const cf_h*)a.v + b * a.v_sb + k0 * a.v_ss + hk * a.v_sh;
    if (blo < bhi) {
        const int nk = (int)(bhi - blo < BT ? bhi - blo : BT);
        load_tile(Ks, kg + blo * a.k_ss, a.k_ss, BT, nk, D);
        load_tile(Vs, vg + blo * a.v_ss, a.v_ss, BT, nk, Dv);
    }
    cp_async_commit();
    cf_i64 ri[2], lo[2], hi[2];
    float lse[2], lse2[2], delta[2];
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
        lse2[r] = lse[r] * CF_LOG2E;
    }
    const float slope = cf_slope(&a, b, h);
    const bool plain = !(a.softcap > 0.0f) && slope == 0.0f && !(a.dropout_p > 0.0f);
    const float scale2 = a.scale * CF_LOG2E;
    float dq[NT_O][4];
#pragma unroll
    for (int t = 0; t < NT_O; t++)
        dq[t][0] = dq[t][1] = dq[t][2] = dq[t][3] = 0.0f;
    /* Pipeline: V(j + 1) loads during dS and dQ += dS K(j), K(j + 1) after them. */
    for (cf_i64 j0 = blo; j0 < bhi; j0 += BT) {
        const cf_i64 j1 = j0 + BT;
        const int nk1 = j1 < bhi ? (int)(bhi - j1 < BT ? bhi - j1 : BT) : 0;
        cp_async_wait0();
        __syncthreads(); /* K(j), V(j) (and Q, dO) seen by every warp */
        float s[NT_T][4], dp[NT_T][4];
        CF_PICK((mm_abt<NT_T, true>(dp, Gs, Vs, Dvp, w, lane)),
                (mm_abt<NT_T>(dp, Gs, Vs, Dvp, w, lane)));
        CF_PICK((mm_abt<NT_T, true>(s, Qs, Ks, Dp, w, lane)),
                (mm_abt<NT_T>(s, Qs, Ks, Dp, w, lane)));
        __syncthreads(); /* every warp is done with V(j) */
        if (nk1) {
            load_tile(Vs, vg + j1 * a.v_ss, a.v_ss, BT, nk1, Dv);
            cp_async_commit();
        }
        cf_u32 df[NT_T][2];
        if (plain && j0 >= lo_all && j0 + BT <= hi_all) {
#pragma unroll
            for (int t = 0; t < NT_T; t++) {
                float d[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1;
                    d[e] = live[r] ? bwd_fast(s[t][e], dp[t][e], scale2, lse2[r], delta[r], a.scale)
                                   : 0.0f;
                }
                df[t][0] = pack2(d[0], d[1]);
                df[t][1] = pack2(d[2], d[3]);
            }
        } else {
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
                        bwd_elem(a, s[t][e], dp[t][e], lse[r], delta[r], slope, b, h, ri[r], j, sq,
                                 sk, &pk, &d[e]);
                }
                df[t][0] = pack2(d[0], d[1]);
                df[t][1] = pack2(d[2], d[3]);
            }
        }
        CF_PICK((mm_fb<BT / 16, NT_O, true>(dq, df, Ks, D, lane)),
                (mm_fb<BT / 16>(dq, df, Ks, D, lane))); /* dQ += dS K */
        __syncthreads();                                /* every warp is done with K(j) */
        if (nk1) {
            load_tile(Ks, kg + j1 * a.k_ss, a.k_ss, BT, nk1, D);
            cp_async_commit();
        }
    }
    cp_async_wait0(); /* Q and dO when no key is visible */
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

/* The query tile (h, i0) of the dK/dV kernel: Q and dO rows, lse and delta (zeros past nq). */
CF_DEV void dkdv_load_q(const cf_attn_args& a, cf_h* Qs, cf_h* Gs, float* Ls, float* Ds, cf_i64 b,
                        cf_i64 h, cf_i64 q0, cf_i64 i0, int nq, bool q, bool rest) {
    if (q)
        load_tile(Qs, (const cf_h*)a.q + b * a.q_sb + (q0 + i0) * a.q_ss + h * a.q_sh, a.q_ss, BT,
                  nq, (int)a.D);
    if (!rest) return;
    load_tile(Gs, (const cf_h*)a.dout + b * a.do_sb + (q0 + i0) * a.do_ss + h * a.do_sh, a.do_ss,
              BT, nq, (int)a.Dv);
    for (int r = threadIdx.x; r < BT; r += blockDim.x) {
        const bool ok = r < nq;
        const float* lp = a.lse + b * a.lse_sb + h * a.lse_sh + (q0 + i0 + (ok ? r : 0)) * a.lse_ss;
        const float* dp = a.delta + (b * a.H + h) * a.Sq + i0 + (ok ? r : 0);
        cp_async4(Ls + r, lp, ok ? 4 : 0);
        cp_async4(Ds + r, dp, ok ? 4 : 0);
    }
}

#if CF_BWD_ATOMIC_DQ
#define LDSS (BT + 8) /* row stride of the dS^T tile: 16-byte rows, no ldmatrix conflicts */
/* dq_acc rows i0 + [0, nq) of head h += dS (the tile's queries x BT keys, from the dS^T tile Ss)
 * K (Ks): warp w takes query rows 16 w.., in column chunks of 32 (16 accumulators a thread). */
CF_DEV void dq_atomic(const cf_attn_args& a, const cf_h* Ss, const cf_h* Ks, cf_i64 b, cf_i64 h,
                      cf_i64 i0, int nq, int D, int w, int lane) {
    const int g = lane >> 2, tg = lane & 3;
    cf_u32 f[2 * (BT / 16)][2];
#pragma unroll
    for (int kk = 0; kk < BT / 16; kk++) { /* A = dS = (dS^T)^T: ldmatrix.trans of the keys' rows */
        cf_u32 r[4];
        ldmatrix_x4_trans(r, Ss + (kk * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDSS + w * 16 +
                                 ((lane >> 3) & 1) * 8);
        f[2 * kk][0] = r[0];
        f[2 * kk][1] = r[1];
        f[2 * kk + 1][0] = r[2];
        f[2 * kk + 1][1] = r[3];
    }
    float* base = a.dq_acc + ((b * a.Sq + i0) * a.H + h) * a.D;
#pragma unroll
    for (int c0 = 0; c0 < CF_DMAX; c0 += 32) {
        if (c0 >= D) break;
        float acc[4][4];
#pragma unroll
        for (int t = 0; t < 4; t++)
            acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
        mm_fb<BT / 16, 4>(acc, f, Ks + c0, D - c0, lane);
#pragma unroll
        for (int t = 0; t < 4; t++) {
            const int d = c0 + t * 8 + tg * 2; /* D % 8 == 0: d < D means d + 1 < D */
            if (d >= D) break;
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int qi = w * 16 + g + 8 * r;
                if (qi >= nq) continue;
                float* p = base + (cf_i64)qi * a.H * a.D + d;
                atomicAdd(p, acc[t][2 * r]);
                atomicAdd(p + 1, acc[t][2 * r + 1]);
            }
        }
    }
}

/* dq (the tensor, its dtype and strides) = dq_acc; one block a (row, head, batch). */
extern "C" __global__ void __launch_bounds__(128) cf_attn_bwd_dq_store(cf_attn_args a) {
    const cf_i64 i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    if (i >= sq) return;
    const float* src = a.dq_acc + ((b * a.Sq + i) * a.H + h) * a.D;
    const cf_i64 ob = b * a.dq_sb + (q0 + i) * a.dq_ss + h * a.dq_sh;
    for (int d = threadIdx.x; d < a.D; d += blockDim.x)
        cf_st(a.dq, ob + d, src[d]);
}
#endif

extern "C" __global__ void __launch_bounds__(128) cf_attn_bwd_dkdv_mma(cf_attn_args a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    cf_h* Ks = (cf_h*)smem_raw;
    cf_h* Vs = Ks + BT * LDS;
    cf_h* Qs = Vs + BT * LDS;
    cf_h* Gs = Qs + BT * LDS;
    float* Ls = (float*)(Gs + BT * LDS);
    float* Ds = Ls + BT;
#if CF_BWD_ATOMIC_DQ
    cf_h* Ss = (cf_h*)(Ds + BT); /* dS^T of the tile: [BT keys][LDSS], for dQ += dS K */
#endif
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3;
    const cf_i64 b = blockIdx.z, hk = blockIdx.y, group = a.H / a.Hk;
    cf_i64 q0, sq, k0, sk;
    cf_seq(&a, b, &q0, &sq, &k0, &sk);
    const cf_i64 key0 = (cf_i64)blockIdx.x * BT; /* first keys first: they see most rows (causal) */
    if (key0 >= sk) return;
    const int D = (int)a.D, Dv = (int)a.Dv, Dp = (D + 15) & ~15, Dvp = (Dv + 15) & ~15;
    const int nk = (int)(sk - key0 < BT ? sk - key0 : BT);
    load_tile(Ks, (const cf_h*)a.k + b * a.k_sb + (k0 + key0) * a.k_ss + hk * a.k_sh, a.k_ss, BT,
              nk, D);
    load_tile(Vs, (const cf_h*)a.v + b * a.v_sb + (k0 + key0) * a.v_ss + hk * a.v_sh, a.v_ss, BT,
              nk, Dv);
    cf_i64 ilo, ihi, tmp;
    cf_query_range(&a, key0, sq, sk, &ilo, &tmp);
    cf_query_range(&a, key0 + nk - 1, sq, sk, &tmp, &ihi);
    const cf_i64 h0 = hk * group, h1 = (hk + 1) * group;
    if (ilo < ihi)
        dkdv_load_q(a, Qs, Gs, Ls, Ds, b, h0, q0, ilo, (int)(ihi - ilo < BT ? ihi - ilo : BT), true,
                    true);
    cp_async_commit();
    cf_i64 kj[2];
#pragma unroll
    for (int r = 0; r < 2; r++)
        kj[r] = key0 + w * 16 + g + 8 * r; /* this thread's two keys */
    const float scale2 = a.scale * CF_LOG2E;
    const bool nomod = !(a.softcap > 0.0f) && !(a.dropout_p > 0.0f);
    float dk[NT_O][4], dv[NT_O][4];
#pragma unroll
    for (int t = 0; t < NT_O; t++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            dk[t][e] = dv[t][e] = 0.0f;

    /* Pipeline: dO(next), lse, delta load during dK += dS^T Q, Q(next) after it. */
    for (cf_i64 h = h0; h < h1 && ilo < ihi; h++) {
        const float slope = cf_slope(&a, b, h);
        const bool plain = nomod && slope == 0.0f;
        for (cf_i64 i0 = ilo; i0 < ihi; i0 += BT) {
            const int nq = (int)(ihi - i0 < BT ? ihi - i0 : BT);
            const bool more = i0 + BT < ihi;
            const cf_i64 hn = more ? h : h + 1, in = more ? i0 + BT : ilo;
            const int nqn = (int)(ihi - in < BT ? ihi - in : BT);
            const bool next = hn < h1;
            cp_async_wait0();
            __syncthreads(); /* Q, dO, lse, delta of (h, i0) seen by every warp */
            /* S^T = K_w Q^T and dP^T = V_w dO^T: rows are this warp's keys, columns queries. */
            float s[NT_T][4], dp[NT_T][4];
            CF_PICK((mm_abt<NT_T, true>(s, Ks, Qs, Dp, w, lane)),
                    (mm_abt<NT_T>(s, Ks, Qs, Dp, w, lane)));
            CF_PICK((mm_abt<NT_T, true>(dp, Vs, Gs, Dvp, w, lane)),
                    (mm_abt<NT_T>(dp, Vs, Gs, Dvp, w, lane)));
            cf_u32 pf[NT_T][2], df[NT_T][2];
            cf_i64 lo_last, hi_first;
            cf_key_range(&a, i0, sq, sk, &tmp, &hi_first);
            cf_key_range(&a, i0 + nq - 1, sq, sk, &lo_last, &tmp);
            if (plain && nq == BT && key0 >= lo_last && key0 + BT <= hi_first) {
                /* Every row of the tile sees every key of the block (rows of lse -inf see none,
                 * so they cannot occur here). */
#pragma unroll
                for (int t = 0; t < NT_T; t++) {
                    float p[4], d[4];
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int qi = t * 8 + tg * 2 + (e & 1);
                        p[e] = ex2(fmaf(s[t][e], scale2, -Ls[qi] * CF_LOG2E));
                        d[e] = p[e] * (dp[t][e] - Ds[qi]) * a.scale;
                    }
                    pf[t][0] = pack2(p[0], p[1]);
                    pf[t][1] = pack2(p[2], p[3]);
                    df[t][0] = pack2(d[0], d[1]);
                    df[t][1] = pack2(d[2], d[3]);
                }
            } else {
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
                                bwd_elem(a, s[t][e], dp[t][e], Ls[qi], Ds[qi], slope, b, h, i, j,
                                         sq, sk, &p[e], &d[e]);
                        }
                    }
                    pf[t][0] = pack2(p[0], p[1]);
                    pf[t][1] = pack2(p[2], p[3]);
                    df[t][0] = pack2(d[0], d[1]);
                    df[t][1] = pack2(d[2], d[3]);
                }
            }
#if CF_BWD_ATOMIC_DQ
            if (a.dq_acc) { /* read by every warp after the barrier below */
#pragma unroll
                for (int t = 0; t < NT_T; t++) {
                    *(cf_u32*)(Ss + (w * 16 + g) * LDSS + t * 8 + tg * 2) = df[t][0];
                    *(cf_u32*)(Ss + (w * 16 + g + 8) * LDSS + t * 8 + tg * 2) = df[t][1];
                }
            }
#endif
            CF_PICK((mm_fb<BT / 16, NT_O, true>(dv, pf, Gs, Dv, lane)),
                    (mm_fb<BT / 16>(dv, pf, Gs, Dv, lane))); /* dV += P^T dO */
            __syncthreads(); /* every warp is done with dO, lse, delta of (h, i0) */
            if (next) {
                dkdv_load_q(a, Qs, Gs, Ls, Ds, b, hn, q0, in, nqn, false, true);
                cp_async_commit();
            }
            CF_PICK((mm_fb<BT / 16, NT_O, true>(dk, df, Qs, D, lane)),
                    (mm_fb<BT / 16>(dk, df, Qs, D, lane))); /* dK += dS^T Q */
#if CF_BWD_ATOMIC_DQ
            if (a.dq_acc) dq_atomic(a, Ss, Ks, b, h, i0, nq, D, w, lane);
#endif
            __syncthreads(); /* every warp is done with Q(h, i0) */
            if (next) {
                dkdv_load_q(a, Qs, Gs, Ls, Ds, b, hn, q0, in, nqn, true, false);
                cp_async_commit();
            }
        }
    }
    cp_async_wait0(); /* K, V (and the first query tile) when no row sees the block */
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
