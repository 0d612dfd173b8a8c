/* Paired A/B timing of the attention call (cflash_attn_fwd, and cflash_attn_bwd with BWD=1)
 * across builds of libcflash, in one process, as bench/kv_ab.c does for the decode: each build's
 * library is dlopen'ed (RTLD_LOCAL | RTLD_DEEPBIND), and calls alternate between the builds call
 * by call, so that every build sees the same machine state. Inputs in (B, S, H, D) layout,
 * values in [-1, 1). Prints each build's p10 and median and the median's GFLOP/s (DESIGN.md's
 * convention: forward 4 B H Sq Sk D, backward 2.5 times that).
 *
 *   cc -O2 bench/attn_ab.c -Iinclude -ldl -o /tmp/attn_ab
 *   S=4096 H=16 D=128 T=2 R=7 /tmp/attn_ab DIR_A DIR_B ...   (DIR/libcflash.so.1 each: a copy;
 *   DIR@BACKEND forces a backend: one build, two backends)
 * Env: B (1), H (16), HK (H), SQ and SK (S, default 1024), D (128), DT (fp32 | bf16 | fp16),
 * C (1: causal), T threads (2), R timed calls per build (7), BWD (0), PAGE (0; N > 0: the varlen
 * call with paged K / V, pages of N keys in a shuffled block_table, as vLLM calls flash-attn),
 * MASK (0; P in (0, 1): a boolean mask (B, 1, Sq, Sk) keeping each run of MBS keys (1) of a row
 * with probability P; batch calls), TREE (0; 1: a speculative decoding step's tree mask (B, 1, Sq,
 * Sk): every row sees the first Sk - Sq keys, and of the last Sq keys (the draft) its own and its
 * ancestors', each draft token's parent drawn at random among the earlier ones), FLOAT (0; 1: the
 * mask as an fp32 bias of 0 and -inf, as PyTorch's float masks are). */
#include "ab_util.h"
#include <cflash.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef cflash_status (*fwd_fn)(cflash_context*, const cflash_attn_params*, const DLTensor*,
                                const DLTensor*, const DLTensor*, DLTensor*, DLTensor*);
typedef cflash_status (*bwd_fn)(cflash_context*, const cflash_attn_params*, const DLTensor*,
                                const DLTensor*, const DLTensor*, const DLTensor*, const DLTensor*,
                                const DLTensor*, DLTensor*, DLTensor*, DLTensor*);
typedef cflash_status (*vfwd_fn)(cflash_context*, const cflash_attn_params*, const DLTensor*,
                                 const DLTensor*, const DLTensor*, const DLTensor*, const DLTensor*,
                                 int64_t, int64_t, DLTensor*, DLTensor*);
typedef cflash_status (*vbwd_fn)(cflash_context*, const cflash_attn_params*, const DLTensor*,
                                 const DLTensor*, const DLTensor*, const DLTensor*, const DLTensor*,
                                 const DLTensor*, const DLTensor*, const DLTensor*, int64_t,
                                 int64_t, DLTensor*, DLTensor*, DLTensor*);
