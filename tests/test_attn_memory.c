/* The CPU attention forward's memory is bounded: the peak RSS a call adds beyond its inputs and
 * outputs stays under a few MB however long the sequence (a scores matrix, or a per-thread buffer
 * of S x block, would add hundreds of MB to GB at these lengths). Scaled so it runs in seconds on
 * two cores; CFLASH_MEMORY_FULL=1 runs the case (bf16 B=1 H=8 D=128 S=65536, minutes). */
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"

/* VmHWM / VmRSS of this process in bytes (-1 when unreadable). */
static int64_t status_kb(const char* key) {
    FILE* f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int64_t v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') {
            v = atoll(line + n + 1) * 1024;
            break;
        }
    fclose(f);
    return v;
}

/* Resets the peak RSS to the current RSS (Linux >= 4.0). */
static int reset_hwm(void) {
    FILE* f = fopen("/proc/self/clear_refs", "w");
    if (!f) return 0;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

static void fill(DLTensor* t, int64_t* shape, int ndim, int bf16, uint64_t seed) {
    memset(t, 0, sizeof *t);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    t->ndim = ndim;
    t->shape = shape;
    t->device.device_type = kDLCPU;
    t->dtype.code = bf16 ? kDLBfloat : kDLFloat;
    t->dtype.bits = bf16 ? 16 : 32;
    t->dtype.lanes = 1;
    t->data = malloc((size_t)n * (bf16 ? 2 : 4));
    if (!t->data) return;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
    for (int64_t i = 0; i < n; i++) { /* touch every page now, so the call adds only its own */
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        float x = (float)(s >> 40) / 16777216.0f - 0.5f;
        if (bf16)
            ((uint16_t*)t->data)[i] = cf_f32_to_bf16(x);
        else
            ((float*)t->data)[i] = x;
    }
}

/* Runs one bf16 forward and checks the RSS it adds. */
static void case_rss(const char* backend, int64_t H, int64_t S, int64_t D, int64_t window,
                     int64_t limit_mb) {
    int64_t sq[4] = {1, S, H, D}, sl[3] = {1, H, S};
    DLTensor q, k, v, o, lse;
    fill(&q, sq, 4, 1, 1);
    fill(&k, sq, 4, 1, 2);
    fill(&v, sq, 4, 1, 3);
    fill(&o, sq, 4, 1, 4);
    fill(&lse, sl, 3, 0, 5);
    CHECK(q.data && k.data && v.data && o.data && lse.data);
    if (!(q.data && k.data && v.data && o.data && lse.data)) return;
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    if (backend) CHECK_OK(cflash_context_set_backend(ctx, backend));
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    p.window_left = window;
    p.window_right = window >= 0 ? 0 : -1;
    int have = reset_hwm();
    int64_t rss0 = status_kb("VmRSS");
    double t0 = tt_now();
    CHECK_OK(cflash_attn_fwd(ctx, &p, &q, &k, &v, &o, &lse));
    double dt = tt_now() - t0;
    int64_t hwm = status_kb("VmHWM");
    const double io_mb = (4.0 * (double)(S * H * D) * 2 + (double)(H * S) * 4) / 1048576.0;
    if (have && rss0 > 0 && hwm > 0) {
        double added = (double)(hwm - rss0) / 1048576.0;
        printf("bf16 B1 H%lld S%lld D%lld window (%lld, %lld), %s: %.1f s, inputs+outputs %.0f MB, "
               "peak "
               "RSS %.0f MB, added by the call %.1f MB (limit %lld MB)\n",
               (long long)H, (long long)S, (long long)D, (long long)p.window_left,
               (long long)p.window_right, backend ? backend : "auto", dt, io_mb,
               (double)hwm / 1048576.0, added, (long long)limit_mb);
        CHECK_MSG(added <= (double)limit_mb, "the call added %.1f MB of RSS, limit %lld MB", added,
                  (long long)limit_mb);
    } else {
        printf("SKIP: /proc/self/clear_refs or /proc/self/status unavailable, RSS not measured\n");
    }
    /* The result is sane: finite lse everywhere (every row sees a key). */
    int finite = 1;
    for (int64_t i = 0; i < H * S; i++)
        finite &= ((float*)lse.data)[i] > -1e30f;
    CHECK_MSG(finite, "lse has rows that saw no key");
    cflash_context_free(ctx);
    free(q.data), free(k.data), free(v.data), free(o.data), free(lse.data);
}

int main(void) {
    if (getenv("CFLASH_MEMORY_FULL")) {
        case_rss(NULL, 8, 65536, 128, -1, 64);
        return tt_summary();
    }
    /* Dense: a scores matrix would be 8192^2 * 4 B = 256 MB per head. */
    case_rss(NULL, 2, 8192, 64, -1, 8);
    /* Long and windowed (cheap to compute): any O(S)-per-row or O(S^2) buffer shows at once. */
    case_rss(NULL, 2, 131072, 64, 128, 8);
    return tt_summary();
}
