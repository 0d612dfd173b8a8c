/* The ops around attention on CUDA cores, any arch, every dtype (chosen at run time per tensor):
 *   cf_rotary_simt       one block per (sequence row); a thread per rotated pair or copied element
 *   cf_merge_simt        one block per output row (b, i, h); threads over Dv
 *   cf_norm_fwd_simt     one block per row: statistics by block reduction, then the outputs
 *   cf_norm_bwd_rows     one block per row: dx (and dresidual), the row's mean/rstd to a workspace
 *   cf_norm_bwd_cols     one thread per column: dweight / dbias summed over rows in row order
 * Rules are those of the reference kernels in src/cpu/ref/ (rotary.c, merge.c, norm.c); the
 * reductions are in a fixed order, so results are deterministic. */
#include "cf_ops_args.cuh"

/* ---- Rotary ------------------------------------------------------------------------------- */
extern "C" __global__ void cf_rotary_simt(cf_rotary_args a) {
    const cf_i64 r = blockIdx.x, b = r / a.S, s = r - b * a.S;
    cf_i64 s0 = 0, len = a.S;
    if (a.cu) {
        s0 = a.cu[b];
        len = a.cu[b + 1] - a.cu[b];
    }
    if (s >= len) return;
    const cf_i64 pos = (a.offsets ? a.offsets[b] : a.offset) + s, half = a.rd / 2;
    const float sgn = a.conjugate ? -1.0f : 1.0f;
    const cf_i64 xb = b * a.x_sb + (s0 + s) * a.x_ss, ob = b * a.o_sb + (s0 + s) * a.o_ss;
    for (cf_i64 e = threadIdx.x; e < a.H * a.D; e += blockDim.x) {
        const cf_i64 h = e / a.D, d = e - h * a.D;
        const cf_i64 xh = xb + h * a.x_sh, oh = ob + h * a.o_sh;
        if (h < a.nrot && d < a.rd) {
            if (d >= half) continue; /* the thread of pair d - half wrote it */
            const cf_i64 ia = a.interleaved ? 2 * d : d, ib = a.interleaved ? 2 * d + 1 : d + half;
            const float co = cf_ldt(a.cos, a.cs_dt, pos * a.cos_s0 + d);
            const float si = sgn * cf_ldt(a.sin, a.cs_dt, pos * a.sin_s0 + d);
            const float x0 = cf_ldt(a.x, a.dt, xh + ia), x1 = cf_ldt(a.x, a.dt, xh + ib);
            cf_stt(a.out, a.dt, oh + ia, x0 * co - x1 * si);
            cf_stt(a.out, a.dt, oh + ib, x0 * si + x1 * co);
        } else if (!a.inplace) {
            cf_stt(a.out, a.dt, oh + d, cf_ldt(a.x, a.dt, xh + d));
        }
    }
}

/* ---- Merge -------------------------------------------------------------------------------- */
extern "C" __global__ void cf_merge_simt(cf_merge_args a) {
    const cf_i64 r = blockIdx.x, b = r / (a.Sq * a.H), i = (r / a.H) % a.Sq, h = r % a.H;
    const cf_i64 lo = b * a.lp_s1 + h * a.lp_s2 + i * a.lp_s3;
    float m = CF_NEG_INF, sum = 0.0f;
    for (cf_i64 s = 0; s < a.NS; s++)
        m = fmaxf(m, a.lp[lo + s * a.lp_s0]);
    if (m != CF_NEG_INF)
        for (cf_i64 s = 0; s < a.NS; s++)
            sum += expf(a.lp[lo + s * a.lp_s0] - m);
    const float lse = m == CF_NEG_INF ? CF_NEG_INF : m + logf(sum);
    const cf_i64 oo = b * a.o_s0 + i * a.o_s1 + h * a.o_s2;
    for (cf_i64 d = threadIdx.x; d < a.Dv; d += blockDim.x) {
        float acc = 0.0f;
        for (cf_i64 s = 0; s < a.NS; s++) {
            const float l = a.lp[lo + s * a.lp_s0];
            if (l == CF_NEG_INF) continue; /* an empty part: its out may be anything */
            acc += expf(l - lse) *
                   cf_ldt(a.op, a.op_dt, s * a.op_s0 + b * a.op_s1 + i * a.op_s2 + h * a.op_s3 + d);
        }
        cf_stt(a.out, a.out_dt, oo + d, acc);
    }
    if (a.lse && threadIdx.x == 0) a.lse[b * a.lse_s0 + h * a.lse_s1 + i * a.lse_s2] = lse;
}

/* ---- Norm --------------------------------------------------------------------------------- */
#define CF_NORM_THREADS 256

CF_DEV float ld2(const cf_norm_t& t, cf_i64 r, cf_i64 j) {
    return cf_ldt(t.p, t.dt, r * t.s0 + j * t.s1);
}
CF_DEV void st2(const cf_norm_t& t, cf_i64 r, cf_i64 j, float x) {
    cf_stt(t.p, t.dt, r * t.s0 + j * t.s1, x);
}
CF_DEV float vec(const cf_norm_t& t, cf_i64 j, float dflt) {
    return t.p ? cf_ldt(t.p, t.dt, j * t.s0) : dflt;
}
CF_DEV int norm_keep(const cf_norm_args& a, cf_i64 r, cf_i64 j) {
    return cf_keep(a.seed, a.offset, a.dropout_p, a.keep_threshold, (cf_u64)r >> 32, 0,
                   (cf_u64)r & 0xffffffffu, (cf_u64)j);
}
/* h = dropout(x) + residual, as the forward computes it. */
CF_DEV float norm_h(const cf_norm_args& a, cf_i64 r, cf_i64 j) {
    float v = ld2(a.x, r, j);
    if (a.dropout_p > 0.0f) v = norm_keep(a, r, j) ? v * a.keep_scale : 0.0f;
    if (a.residual.p) v += ld2(a.residual, r, j);
    return v;
}

