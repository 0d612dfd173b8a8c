/* Built by tests/link/link_test.sh with `cc link_only.c -lcflash` and nothing else (no -ldl, -lm,
 * -fopenmp): libcflash.so must record what it needs. Runs a small attention forward and the
 * report; exits 0 when both work. */
#include <stdio.h>
#include <stdlib.h>

#include <cflash.h>

int main(void) {
    enum { S = 5, H = 2, D = 8 };
    static float q[S * H * D], k[S * H * D], v[S * H * D], out[S * H * D];
    for (int i = 0; i < S * H * D; i++) {
        q[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
        k[i] = (float)((i * 53) % 13) / 13.0f - 0.5f;
        v[i] = (float)((i * 71) % 7) / 7.0f;
        out[i] = -1e30f;
    }
    int64_t shape[4] = {1, S, H, D};
    DLDataType f32 = {kDLFloat, 32, 1};
    DLDevice cpu = {kDLCPU, 0};
    DLTensor tq = {q, cpu, 4, f32, shape, NULL, 0}, tk = {k, cpu, 4, f32, shape, NULL, 0},
             tv = {v, cpu, 4, f32, shape, NULL, 0}, to = {out, cpu, 4, f32, shape, NULL, 0};
    cflash_context* ctx;
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    if (cflash_context_create(&ctx) != CFLASH_OK) return 1;
    cflash_status s = cflash_attn_fwd(ctx, &p, &tq, &tk, &tv, &to, NULL);
    cflash_context_free(ctx);
    if (s != CFLASH_OK) {
        printf("attention failed: %s\n", cflash_last_error());
        return 1;
    }
    /* Outputs are convex combinations of v rows: within [0, 1). */
    for (int i = 0; i < S * H * D; i++)
        if (!(out[i] >= 0.0f && out[i] < 1.0f)) {
            printf("out[%d] = %g outside [0, 1)\n", i, out[i]);
            return 1;
        }
    /* The library loaded is the one this program was compiled against. */
    if (cflash_version_number() != CFLASH_VERSION_NUMBER) {
        printf("cflash_version_number() = %u, header says %u\n", cflash_version_number(),
               (unsigned)CFLASH_VERSION_NUMBER);
        return 1;
    }
    size_t n = cflash_report(NULL, 0, 0);
    printf("cflash %s (%u): attention ok, report %zu bytes\n", cflash_version(),
           cflash_version_number(), n);
    return n > 100 ? 0 : 1;
}
