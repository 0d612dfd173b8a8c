/* Paired A/B timing of the KV-cache decode call across builds of libcflash, in one process: each
 * build's library is dlopen'ed (RTLD_LOCAL | RTLD_DEEPBIND: its own copy), and calls alternate
 * between them call by call, so every build sees the same machine state (on a noisy 2-core VM the
 * runs of separate processes differed by 20-40 % from minute to minute; paired calls keep the
 * ratio). Shape: B1 H32 Hk8 D128 Sq1, bf16 q and out (fp16 with F=1), cache of SK keys: q's
 * dtype (Q=0), fp8 e4m3 (Q=1) or int8 (Q=3, fp32 scales per (token, head)). Prints each build's
 * p10 and median.
 *
 *   cc -O2 bench/kv_ab.c -Iinclude -ldl -o /tmp/kv_ab
 *   Q=3 T=2 SK=131072 R=15 /tmp/kv_ab DIR_A DIR_B ...   (DIR/libcflash.so.1 each: a copy)
 * Env: Q (0), T threads (1), SK (512), R calls per build (200), F (0: bf16 q; 1: fp16), PAGE (0:
 * unpaged; N: pages of N rows through a block table, in a scattered order, or BT=1 in order), HUGE
 * (1: the caches on 2 MB pages, madvise MADV_HUGEPAGE), NS (0: num_splits, the heuristic). */
#include "ab_util.h"
#include <cflash.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

typedef cflash_status (*fwd_fn)(cflash_context*, const cflash_attn_params*,
                                const cflash_kvcache_params*, const DLTensor*, const DLTensor*,
                                const DLTensor*, DLTensor*, DLTensor*);
typedef struct {
    cflash_context* ctx;
    fwd_fn fwd;
    double* t;
} build;

static uint64_t rng = 88172645463325252ull;
static unsigned rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (unsigned)(rng >> 33);
}