/* Sum over the block (CF_NORM_THREADS threads), returned to every thread. */
CF_DEV float block_sum(float x, float* red) {
    x = cf_warp_sum(x);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads(); /* red may still be read from the previous call */
    if (lane == 0) red[w] = x;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < CF_NORM_THREADS / 32; i++)
        t += red[i];
    return t;
}

extern "C" __global__ void __launch_bounds__(CF_NORM_THREADS) cf_norm_fwd_simt(cf_norm_args a) {
    __shared__ float red[CF_NORM_THREADS / 32];
    const cf_i64 r = blockIdx.x;
    float mu = 0.0f;
    if (!a.rms) {
        float s = 0.0f;
        for (cf_i64 j = threadIdx.x; j < a.N; j += CF_NORM_THREADS)
            s += norm_h(a, r, j);
        mu = block_sum(s, red) / (float)a.N;
    }
    float v = 0.0f;
    for (cf_i64 j = threadIdx.x; j < a.N; j += CF_NORM_THREADS) {
        const float d = norm_h(a, r, j) - mu;
        v += d * d;
    }
    const float rs = 1.0f / sqrtf(block_sum(v, red) / (float)a.N + a.eps);
    for (cf_i64 j = threadIdx.x; j < a.N; j += CF_NORM_THREADS) {
        const float h = norm_h(a, r, j);
        if (a.residual_out.p) st2(a.residual_out, r, j, h);
        st2(a.out, r, j, (h - mu) * rs * vec(a.weight, j, 1.0f) + vec(a.bias, j, 0.0f));
    }
    if (threadIdx.x == 0) {
        if (a.mean.p) ((float*)a.mean.p)[r * a.mean.s0] = mu;
        if (a.rstd.p) ((float*)a.rstd.p)[r * a.rstd.s0] = rs;
    }
}

/* Backward rows: here a.x holds h (the forward's normalised input). */
extern "C" __global__ void __launch_bounds__(CF_NORM_THREADS) cf_norm_bwd_rows(cf_norm_args a) {
    __shared__ float red[CF_NORM_THREADS / 32];
    const cf_i64 r = blockIdx.x;
    float mu = 0.0f, rs;
    if (!a.rms) {
        float s = 0.0f;
        for (cf_i64 j = threadIdx.x; j < a.N; j += CF_NORM_THREADS)
            s += ld2(a.x, r, j);
        mu = block_sum(s, red) / (float)a.N;
    }
    float v = 0.0f;
    for (cf_i64 j = threadIdx.x; j < a.N; j += CF_NORM_THREADS) {
        const float d = ld2(a.x, r, j) - mu;
        v += d * d;
    }
    rs = 1.0f / sqrtf(block_sum(v, red) / (float)a.N + a.eps);
    if (a.mean.p) mu = ((const float*)a.mean.p)[r * a.mean.s0];
    if (a.rstd.p) rs = ((const float*)a.rstd.p)[r * a.rstd.s0];
    float mg = 0.0f, mgx = 0.0f;
    for (cf_i64 j = threadIdx.x; j < a.N; j += CF_NORM_THREADS) {
        const float g = ld2(a.dy, r, j) * vec(a.weight, j, 1.0f);
        mg += g;
        mgx += g * (ld2(a.x, r, j) - mu) * rs;
    }
    mg = a.rms ? 0.0f : block_sum(mg, red) / (float)a.N;
    mgx = block_sum(mgx, red) / (float)a.N;
    for (cf_i64 j = threadIdx.x; j < a.N; j += CF_NORM_THREADS) {
        const float g = ld2(a.dy, r, j) * vec(a.weight, j, 1.0f);
        const float xh = (ld2(a.x, r, j) - mu) * rs;
        float dh = rs * (g - mg - xh * mgx);
        if (a.dresidual_out.p) dh += ld2(a.dresidual_out, r, j);
        if (a.dresidual.p) st2(a.dresidual, r, j, dh);
        if (a.dropout_p > 0.0f) dh = norm_keep(a, r, j) ? dh * a.keep_scale : 0.0f;
        st2(a.dx, r, j, dh);
    }
    if (threadIdx.x == 0) {
        a.ws[r] = mu;
        a.ws[a.M + r] = rs;
    }
}

extern "C" __global__ void cf_norm_bwd_cols(cf_norm_args a) {
    const cf_i64 j = (cf_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= a.N) return;
    float dw = 0.0f, db = 0.0f;
    for (cf_i64 r = 0; r < a.M; r++) {
        const float dy = ld2(a.dy, r, j);
        dw += dy * (ld2(a.x, r, j) - a.ws[r]) * a.ws[a.M + r];
        db += dy;
    }
    if (a.dweight.p) cf_stt(a.dweight.p, a.dweight.dt, j * a.dweight.s0, dw);
    if (a.dbias.p) cf_stt(a.dbias.p, a.dbias.dt, j * a.dbias.s0, db);
}
