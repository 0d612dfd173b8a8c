/* `cflash bench` (attention forward / backward timing: median of repeated runs after warm-up,
 * GFLOP/s by DESIGN.md's convention, fraction of the measured peak of the unit doing the matrix
 * work) and `cflash bench peak` (this machine's fp32 FMA, AVX512-BF16, AMX-BF16, memory peaks). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli.h"

int cf_cmd_bench(int argc, char** argv);
/* bench_util.c: process CPU seconds, and the peaks per CPU-second (times threads). */
double cf_cpu_s(void);
const cf_peaks* cf_measure_peaks_cpu(int threads);
int cf_cmd_bench_peak(int argc, char** argv);

static int resolve_threads(int t) {
#ifdef _OPENMP
    if (t <= 0) t = omp_get_max_threads();
#endif
    return t > 0 ? t : 1;
}

/* Whether cpu-avx512's bf16 GEMMs multiply on vdpbf16ps (else fp32 FMA: the report's "bf16
 * GEMMs" line). */
static int cpu_bf16_dot(void) {
    cflash_cpu_info ci;
    cflash_cpu_info_get(&ci);
    return ci.bf16_dot_gemm;
}

/* ---- bench peak -------------------------------------------------------------------------------
 */

int cf_cmd_bench_peak(int argc, char** argv) {
    cf_problem pr;
    char err[256];
    cf_problem_defaults(&pr);
    if (cf_problem_parse(&pr, argc, argv, 3, err, sizeof err)) {
        fprintf(stderr, "cflash bench peak: %s\n", err);
        return 2;
    }
    const int T = resolve_threads(pr.threads);
    const cf_peaks* p = cf_measure_peaks(T);
    const cf_peaks* pc = cf_measure_peaks_cpu(T);
    cflash_cpu_info cpu;
    cflash_cpu_info_get(&cpu);
    const cflash_cpu_info* ci = &cpu;
    if (pr.json) {
        printf("{\"op\":\"peak\",\"cpu\":\"%s\",\"threads\":%d,\"fma_f32_gflops\":%.1f,"
               "\"bf16_dot_gflops\":%.1f,\"amx_bf16_gflops\":%.1f,\"mem_bw_gbs\":%.1f,"
               "\"fma_f32_gflops_cpu\":%.1f,\"bf16_dot_gflops_cpu\":%.1f}\n",
               ci->model, T, p->fma_f32_gflops, p->bf16_dot_gflops, p->amx_bf16_gflops,
               p->mem_bw_gbs, pc->fma_f32_gflops, pc->bf16_dot_gflops);
    } else {
        printf("cpu: %s, %d threads\n", ci->model, T);
        printf("  fp32 FMA        %10.1f GFLOP/s (%s; %.1f per CPU-second x threads)\n",
               p->fma_f32_gflops,
               ci->neon      ? "NEON fmla"
               : ci->avx512f ? "AVX-512 vfmadd231ps"
                             : "AVX2 vfmadd231ps",
               pc->fma_f32_gflops);
        if (p->bf16_dot_gflops > 0)
            printf("  %-15s %10.1f GFLOP/s (%s; %.1f per CPU-second x threads)\n",
                   ci->neon ? "BF16 (NEON)" : "AVX512-BF16", p->bf16_dot_gflops,
                   ci->neon ? "bfmmla" : "vdpbf16ps", pc->bf16_dot_gflops);
        else
            printf("  %-15s %10s (CPU lacks %s)\n", ci->neon ? "BF16 (NEON)" : "AVX512-BF16", "-",
                   ci->neon ? "FEAT_BF16" : "avx512_bf16");
        if (p->amx_bf16_gflops > 0)
            printf("  AMX-BF16        %10.1f GFLOP/s (tdpbf16ps)\n", p->amx_bf16_gflops);
        else
            printf("  AMX-BF16        %10s (%s)\n", "-",
                   !ci->amx_bf16 ? "CPU lacks amx_bf16"
                                 : (ci->amx_error[0] ? ci->amx_error : "tile data not permitted"));
        printf("  memory          %10.1f GB/s (read + write, copy of 256 MB)\n", p->mem_bw_gbs);
    }
    return 0;
}

/* ---- bench (attention) ----------------------------------------------------------------------- */