/* n bytes, on 2 MB pages where HUGE=1 asks (advised before the first touch). */
static void* ab_alloc(size_t n) {
    if (!ab_env("HUGE", 0)) return malloc(n);
    void* p = NULL;
    const size_t m = (n + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    if (posix_memalign(&p, 2u << 20, m)) return NULL;
    madvise(p, m, MADV_HUGEPAGE);
    return p;
}

int main(int argc, char** argv) {
    const int quant = (int)ab_env("Q", 0), thr = (int)ab_env("T", 1), reps = (int)ab_env("R", 200),
              f16 = (int)ab_env("F", 0);
    const int64_t Sk = ab_env("SK", 512), B = 1, H = 32, Hk = 8, D = 128, pg = ab_env("PAGE", 0);
    const int64_t np = pg ? (Sk + pg - 1) / pg : 0, rows = pg ? np * pg : Sk; /* cache rows */
    const int nb = argc - 1;
    if (nb < 1) return fprintf(stderr, "usage: kv_ab DIR...\n"), 2;
    build* L = calloc((size_t)nb, sizeof *L);
    void (*api)(cflash_attn_params*) = NULL;
    void (*kpi)(cflash_kvcache_params*) = NULL;
    for (int i = 0; i < nb; i++) {
        void* h = ab_open(argv[i + 1], thr, &L[i].ctx);
        if (!h) return 1;
        L[i].fwd = (fwd_fn)dlsym(h, "cflash_attn_kvcache_fwd");
        L[i].t = malloc(sizeof(double) * (size_t)reps);
        if (!L[i].fwd) return fprintf(stderr, "%s: not a usable libcflash\n", argv[i + 1]), 1;
        if (!api) api = (void*)dlsym(h, "cflash_attn_params_init");
        if (!kpi) kpi = (void*)dlsym(h, "cflash_kvcache_params_init");
    }
    const size_t es = quant ? 1 : 2, n = (size_t)(B * rows * Hk * D);
    uint8_t *kc = ab_alloc(n * es), *vc = ab_alloc(n * es);
    for (size_t i = 0; i < n * es; i++) {
        if (quant) { /* any code but e4m3's NaN (an int8 code is any byte) */
            kc[i] = (uint8_t)rnd(), vc[i] = (uint8_t)rnd();
            if (quant == 1 && (kc[i] & 0x7f) == 0x7f) kc[i] = 0x30;
            if (quant == 1 && (vc[i] & 0x7f) == 0x7f) vc[i] = 0x31;
        } else { /* bf16 in [1, 4) (fp16: in [1.75, 2.5)): low byte random, high 0x3f or 0x40 */
            kc[i] = i & 1 ? (uint8_t)(0x3f + (rnd() & 1)) : (uint8_t)rnd();
            vc[i] = i & 1 ? (uint8_t)(0x3f + (rnd() & 1)) : (uint8_t)rnd();
        }
    }
    uint16_t *q = malloc(sizeof(uint16_t) * (size_t)(H * D)),
             *o = malloc(sizeof(uint16_t) * (size_t)(H * D));
    for (int64_t i = 0; i < H * D; i++)
        q[i] = (uint16_t)(0x3c00 + (rnd() & 0xff));
    float *ks = malloc(sizeof(float) * (size_t)(rows * Hk)),
          *vs = malloc(sizeof(float) * (size_t)(rows * Hk));
    for (int64_t i = 0; i < rows * Hk; i++)
        ks[i] = 0.01f * (float)(1 + (rnd() & 7)), vs[i] = 0.01f * (float)(1 + (rnd() & 7));
    int32_t* bt = malloc(sizeof(int32_t) * (size_t)(np ? np : 1));
    for (int64_t i = 0; i < np; i++)
        bt[i] = ab_env("BT", 0) ? (int32_t)i : (int32_t)((i * 7919) % np);
    int64_t qs[4] = {B, 1, H, D}, cs[4] = {B, Sk, Hk, D}, ss[3] = {B, Sk, Hk}, bs[2] = {1, np};
    if (pg) cs[0] = ss[0] = np, cs[1] = ss[1] = pg;
    const DLDataType bf = {f16 ? kDLFloat : kDLBfloat, 16, 1}, u8 = {kDLUInt, 8, 1},
                     i8 = {kDLInt, 8, 1}, f32 = {kDLFloat, 32, 1}, i32 = {kDLInt, 32, 1};
    DLTensor tbt = {bt, {kDLCPU, 0}, 2, i32, bs, NULL, 0};
    const DLDataType cdt = quant == 3 ? i8 : quant ? u8 : bf;
    DLTensor tq = {q, {kDLCPU, 0}, 4, bf, qs, NULL, 0}, to = {o, {kDLCPU, 0}, 4, bf, qs, NULL, 0};
    DLTensor tk = {kc, {kDLCPU, 0}, 4, cdt, cs, NULL, 0},
             tv = {vc, {kDLCPU, 0}, 4, cdt, cs, NULL, 0};
    DLTensor tks = {ks, {kDLCPU, 0}, 3, f32, ss, NULL, 0},
             tvs = {vs, {kDLCPU, 0}, 3, f32, ss, NULL, 0};
    cflash_attn_params p;
    cflash_kvcache_params kp;
    api(&p);
    kpi(&kp);
    p.softmax_scale = 0.088f;
    kp.cache_quant = quant;
    kp.cache_seqlen = Sk;
    kp.num_splits = (int)ab_env("NS", 0);
    if (pg) kp.block_table = &tbt;
    if (quant == 3) kp.k_scales = &tks, kp.v_scales = &tvs;
    for (int r = -3; r < reps; r++)
        for (int i = 0; i < nb; i++) {
            const double a = ab_now();
            if (L[i].fwd(L[i].ctx, &p, &kp, &tq, &tk, &tv, &to, NULL))
                return fprintf(stderr, "%s: the call failed\n", argv[i + 1]), 1;
            if (r >= 0) L[i].t[r] = ab_now() - a;
        }
    for (int i = 0; i < nb; i++) {
        qsort(L[i].t, (size_t)reps, sizeof(double), ab_cmp);
        printf("%-24s %s Q%d T%d Sk %lld page %lld%s: p10 %.4f median %.4f ms\n", argv[i + 1],
               f16 ? "fp16" : "bf16", quant, thr, (long long)Sk, (long long)pg,
               ab_env("HUGE", 0) ? " 2MB" : "", L[i].t[reps / 10] * 1e3, L[i].t[reps / 2] * 1e3);
    }
    return 0;
}
