/* cpu-avx2's KV-cache decode kernels alone, as bench/kv_floor.c measures cpu-avx512's: the scores
 * and P.V kernels of one cache format over 16-key blocks of 8 KV heads (4 query rows each, D = Dv
 * = 128), head by head as kv_item calls them, without the call around them (offsets, factors,
 * softmax, threads). NBLK blocks of K and V in the cache's layout (key, head, element) are walked
 * in order, again and again: 1 block (64 KiB of bf16 K and V) stays in L1 / L2, 16 in L2 / L3, 1024
 * (32-64 MiB) reaches DRAM; PF 2 hands the kernels the rows two blocks on to prefetch, as
 * kv_item does with pf_inside, in address order as kv_prefetch's pf_seq (PF_HEAD=1: head g's own
 * rows). Prints ns per key and KV head (scores + P.V; ONLY=k or ONLY=v: one), best of 5; HUGE=1
 * puts K and V on 2 MB pages.
 * Formats: bf16 (16 values a load, even and odd: kv2_dots_bf16, KV2_EO), bf16-plain (8 values a
 * load, KV2_F16), e4m3 (read through fp16, KV2_F16), e4m3-f32 (as fp32 by integer operations,
 * KV2_F32), e5m2, int8 (vpmaddwd). Includes the kernel file itself (its functions are static):
 *
 *   cc -O3 -fopenmp -D_GNU_SOURCE -Iinclude -Isrc -Ibuild/generated bench/kv_floor_avx2.c \
 *       build/libcflash.a -lm -ldl -o /tmp/kv_floor_avx2 && /tmp/kv_floor_avx2 FORMAT [NBLK [PF]]
 */
#include "cpu/x86/kv_avx2.c"

#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

enum { R = 4, D = 128, NH = 8 };

int main(int argc, char** argv) {
    static const char* names[] = {"bf16", "e4m3", "e4m3-f32", "e5m2", "int8", "bf16-plain"};
    int fmt = -1;
    for (int i = 0; i < 6 && argc > 1; i++)
        if (!strcmp(argv[1], names[i])) fmt = i;
    if (fmt < 0) {
        fprintf(stderr,
                "usage: kv_floor_avx2 bf16|e4m3|e4m3-f32|e5m2|int8|bf16-plain [NBLK [PF]]\n");
        return 2;
    }
    const long nblk = argc > 2 ? atol(argv[2]) : 1, pfd = argc > 3 ? atol(argv[3]) : 0;
    const int bf = fmt == 0 || fmt == 5;
    const cf_dtype dt = bf ? CF_BF16 : fmt <= 2 ? CF_F8E4M3 : fmt == 3 ? CF_F8E5M2 : CF_I8;
    const int route = fmt == 2 ? KV2_F32 : fmt == 0 ? KV2_EO : KV2_F16;
    const size_t es = bf ? 2 : 1, blk = (size_t)NH * KV_KB * D * es;
    uint8_t *K = aligned_alloc(2 << 20, (size_t)nblk * blk),
            *V = aligned_alloc(2 << 20, (size_t)nblk * blk);
    if (nblk < 1 || pfd < 0 || !K || !V) return 2;
    if (getenv("HUGE"))
        madvise(K, (size_t)nblk * blk, MADV_HUGEPAGE),
            madvise(V, (size_t)nblk * blk, MADV_HUGEPAGE);
    const char* only = getenv("ONLY");
    const int kv0 = only && *only == 'v', kv1 = only && *only == 'k' ? 1 : 2,
              pf_head = getenv("PF_HEAD") != NULL;
    /* codes with exponents 0-6 (finite, no NaN), bf16 values near 1 */
    for (size_t i = 0; i < (size_t)nblk * blk; i++)
        K[i] = (uint8_t)(rand() & 0x37), V[i] = (uint8_t)(rand() & 0x37);
    if (bf)
        for (size_t i = 1; i < (size_t)nblk * blk; i += 2)
            K[i] = V[i] = 0x3f;
    float q[R * D], s[R * KV_KB], acc[R * D] = {0}, f[KV_KB], qs[R];
    int16_t qi[R * D];
    for (int i = 0; i < R * D; i++)
        q[i] = (float)(rand() % 100) / 100.0f, qi[i] = (int16_t)(rand() % 1000);
    for (int i = 0; i < KV_KB; i++)
        f[i] = 1.0f;
    for (int i = 0; i < R; i++)
        qs[i] = 1.0f;
    for (int i = 0; i < R * KV_KB; i++)
        s[i] = 0.01f * (float)i;
    const long passes = 2000000 / (nblk * KV_KB) + 1;
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        const double t0 = now();
        for (long it = 0; it < passes; it++)
            for (long b = 0; b < nblk; b++)
                for (int kv = kv0; kv < kv1; kv++) /* every head's scores, then every P.V */
                    for (int h = 0; h < NH; h++) {
                        const uint8_t* base = kv ? V : K;
                        const void *rows[KV_KB], *pf[KV_KB];
                        for (int t = 0; t < KV_KB; t++) {
                            const size_t o = ((size_t)t * NH + (size_t)h) * D * es;
                            rows[t] = base + (size_t)b * blk + o;
                            /* share h of the block's rows (key by key), or head h's */
                            pf[t] = base + (size_t)((b + pfd) % nblk) * blk +
                                    (pf_head ? o : ((size_t)h * KV_KB + (size_t)t) * D * es);
                        }
                        const int64_t npf = pfd ? KV_KB : 0;
                        if (dt == CF_I8 && !kv)
                            kv2_dots_i8(qi, qs, R, D, rows, KV_KB, f, s, pf, npf);
                        else if (dt == CF_I8)
                            kv2_pv_i8(acc, R, D, rows, KV_KB, s, f, pf, npf);
                        else if (!kv && route == KV2_EO) /* (q's order: as good as any) */
                            kv2_dots_bf16(q, R, D, rows, KV_KB, s, pf, npf);
                        else if (kv && route == KV2_EO)
                            kv2_pv_body(acc, R, D, rows, KV_KB, dt, KV2_EO, s, pf, npf);
                        else if (!kv && route == KV2_F32)
                            kv2_dots_body(q, R, D, rows, KV_KB, dt, KV2_F32, s, pf, npf);
                        else if (!kv)
                            kv2_dots_body(q, R, D, rows, KV_KB, dt, KV2_F16, s, pf, npf);
                        else if (route == KV2_F32)
                            kv2_pv_body(acc, R, D, rows, KV_KB, dt, KV2_F32, s, pf, npf);
                        else
                            kv2_pv_body(acc, R, D, rows, KV_KB, dt, KV2_F16, s, pf, npf);
                        __asm__ volatile("" ::: "memory");
                    }
        const double ns = (now() - t0) * 1e9 / ((double)passes * (double)nblk * NH * KV_KB);
        best = ns < best ? ns : best;
    }
    printf("%s: %ld blocks (%.0f KiB of K and V), prefetch %ld: %.2f ns per key and KV head\n",
           names[fmt], nblk, 2.0 * (double)nblk * (double)blk / 1024.0, pfd, best);
    free(K), free(V);
    return acc[5] > 1e30f; /* (keeps acc live) */
}