typedef struct {
    cflash_context* ctx;
    fwd_fn fwd;
    bwd_fn bwd;
    vfwd_fn vfwd;
    vbwd_fn vbwd;
    double *tf, *tb;
} build;

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd64(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static float rndf(void) { /* in [-1, 1) */
    return (float)(rnd64() >> 40) * 0x1p-23f - 1.0f;
}

/* n values in [-1, 1) of dtype bits (32: fp32; 16: bf16 or fp16 by f16). */
static void* fill(size_t n, int bits, int f16) {
    void* p = malloc(n * (size_t)bits / 8);
    for (size_t i = 0; i < n; i++) {
        float x = rndf();
        if (bits == 32) {
            ((float*)p)[i] = x;
        } else if (!f16) {
            uint32_t u;
            memcpy(&u, &x, 4);
            ((uint16_t*)p)[i] = (uint16_t)(u >> 16);
        } else { /* fp16 of |x| in [2^-8, 1): exponent 7..14, 10 random mantissa bits */
            const unsigned e = 7 + (unsigned)((rng >> 20) & 7), m = (unsigned)(rng & 0x3ff);
            ((uint16_t*)p)[i] = (uint16_t)((x < 0 ? 0x8000u : 0u) | e << 10 | m);
        }
    }
    return p;
}

/* A contiguous host tensor over data. */
static DLTensor ten(void* data, int ndim, DLDataType dt, int64_t* shape) {
    DLTensor t = {data, {kDLCPU, 0}, ndim, dt, shape, NULL, 0};
    return t;
}

static double median(double* t, int n) {
    qsort(t, (size_t)n, sizeof(double), ab_cmp);
    return t[n / 2];
}

int main(int argc, char** argv) {
    const int thr = (int)ab_env("T", 2), reps = (int)ab_env("R", 7), bwd = (int)ab_env("BWD", 0);
    const int64_t B = ab_env("B", 1), H = ab_env("H", 16), Hk = ab_env("HK", H),
                  S = ab_env("S", 1024), Sq = ab_env("SQ", S), Sk = ab_env("SK", S),
                  D = ab_env("D", 128), page = ab_env("PAGE", 0);
    const char* dt = getenv("DT") ? getenv("DT") : "fp32";
    const int bits = strcmp(dt, "fp32") ? 16 : 32, f16 = !strcmp(dt, "fp16");
    const int nb = argc - 1;
    if (nb < 1) return fprintf(stderr, "usage: attn_ab DIR...\n"), 2;
    build* L = calloc((size_t)nb, sizeof *L);
    void (*api)(cflash_attn_params*) = NULL;
    for (int i = 0; i < nb; i++) {
        void* h = ab_open(argv[i + 1], thr, &L[i].ctx);
        if (!h) return 1;
        L[i].fwd = (fwd_fn)dlsym(h, "cflash_attn_fwd");
        L[i].bwd = (bwd_fn)dlsym(h, "cflash_attn_bwd");
        L[i].vfwd = (vfwd_fn)dlsym(h, "cflash_attn_varlen_fwd");
        L[i].vbwd = (vbwd_fn)dlsym(h, "cflash_attn_varlen_bwd");
        L[i].tf = malloc(sizeof(double) * (size_t)reps);
        L[i].tb = malloc(sizeof(double) * (size_t)reps);
        if (!L[i].fwd || !L[i].bwd || !L[i].vfwd || !L[i].vbwd)
            return fprintf(stderr, "%s: not a usable libcflash\n", argv[i + 1]), 1;
        if (!api) api = (void*)dlsym(h, "cflash_attn_params_init");
    }
    /* paged: each sequence's keys in ceil(Sk / page) pages of the pool, in shuffled order */
    const int64_t mp = page > 0 ? (Sk + page - 1) / page : 0, npages = B * mp;
    const size_t nq = (size_t)(B * Sq * H * D),
                 nk = (size_t)((page > 0 ? npages * page : B * Sk) * Hk * D);
    void *q = fill(nq, bits, f16), *k = fill(nk, bits, f16), *v = fill(nk, bits, f16);
    void *o = fill(nq, bits, f16), *dout = fill(nq, bits, f16);
    void *dq = fill(nq, bits, f16), *dk = fill(nk, bits, f16), *dv = fill(nk, bits, f16);
    float* lse = malloc(sizeof(float) * (size_t)(B * H * Sq));
    int64_t qs[4] = {B, Sq, H, D}, ks[4] = {B, Sk, Hk, D}, ls[3] = {B, H, Sq};
    const DLDataType dd = {bits == 32 || f16 ? kDLFloat : kDLBfloat, (uint8_t)bits, 1},
                     f32 = {kDLFloat, 32, 1};
    DLTensor tq = ten(q, 4, dd, qs), to = ten(o, 4, dd, qs);
    DLTensor tk = ten(k, 4, dd, ks), tv = ten(v, 4, dd, ks);
    DLTensor tdo = ten(dout, 4, dd, qs), tdq = ten(dq, 4, dd, qs);
    DLTensor tdk = ten(dk, 4, dd, ks), tdv = ten(dv, 4, dd, ks);
    DLTensor tl = ten(lse, 3, f32, ls);
    cflash_attn_params p;
    api(&p);
    p.causal = (int)ab_env("C", 0);
    /* the varlen call's views of the same buffers, and the block table */
    int32_t* table = malloc(sizeof(int32_t) * (size_t)(npages > 0 ? npages : 1));
    int32_t *cuq = malloc(sizeof(int32_t) * (size_t)(B + 1)),
            *cuk = malloc(sizeof(int32_t) * (size_t)(B + 1));
    for (int64_t i = 0; i < npages; i++)
        table[i] = (int32_t)i;
    for (int64_t i = npages - 1; i > 0; i--) { /* Fisher-Yates */
        const int64_t j = (int64_t)(rnd64() % (uint64_t)(i + 1));
        const int32_t x = table[i];
        table[i] = table[j], table[j] = x;
    }
    for (int64_t b = 0; b <= B; b++)
        cuq[b] = (int32_t)(b * Sq), cuk[b] = (int32_t)(b * Sk);
    int64_t vqs[3] = {B * Sq, H, D}, vks[4] = {npages, page, Hk, D}, vls[2] = {H, B * Sq},
            ts[2] = {B, mp}, cs[1] = {B + 1};
    const DLDataType i32 = {kDLInt, 32, 1};
    DLTensor vq = ten(q, 3, dd, vqs), vo = ten(o, 3, dd, vqs);
    DLTensor vk = ten(k, 4, dd, vks), vv = ten(v, 4, dd, vks);
    DLTensor vdo = ten(dout, 3, dd, vqs), vdq = ten(dq, 3, dd, vqs);
    DLTensor vdk = ten(dk, 4, dd, vks), vdv = ten(dv, 4, dd, vks);
    DLTensor vl = ten(lse, 2, f32, vls);
    DLTensor tt = ten(table, 2, i32, ts);
    DLTensor tcq = ten(cuq, 1, i32, cs), tck = ten(cuk, 1, i32, cs);
    if (page > 0) p.block_table = &tt;
    const double keep = (double)ab_env("MASK", 0) / 100.0; /* (ab_env reads integers: percent) */
    const int64_t mbs = ab_env("MBS", 1) > 0 ? ab_env("MBS", 1) : 1, ms[4] = {B, 1, Sq, Sk};
    uint8_t* mask = malloc((size_t)(B * Sq * Sk));
    for (int64_t r = 0; r < B * Sq; r++)
        for (int64_t j = 0; j < Sk; j += mbs) {
            const uint8_t on = (double)(rnd64() >> 11) * 0x1p-53 < keep;
            for (int64_t t = j; t < j + mbs && t < Sk; t++)
                mask[r * Sk + t] = on;
        }
    const int tree = (int)ab_env("TREE", 0) && Sq <= Sk;
    int64_t* parent = malloc(sizeof(int64_t) * (size_t)Sq);
    for (int64_t b = 0; tree && b < B; b++)
        for (int64_t i = 0; i < Sq; i++) {
            uint8_t* m = mask + (b * Sq + i) * Sk;
            parent[i] = i ? (int64_t)(rnd64() % (uint64_t)i) : -1;
            for (int64_t j = 0; j < Sk; j++)
                m[j] = j < Sk - Sq;
            for (int64_t a = i; a >= 0; a = parent[a])
                m[Sk - Sq + a] = 1;
        }
    DLTensor tm = ten(mask, 4, (DLDataType){kDLUInt, 8, 1}, (int64_t*)ms);
    float* fmask = malloc(sizeof(float) * (size_t)(B * Sq * Sk));
    for (int64_t n = 0; n < B * Sq * Sk; n++)
        fmask[n] = mask[n] ? 0.0f : -INFINITY;
    DLTensor tfm = ten(fmask, 4, f32, (int64_t*)ms);
    if ((keep > 0.0 || tree) && page <= 0) {
        if (ab_env("FLOAT", 0))
            p.attn_bias = &tfm;
        else
            p.attn_mask = &tm;
    }
    for (int r = -1; r < reps; r++)
        for (int i = 0; i < nb; i++) {
            double a = ab_now();
            if (page > 0 ? L[i].vfwd(L[i].ctx, &p, &vq, &vk, &vv, &tcq, &tck, Sq, Sk, &vo, &vl)
                         : L[i].fwd(L[i].ctx, &p, &tq, &tk, &tv, &to, &tl))
                return fprintf(stderr, "%s: the forward failed\n", argv[i + 1]), 1;
            if (r >= 0) L[i].tf[r] = ab_now() - a;
            if (!bwd) continue;
            a = ab_now();
            if (page > 0 ? L[i].vbwd(L[i].ctx, &p, &vdo, &vq, &vk, &vv, &vo, &vl, &tcq, &tck, Sq,
                                     Sk, &vdq, &vdk, &vdv)
                         : L[i].bwd(L[i].ctx, &p, &tdo, &tq, &tk, &tv, &to, &tl, &tdq, &tdk, &tdv))
                return fprintf(stderr, "%s: the backward failed\n", argv[i + 1]), 1;
            if (r >= 0) L[i].tb[r] = ab_now() - a;
        }
    double flops = 4.0 * (double)(B * H * Sq * Sk * D);
    if (p.causal && Sq == Sk) flops /= 2;
    for (int i = 0; i < nb; i++) {
        const double mf = median(L[i].tf, reps);
        printf("%-24s %s B%lld H%lld/%lld Sq%lld Sk%lld D%lld%s%s%s T%d fwd: p10 %.2f median "
               "%.2f ms (%.1f GFLOP/s)",
               argv[i + 1], dt, (long long)B, (long long)H, (long long)Hk, (long long)Sq,
               (long long)Sk, (long long)D, p.causal ? " causal" : "", page > 0 ? " paged" : "",
               p.attn_mask ? " mask" : "", thr, L[i].tf[reps / 10] * 1e3, mf * 1e3,
               flops / mf * 1e-9);
        if (bwd) {
            const double mb = median(L[i].tb, reps);
            printf(", bwd: p10 %.2f median %.2f ms (%.1f GFLOP/s)", L[i].tb[reps / 10] * 1e3,
                   mb * 1e3, 2.5 * flops / mb * 1e-9);
        }
        printf("\n");
    }
    return 0;
}