typedef struct bench_tensors {
    int device;
    DLTensor q, k, v, out, lse, dout, dq, dk, dv, alibi;
    int64_t shq[4], shk[4], shv[4], sho[4], shl[3], sha[1];
    void* mem[16];
    /* issue 13: sinks, dsinks [H]; bias, dbias, mask (1, 1, Sq, Sk); block lists (host) */
    DLTensor sinks, dsinks, bias, dbias, mask, bnum, bidx;
    int64_t shp[4], shn[3], shx[4];
    int32_t *num, *idx;
    uint8_t* keep; /* host: (query block, key block) kept by --mask / --block-sparse */
} bench_tensors;

static void dl_init(DLTensor* t, void* data, int device, cflash_dtype dt, int ndim,
                    int64_t* shape) {
    memset(t, 0, sizeof *t);
    t->data = data;
    t->device.device_type = device;
    t->device.device_id = 0;
    t->ndim = ndim;
    t->shape = shape;
    t->strides = NULL;
    t->dtype.code = dt == CFLASH_DTYPE_F32   ? kDLFloat
                    : dt == CFLASH_DTYPE_F16 ? kDLFloat
                                             : kDLBfloat;
    t->dtype.bits = dt == CFLASH_DTYPE_F32 ? 32 : 16;
    t->dtype.lanes = 1;
}

/* Allocates a tensor on the device filled with uniform random values in [-1, 1). */
static void* make(bench_tensors* bt, int slot, DLTensor* t, cflash_dtype dt, int ndim,
                  int64_t* shape, uint64_t seed, char* err, size_t len) {
    int64_t n;
    size_t bytes;
    if (cf_tool_shape_bytes(ndim, shape, cflash_dtype_size(dt), &n, &bytes, err, len)) return NULL;
    void* host = malloc(bytes ? bytes : 1);
    void* dev = cf_tool_alloc(bt->device, bytes ? bytes : 1, err, len);
    if (!host || !dev) {
        free(host);
        if (dev) cf_tool_free(bt->device, dev);
        if (!err[0]) snprintf(err, len, "out of memory for %zu bytes", bytes);
        return NULL;
    }
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        float x = (float)((double)(s >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
        cflash_store(host, dt, i, x);
    }
    int rc = cf_tool_copy(bt->device, dev, host, bytes, 1, err, len);
    free(host);
    if (rc) {
        cf_tool_free(bt->device, dev);
        return NULL;
    }
    bt->mem[slot] = dev;
    dl_init(t, dev, bt->device, dt, ndim, shape);
    return dev;
}

typedef struct bench_run {
    cflash_context* ctx;
    cflash_attn_params params;
    bench_tensors* t;
    int bwd;
    cflash_status status;
} bench_run;

static void run_once(void* arg) {
    bench_run* r = arg;
    bench_tensors* t = r->t;
    if (r->bwd)
        r->status = cflash_attn_bwd(r->ctx, &r->params, &t->dout, &t->q, &t->k, &t->v, &t->out,
                                    &t->lse, &t->dq, &t->dk, &t->dv);
    else
        r->status = cflash_attn_fwd(r->ctx, &r->params, &t->q, &t->k, &t->v, &t->out, &t->lse);
    if (t->device != kDLCPU) {
        char err[128];
        cf_tool_sync(t->device, err, sizeof err);
    }
}

/* Query-key pairs the convention counts: all, halved for causal with Sq == Sk, else exactly the
 * visible ones (windows, causal with Sq != Sk). */
static double pairs(const cf_problem* p) {
    const double full = (double)p->seqlen_q * (double)p->seqlen_k;
    const int window = p->window_left >= 0 || p->window_right >= 0;
    if (!p->causal && !window) return full;
    if (p->causal && !window && p->seqlen_q == p->seqlen_k) return full / 2;
    double n = 0;
    for (int64_t i = 0; i < p->seqlen_q; i++) {
        int64_t diag = i + p->seqlen_k - p->seqlen_q, lo = 0, hi = p->seqlen_k;
        int64_t wr = p->causal ? 0 : p->window_right;
        if (p->window_left >= 0 && diag - p->window_left > lo) lo = diag - p->window_left;
        if (wr >= 0 && diag + wr + 1 < hi) hi = diag + wr + 1;
        if (hi > lo) n += (double)(hi - lo);
    }
    return n;
}

/* ---- Issue 13's inputs: sinks, bias, tile-structured masks and lists ----------------------- */

/* The (query block, key block) pairs that --mask P or --block-sparse P keep: each with
 * probability P (a fixed xorshift), at least one per query block. */
static uint8_t* keep_blocks(int64_t nqb, int64_t nkb, float p) {
    uint8_t* k = calloc((size_t)(nqb * nkb) + 1, 1);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int64_t q = 0; k && q < nqb; q++) {
        int any = 0;
        for (int64_t j = 0; j < nkb; j++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            k[q * nkb + j] = (double)(s >> 11) / 9007199254740992.0 < p;
            any |= k[q * nkb + j];
        }
        if (!any) k[q * nkb + (q * 7) % nkb] = 1;
    }
    return k;
}

