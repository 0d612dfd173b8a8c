/* Paired A/B timing of the attention call (cflash_attn_fwd, and cflash_attn_bwd with BWD=1)
 * across builds of libcflash, in one process, as bench/kv_ab.c does for the decode: each build's
 * library is dlopen'ed (RTLD_LOCAL | RTLD_DEEPBIND), and calls alternate between the builds call
 * by call, so that every build sees the same machine state. Inputs in (B, S, H, D) layout,
 * values in [-1, 1). Prints each build's p10 and median and the median's GFLOP/s (DESIGN.md's
 * convention: forward 4 B H Sq Sk D, backward 2.5 times that).
 *
 *   cc -O2 bench/attn_ab.c -Iinclude -ldl -o /tmp/attn_ab
 *   S=4096 H=16 D=128 T=2 R=7 /tmp/attn_ab DIR_A DIR_B ...   (DIR/libcflash.so.1 each: a copy)
 * Env: B (1), H (16), HK (H), SQ and SK (S, default 1024), D (128), DT (fp32 | bf16 | fp16),
 * C (1: causal), T threads (2), R timed calls per build (7), BWD (0). */
#include "ab_util.h"
#include <cflash.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef cflash_status (*fwd_fn)(cflash_context*, const cflash_attn_params*, const DLTensor*,
                                const DLTensor*, const DLTensor*, DLTensor*, DLTensor*);
typedef cflash_status (*bwd_fn)(cflash_context*, const cflash_attn_params*, const DLTensor*,
                                const DLTensor*, const DLTensor*, const DLTensor*, const DLTensor*,
                                const DLTensor*, DLTensor*, DLTensor*, DLTensor*);
typedef struct {
    cflash_context* ctx;
    fwd_fn fwd;
    bwd_fn bwd;
    double *tf, *tb;
} build;

static uint64_t rng = 88172645463325252ull;
static float rndf(void) { /* in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)(rng >> 40) * 0x1p-23f - 1.0f;
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

static double median(double* t, int n) {
    qsort(t, (size_t)n, sizeof(double), ab_cmp);
    return t[n / 2];
}

int main(int argc, char** argv) {
    const int thr = (int)ab_env("T", 2), reps = (int)ab_env("R", 7), bwd = (int)ab_env("BWD", 0);
    const int64_t B = ab_env("B", 1), H = ab_env("H", 16), Hk = ab_env("HK", H),
                  S = ab_env("S", 1024), Sq = ab_env("SQ", S), Sk = ab_env("SK", S),
                  D = ab_env("D", 128);
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
        L[i].tf = malloc(sizeof(double) * (size_t)reps);
        L[i].tb = malloc(sizeof(double) * (size_t)reps);
        if (!L[i].fwd || !L[i].bwd)
            return fprintf(stderr, "%s: not a usable libcflash\n", argv[i + 1]), 1;
        if (!api) api = (void*)dlsym(h, "cflash_attn_params_init");
    }
    const size_t nq = (size_t)(B * Sq * H * D), nk = (size_t)(B * Sk * Hk * D);
    void *q = fill(nq, bits, f16), *k = fill(nk, bits, f16), *v = fill(nk, bits, f16);
    void *o = fill(nq, bits, f16), *dout = fill(nq, bits, f16);
    void *dq = fill(nq, bits, f16), *dk = fill(nk, bits, f16), *dv = fill(nk, bits, f16);
    float* lse = malloc(sizeof(float) * (size_t)(B * H * Sq));
    int64_t qs[4] = {B, Sq, H, D}, ks[4] = {B, Sk, Hk, D}, ls[3] = {B, H, Sq};
    const DLDataType dd = {bits == 32 || f16 ? kDLFloat : kDLBfloat, (uint8_t)bits, 1},
                     f32 = {kDLFloat, 32, 1};
    DLTensor tq = {q, {kDLCPU, 0}, 4, dd, qs, NULL, 0}, to = {o, {kDLCPU, 0}, 4, dd, qs, NULL, 0};
    DLTensor tk = {k, {kDLCPU, 0}, 4, dd, ks, NULL, 0}, tv = {v, {kDLCPU, 0}, 4, dd, ks, NULL, 0};
    DLTensor tdo = {dout, {kDLCPU, 0}, 4, dd, qs, NULL, 0},
             tdq = {dq, {kDLCPU, 0}, 4, dd, qs, NULL, 0};
    DLTensor tdk = {dk, {kDLCPU, 0}, 4, dd, ks, NULL, 0},
             tdv = {dv, {kDLCPU, 0}, 4, dd, ks, NULL, 0};
    DLTensor tl = {lse, {kDLCPU, 0}, 3, f32, ls, NULL, 0};
    cflash_attn_params p;
    api(&p);
    p.causal = (int)ab_env("C", 0);
    for (int r = -1; r < reps; r++)
        for (int i = 0; i < nb; i++) {
            double a = ab_now();
            if (L[i].fwd(L[i].ctx, &p, &tq, &tk, &tv, &to, &tl))
                return fprintf(stderr, "%s: the forward failed\n", argv[i + 1]), 1;
            if (r >= 0) L[i].tf[r] = ab_now() - a;
            if (!bwd) continue;
            a = ab_now();
            if (L[i].bwd(L[i].ctx, &p, &tdo, &tq, &tk, &tv, &to, &tl, &tdq, &tdk, &tdv))
                return fprintf(stderr, "%s: the backward failed\n", argv[i + 1]), 1;
            if (r >= 0) L[i].tb[r] = ab_now() - a;
        }
    double flops = 4.0 * (double)(B * H * Sq * Sk * D);
    if (p.causal && Sq == Sk) flops /= 2;
    for (int i = 0; i < nb; i++) {
        const double mf = median(L[i].tf, reps);
        printf("%-24s %s B%lld H%lld/%lld Sq%lld Sk%lld D%lld%s T%d fwd: p10 %.2f median %.2f ms "
               "(%.1f GFLOP/s)",
               argv[i + 1], dt, (long long)B, (long long)H, (long long)Hk, (long long)Sq,
               (long long)Sk, (long long)D, p.causal ? " causal" : "", thr,
               L[i].tf[reps / 10] * 1e3, mf * 1e3, flops / mf * 1e-9);
        if (bwd) {
            const double mb = median(L[i].tb, reps);
            printf(", bwd: p10 %.2f median %.2f ms (%.1f GFLOP/s)", L[i].tb[reps / 10] * 1e3,
                   mb * 1e3, 2.5 * flops / mb * 1e-9);
        }
        printf("\n");
    }
    return 0;
}
