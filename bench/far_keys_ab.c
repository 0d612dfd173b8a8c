/* Paired A/B timing of cflash_attn_mask_far_keys across builds of libcflash, in one process (calls
 * alternate between the builds, as kv_ab.c's): a transformers causal mask (B, 1, S, S), 0 on and
 * below the diagonal and the dtype's finfo.min above it, into a uint8 keep. The call takes no
 * context: set its threads with OMP_NUM_THREADS. Prints each build's p10 and median.
 *
 *   cc -O2 bench/far_keys_ab.c -Iinclude -ldl -o /tmp/far_keys_ab
 *   DT=bf16 S=2048 R=41 OMP_NUM_THREADS=2 /tmp/far_keys_ab DIR_A DIR_B ...
 * Env: DT (bf16 | fp16 | fp32), S (2048), B (1), R calls per build (21). */
#include "ab_util.h"
#include <cflash.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef cflash_status (*far_keys_fn)(const DLTensor*, double, DLTensor*, int*);

int main(int argc, char** argv) {
    const int64_t S = ab_env("S", 2048), B = ab_env("B", 1);
    const int R = (int)ab_env("R", 21), nl = argc - 1;
    const char* dt = getenv("DT") ? getenv("DT") : "bf16";
    const int f32 = !strcmp(dt, "fp32"), f16 = !strcmp(dt, "fp16");
    if (nl < 1 || nl > 8 || R < 1 || S < 1 || B < 1 || (!f32 && !f16 && strcmp(dt, "bf16")))
        return fprintf(stderr, "usage: [DT=bf16|fp16|fp32 S= B= R=] %s DIR...\n", argv[0]), 2;
    far_keys_fn f[8];
    for (int i = 0; i < nl; i++) {
        cflash_context* ctx;
        void* h = ab_open(argv[i + 1], 1, &ctx);
        if (!h || !(f[i] = (far_keys_fn)dlsym(h, "cflash_attn_mask_far_keys")))
            return fprintf(stderr, "%s: no cflash_attn_mask_far_keys\n", argv[i + 1]), 1;
    }
    const int64_t n = B * S * S, es = f32 ? 4 : 2;
    int64_t shape[4] = {B, 1, S, S};
    void* bias = malloc((size_t)(n * es));
    uint8_t* keep = malloc((size_t)n);
    double* t = malloc(sizeof(double) * (size_t)(nl * R));
    if (!bias || !keep || !t) return fprintf(stderr, "out of memory\n"), 1;
    for (int64_t e = 0; e < n; e++) {
        const int hidden = e % S > e / S % S; /* key j > query i */
        if (f32)
            ((float*)bias)[e] = hidden ? -3.4028234663852886e38f : 0.0f;
        else
            ((uint16_t*)bias)[e] = hidden ? (f16 ? 0xfbff : 0xff7f) : 0;
    }
    memset(keep, 0, (size_t)n);
    DLTensor tb = {bias,  {kDLCPU, 0}, 4, {f32 || f16 ? kDLFloat : kDLBfloat, f32 ? 32 : 16, 1},
                   shape, NULL,        0};
    DLTensor tk = {keep, {kDLCPU, 0}, 4, {kDLUInt, 8, 1}, shape, NULL, 0};
    for (int r = 0; r < R; r++)
        for (int i = 0; i < nl; i++) {
            int flags;
            const double t0 = ab_now();
            if (f[i](&tb, 400.0, &tk, &flags) != CFLASH_OK)
                return fprintf(stderr, "%s: the call failed\n", argv[i + 1]), 1;
            t[i * R + r] = ab_now() - t0;
        }
    printf("far keys, (%lld, 1, %lld, %lld) %s, causal finfo.min mask:\n", (long long)B,
           (long long)S, (long long)S, dt);
    for (int i = 0; i < nl; i++) {
        qsort(t + i * R, (size_t)R, sizeof(double), ab_cmp);
        printf("  %s: median %.3f ms, p10 %.3f ms\n", argv[i + 1], 1e3 * t[i * R + R / 2],
               1e3 * t[i * R + R / 10]);
    }
    free(bias), free(keep), free(t);
    return 0;
}