/* Visible pairs of the whole problem by the library's semantics (causal, window, chunk, kept
 * tiles); the fraction of Sq * Sk. */
static double visible_fraction(const cf_problem* p, const uint8_t* keep, int64_t nkb) {
    double n = 0;
    const int64_t Sq = p->seqlen_q, Sk = p->seqlen_k, bs = p->block_size;
    for (int64_t i = 0; i < Sq; i++) {
        const int64_t diag = i + Sk - Sq, wr = p->causal ? 0 : p->window_right;
        for (int64_t j = 0; j < Sk; j++) {
            if (wr >= 0 && j > diag + wr) continue;
            if (p->window_left >= 0 && j < diag - p->window_left) continue;
            if (p->chunk > 0 && (diag < 0 || diag / p->chunk != j / p->chunk)) continue;
            if (keep && !keep[(i / bs) * nkb + j / bs]) continue;
            n += 1;
        }
    }
    return Sq && Sk ? n / ((double)Sq * (double)Sk) : 0.0;
}

/* Allocates and fills what the flags ask for, points prm at it; the fraction of pairs visible. */
static int make_extras(bench_tensors* t, const cf_problem* p, cflash_attn_params* prm, double* frac,
                       char* err, size_t len) {
    const int64_t Sq = p->seqlen_q, Sk = p->seqlen_k, bs = p->block_size;
    const int64_t nqb = (Sq + bs - 1) / bs, nkb = (Sk + bs - 1) / bs;
    const float dens = p->mask > 0 ? p->mask : p->block_sparse;
    int64_t shp[4] = {1, 1, Sq, Sk};
    memcpy(t->shp, shp, sizeof shp);
    if (dens > 0 && !(t->keep = keep_blocks(nqb, nkb, dens))) {
        snprintf(err, len, "out of memory for the block map");
        return 0;
    }
    if (p->sinks) {
        if (!make(t, 10, &t->sinks, CFLASH_DTYPE_F32, 1, t->sha, 11, err, len)) return 0;
        prm->sinks = &t->sinks;
        if (p->bwd && !make(t, 11, &t->dsinks, CFLASH_DTYPE_F32, 1, t->sha, 12, err, len)) return 0;
        prm->dsinks = p->bwd ? &t->dsinks : NULL;
    }
    if (p->bias) {
        if (!make(t, 12, &t->bias, p->bias_dtype, 4, t->shp, 13, err, len)) return 0;
        prm->attn_bias = &t->bias;
        if (p->dbias && p->bwd) {
            if (!make(t, 13, &t->dbias, p->bias_dtype, 4, t->shp, 14, err, len)) return 0;
            prm->dbias = &t->dbias;
        }
    }
    if (p->mask > 0) {
        uint8_t* m = malloc((size_t)(Sq * Sk) + 1);
        void* dev = cf_tool_alloc(t->device, (size_t)(Sq * Sk) + 1, err, len);
        if (!m || !dev) {
            free(m);
            if (dev) cf_tool_free(t->device, dev);
            if (!err[0]) snprintf(err, len, "out of memory for the mask");
            return 0;
        }
        for (int64_t i = 0; i < Sq; i++)
            for (int64_t j = 0; j < Sk; j++)
                m[i * Sk + j] = t->keep[(i / bs) * nkb + j / bs];
        int rc = cf_tool_copy(t->device, dev, m, (size_t)(Sq * Sk), 1, err, len);
        free(m);
        t->mem[14] = dev;
        if (rc) return 0;
        dl_init(&t->mask, dev, t->device, CFLASH_DTYPE_F32, 4, t->shp);
        t->mask.dtype.code = kDLUInt, t->mask.dtype.bits = 8;
        prm->attn_mask = &t->mask;
    }
    if (p->block_sparse > 0) { /* host memory: the lists are read on the host */
        t->num = malloc(sizeof(int32_t) * (size_t)nqb);
        t->idx = malloc(sizeof(int32_t) * (size_t)(nqb * nkb));
        if (!t->num || !t->idx) {
            snprintf(err, len, "out of memory for the block lists");
            return 0;
        }
        for (int64_t q = 0; q < nqb; q++) {
            int32_t n = 0;
            for (int64_t j = 0; j < nkb; j++)
                if (t->keep[q * nkb + j]) t->idx[q * nkb + n++] = (int32_t)j;
            t->num[q] = n;
        }
        int64_t shn[3] = {1, 1, nqb}, shx[4] = {1, 1, nqb, nkb};
        memcpy(t->shn, shn, sizeof shn), memcpy(t->shx, shx, sizeof shx);
        dl_init(&t->bnum, t->num, kDLCPU, CFLASH_DTYPE_F32, 3, t->shn);
        dl_init(&t->bidx, t->idx, kDLCPU, CFLASH_DTYPE_F32, 4, t->shx);
        t->bnum.dtype.code = t->bidx.dtype.code = kDLInt;
        prm->block_kv_num = &t->bnum, prm->block_kv_indices = &t->bidx;
        prm->block_q = prm->block_k = bs;
    }
    prm->attention_chunk = p->chunk;
    *frac = visible_fraction(p, t->keep, nkb);
    return 1;
}

static const char* dtype_str(cflash_dtype d) {
    return d == CFLASH_DTYPE_F32 ? "fp32" : d == CFLASH_DTYPE_F16 ? "fp16" : "bf16";
}

int cf_cmd_bench(int argc, char** argv) {
    cf_problem pr;
    char err[512] = "";
    cf_problem_defaults(&pr);
    if (cf_problem_parse(&pr, argc, argv, 2, err, sizeof err)) {
        fprintf(stderr, "cflash bench: %s\n", err);
        return 2;
    }
    const int T = resolve_threads(pr.threads);
    const int64_t B = pr.batch, H = pr.heads, Hk = pr.heads_kv, Sq = pr.seqlen_q, Sk = pr.seqlen_k,
                  D = pr.head_dim, Dv = pr.head_dim_v;
    bench_tensors t;
    memset(&t, 0, sizeof t);
    t.device = pr.device;
    int64_t shq[4] = {B, Sq, H, D}, shk[4] = {B, Sk, Hk, D}, shv[4] = {B, Sk, Hk, Dv},
            sho[4] = {B, Sq, H, Dv}, shl[3] = {B, H, Sq}, sha[1] = {H};
    memcpy(t.shq, shq, sizeof shq), memcpy(t.shk, shk, sizeof shk), memcpy(t.shv, shv, sizeof shv);
    memcpy(t.sho, sho, sizeof sho), memcpy(t.shl, shl, sizeof shl), memcpy(t.sha, sha, sizeof sha);
    int ok = make(&t, 0, &t.q, pr.dtype, 4, t.shq, 1, err, sizeof err) &&
             make(&t, 1, &t.k, pr.dtype, 4, t.shk, 2, err, sizeof err) &&
             make(&t, 2, &t.v, pr.dtype, 4, t.shv, 3, err, sizeof err) &&
             make(&t, 3, &t.out, pr.dtype, 4, t.sho, 4, err, sizeof err) &&
             make(&t, 4, &t.lse, CFLASH_DTYPE_F32, 3, t.shl, 5, err, sizeof err);
    if (ok && pr.bwd)
        ok = make(&t, 5, &t.dout, pr.dtype, 4, t.sho, 6, err, sizeof err) &&
             make(&t, 6, &t.dq, pr.dtype, 4, t.shq, 7, err, sizeof err) &&
             make(&t, 7, &t.dk, pr.dtype, 4, t.shk, 8, err, sizeof err) &&
             make(&t, 8, &t.dv, pr.dtype, 4, t.shv, 9, err, sizeof err);
    if (ok && pr.alibi) {
        ok = make(&t, 9, &t.alibi, CFLASH_DTYPE_F32, 1, t.sha, 10, err, sizeof err) != NULL;
        if (ok) {
            float* s = malloc(sizeof(float) * (size_t)H);
            for (int64_t h = 0; h < H && s; h++)
                s[h] = powf(2.0f, -8.0f * (float)(h + 1) / (float)H);
            if (s)
                cf_tool_copy(t.device, t.alibi.data, s, sizeof(float) * (size_t)H, 1, err,
                             sizeof err);
            free(s);
        }
    }
    int rc = 0;
    if (!ok) {
        fprintf(stderr, "cflash bench: %s\n", err);
        rc = 1;
        goto done;
    }
    bench_run r;
    memset(&r, 0, sizeof r);
    r.t = &t;
    cflash_context_create(&r.ctx);
    cflash_context_set_threads(r.ctx, pr.threads);
    if (pr.backend && cflash_context_set_backend(r.ctx, pr.backend) != CFLASH_OK) {
        fprintf(stderr, "cflash bench: %s\n", cflash_last_error());
        rc = 2;
        goto done_ctx;
    }
    cflash_attn_params_init(&r.params);
    r.params.causal = pr.causal;
    r.params.window_left = pr.window_left;
    r.params.window_right = pr.window_right;
    r.params.softcap = pr.softcap;
    r.params.dropout_p = pr.dropout;
    r.params.seed = 42;
    r.params.alibi_slopes = pr.alibi ? &t.alibi : NULL;
    /* Issue 13: FLOPs count the visible pairs of tile masks, block lists and chunks exactly. */
    const int extra = pr.sinks || pr.bias || pr.mask > 0 || pr.block_sparse > 0 || pr.chunk > 0;
    double vis = -1.0;
    if (extra && !make_extras(&t, &pr, &r.params, &vis, err, sizeof err)) {
        fprintf(stderr, "cflash bench: %s\n", err);
        rc = 1;
        goto done_ctx;
    }
    const double npairs = pr.mask > 0 || pr.block_sparse > 0 || pr.chunk > 0
                              ? vis * (double)Sq * (double)Sk
                              : pairs(&pr);

    /* The peaks first, in this same process, so the fractions compare like with like. */
    const cf_peaks* pk = pr.device == kDLCPU ? cf_measure_peaks(T) : NULL;
    for (int bwd = 0; bwd <= pr.bwd; bwd++) {
        r.bwd = bwd;
        char ex[2048] = "", backend[64] = "?";
        cflash_context_set_explain(r.ctx, ex, sizeof ex); /* the next call names its backend */
        run_once(&r);
        const char* arrow = strstr(ex, "-> ");
        if (arrow) sscanf(arrow + 3, "%63s", backend);
        run_once(&r);
        if (r.status != CFLASH_OK) {
            fprintf(stderr, "cflash bench: %s failed: %s\n", bwd ? "attn_bwd" : "attn_fwd",
                    cflash_last_error());
            rc = 1;
            break;
        }
        for (int w = 0; w < pr.warmup; w++)
            run_once(&r);
        const double c0 = cf_cpu_s();
        const double ms = cf_bench_median_ms(run_once, &r, 0, pr.reps);
        const double cpu_ms = (cf_cpu_s() - c0) * 1e3 / pr.reps; /* mean CPU time per run */
        const double flops =
            4.0 * (double)B * (double)H * npairs * (double)(D + Dv) / 2.0 * (bwd ? 2.5 : 1.0);
        const double gflops = flops / (ms * 1e-3) * 1e-9;
        /* Per CPU-second times threads: robust on a shared machine (compare with peak_cpu). */
        const double gflops_cpu = flops / (cpu_ms * 1e-3) * 1e-9 * T;
        const cf_peaks* pkc = pk ? cf_measure_peaks_cpu(T) : NULL;
        /* The unit doing the matrix work. */
        const char* unit = "fp32_fma";
        double peak = pk ? pk->fma_f32_gflops : 0.0, peak_cpu = pkc ? pkc->fma_f32_gflops : 0.0;
        if (pk &&
            pr.dtype == CFLASH_DTYPE_BF16) { /* the bf16 kernels multiply on vdpbf16ps / AMX */
            if (!strcmp(backend, "cpu-amx") && pk->amx_bf16_gflops > 0)
                unit = "amx_bf16", peak = pk->amx_bf16_gflops, peak_cpu = pkc->amx_bf16_gflops;
            else if (!strcmp(backend, "cpu-avx512") && pk->bf16_dot_gflops > 0 && cpu_bf16_dot())
                unit = "avx512_bf16", peak = pk->bf16_dot_gflops, peak_cpu = pkc->bf16_dot_gflops;
            else if ((!strcmp(backend, "cpu-neon") || !strcmp(backend, "cpu-sve")) &&
                     pk->bf16_dot_gflops > 0)
                unit = "neon_bfmmla", peak = pk->bf16_dot_gflops, peak_cpu = pkc->bf16_dot_gflops;
        }
        /* fp16 on cpu-amx: tdpfp16ps, or bf16 pairs (three tdpbf16ps a product, counted once) */
        if (pk && pr.dtype == CFLASH_DTYPE_F16 && !strcmp(backend, "cpu-amx") &&
            pk->amx_bf16_gflops > 0)
            unit = "amx_bf16", peak = pk->amx_bf16_gflops, peak_cpu = pkc->amx_bf16_gflops;
        if (!pk) unit = "none";
        const double frac = peak > 0 ? gflops / peak : 0.0;
        const double frac_cpu = peak_cpu > 0 ? gflops_cpu / peak_cpu : 0.0;
        if (pr.json) {
            printf("{\"op\":\"%s\",\"backend\":\"%s\",\"dtype\":\"%s\",\"B\":%lld,\"H\":%lld,"
                   "\"Hk\":%lld,\"Sq\":%lld,\"Sk\":%lld,\"D\":%lld,\"Dv\":%lld,\"causal\":%d,"
                   "\"window_left\":%lld,\"window_right\":%lld,\"softcap\":%g,\"alibi\":%d,"
                   "\"dropout\":%g,\"threads\":%d,\"warmup\":%d,\"reps\":%d,\"ms\":%.4f,"
                   "\"gflops\":%.2f,\"peak_unit\":\"%s\",\"peak_gflops\":%.1f,"
                   "\"peak_fraction\":%.4f,\"cpu_ms\":%.4f,\"gflops_cpu\":%.2f,"
                   "\"peak_gflops_cpu\":%.1f,\"peak_fraction_cpu\":%.4f,\"sinks\":%d,\"bias\":%d,"
                   "\"bias_dtype\":\"%s\","
                   "\"dbias\":%d,\"mask\":%g,\"block_sparse\":%g,\"block_size\":%lld,"
                   "\"chunk\":%lld,\"pairs\":%.0f}\n",
                   bwd ? "attn_bwd" : "attn_fwd", backend, dtype_str(pr.dtype), (long long)B,
                   (long long)H, (long long)Hk, (long long)Sq, (long long)Sk, (long long)D,
                   (long long)Dv, pr.causal, (long long)pr.window_left, (long long)pr.window_right,
                   (double)pr.softcap, pr.alibi, (double)pr.dropout, T, pr.warmup, pr.reps, ms,
                   gflops, unit, peak, frac, cpu_ms, gflops_cpu, peak_cpu, frac_cpu, pr.sinks,
                   pr.bias, dtype_str(pr.bias_dtype), pr.dbias && bwd, (double)pr.mask,
                   (double)pr.block_sparse, (long long)pr.block_size, (long long)pr.chunk, npairs);
        } else {
            char feat[160] = "";
            if (pr.sinks) strcat(feat, " sinks");
            if (pr.bias) strcat(feat, pr.dbias && bwd ? " bias+dbias" : " bias");
            if (pr.bias && pr.bias_dtype != CFLASH_DTYPE_F32) strcat(feat, "(dtype)");
            size_t u = strlen(feat);
            if (pr.mask > 0)
                u += (size_t)snprintf(feat + u, sizeof feat - u, " mask%g", (double)pr.mask);
            if (pr.block_sparse > 0)
                u += (size_t)snprintf(feat + u, sizeof feat - u, " blocks%g",
                                      (double)pr.block_sparse);
            if (pr.mask > 0 || pr.block_sparse > 0)
                u += (size_t)snprintf(feat + u, sizeof feat - u, "/%lld", (long long)pr.block_size);
            if (pr.chunk > 0)
                snprintf(feat + u, sizeof feat - u, " chunk%lld", (long long)pr.chunk);
            printf("%s %s B%lld H%lld/%lld Sq%lld Sk%lld D%lld/%lld%s%s threads %d, %s: %.3f ms, "
                   "%.1f GFLOP/s",
                   bwd ? "attn_bwd" : "attn_fwd", dtype_str(pr.dtype), (long long)B, (long long)H,
                   (long long)Hk, (long long)Sq, (long long)Sk, (long long)D, (long long)Dv,
                   pr.causal ? " causal" : "", feat, T, backend, ms, gflops);
            if (peak > 0)
                printf(", %.1f%% of the %s peak (%.1f GFLOP/s); per CPU-second: %.1f%% of %.1f\n",
                       100.0 * frac, unit, peak, 100.0 * frac_cpu, peak_cpu);
            else
                printf("\n");
        }
        fflush(stdout);
    }
done_ctx:
    cflash_context_free(r.ctx);
done:
    for (int i = 0; i < 16; i++)
        if (t.mem[i]) cf_tool_free(t.device, t.mem[i]);
    free(t.num), free(t.idx), free(t.keep);
    return rc;
}
