/* The AMX tile model (amx_model.h): eight 1 KB tile registers and the palette-1 configuration per
 * thread, the loads and stores byte by byte as the configuration shapes them, and the dot
 * products in the SDM's order and rounding. Written from the SDM's pseudocode; the exception
 * checks follow its AMX-E4/E5 classes (unconfigured tiles, mismatched shapes, repeated
 * registers). */
#include "amx_model.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct tile_state {
    cf_amx_tilecfg cfg;
    int configured; /* a palette-1 configuration is loaded */
    unsigned char t[8][16][64];
} tile_state;

static _Thread_local tile_state ts;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long faults, dps;
static char first_fault[256];
static int has_fp16 = 1;

static void fault(const char* fmt, int a, int b, int c) {
    pthread_mutex_lock(&lock);
    if (faults++ == 0) snprintf(first_fault, sizeof first_fault, fmt, a, b, c);
    pthread_mutex_unlock(&lock);
}

/* Records a fault and leaves the operation undone, as the CPU's exception would. */
#define FAULT(...)                                                                                 \
    do {                                                                                           \
        fault(__VA_ARGS__);                                                                        \
        return;                                                                                    \
    } while (0)

long cf_amx_model_faults(char* msg, size_t len) {
    pthread_mutex_lock(&lock);
    long n = faults;
    if (msg && len) snprintf(msg, len, "%s", n ? first_fault : "none");
    pthread_mutex_unlock(&lock);
    return n;
}

long cf_amx_model_dp_count(void) {
    return __atomic_load_n(&dps, __ATOMIC_RELAXED);
}

void cf_amx_model_reset(void) {
    pthread_mutex_lock(&lock);
    faults = dps = 0;
    first_fault[0] = 0;
    pthread_mutex_unlock(&lock);
}

int cf_amx_model_has_fp16(void) {
    return has_fp16;
}
void cf_amx_model_set_fp16(int on) {
    has_fp16 = on;
}

/* ---- Configuration ----------------------------------------------------------------------------
 */

void cf_amx_model_ldtilecfg(const cf_amx_tilecfg* cfg) {
    if (cfg->palette == 0) { /* palette 0 = release */
        memset(&ts, 0, sizeof ts);
        return;
    }
    if (cfg->palette != 1) FAULT("ldtilecfg: palette %d (only 1 exists)", cfg->palette, 0, 0);
    for (int i = 0; i < 14; i++)
        if (cfg->reserved[i]) FAULT("ldtilecfg: reserved byte %d is %d", 2 + i, 1, 0);
    for (int t = 0; t < 16; t++) {
        const int rows = cfg->rows[t], colsb = cfg->colsb[t];
        if (t >= 8 && (rows || colsb))
            FAULT("ldtilecfg: tile %d configured (palette 1 has 8)", t, 0, 0);
        if (rows > 16 || colsb > 64 || (rows == 0) != (colsb == 0))
            FAULT("ldtilecfg: tile %d is %d rows x %d bytes", t, rows, colsb);
    }
    if (cfg->start_row) FAULT("ldtilecfg: start_row %d", cfg->start_row, 0, 0);
    memset(&ts, 0, sizeof ts);
    ts.cfg = *cfg;
    ts.configured = 1;
}

void cf_amx_model_sttilecfg(cf_amx_tilecfg* cfg) {
    if (ts.configured)
        *cfg = ts.cfg;
    else
        memset(cfg, 0, sizeof *cfg);
}

void cf_amx_model_tilerelease(void) {
    memset(&ts, 0, sizeof ts);
}

/* The tile is usable: configured, index valid, shape non-empty. */
static int usable(int t) {
    if (!ts.configured) {
        fault("tile op on tmm%d: tiles not configured (#UD)", t, 0, 0);
        return 0;
    }
    if (t < 0 || t > 7 || ts.cfg.rows[t] == 0) {
        fault("tile op on tmm%d: not a configured tile (#UD)", t, 0, 0);
        return 0;
    }
    return 1;
}

/* ---- Loads and stores -------------------------------------------------------------------------
 */

void cf_amx_model_tileloadd(int t, const void* base, int64_t stride) {
    if (!usable(t)) return;
    const int rows = ts.cfg.rows[t], colsb = ts.cfg.colsb[t];
    memset(ts.t[t], 0, sizeof ts.t[t]);
    for (int r = 0; r < rows; r++)
        memcpy(ts.t[t][r], (const char*)base + r * stride, (size_t)colsb);
}

void cf_amx_model_tilestored(int t, void* base, int64_t stride) {
    if (!usable(t)) return;
    const int rows = ts.cfg.rows[t], colsb = ts.cfg.colsb[t];
    for (int r = 0; r < rows; r++)
        memcpy((char*)base + r * stride, ts.t[t][r], (size_t)colsb);
}

void cf_amx_model_tilezero(int t) {
    if (!usable(t)) return;
    memset(ts.t[t], 0, sizeof ts.t[t]);
}

/* ---- Dot products -----------------------------------------------------------------------------
 */

/* DAZ and FTZ: a denormal fp32 operand or result counts as a zero of its sign. */
static float flush(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    memcpy(&x, &u, 4);
    return x;
}

static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE binary16 -> binary32, exactly (denormals kept: the SDM says FP16 inputs are not DAZ). */
static float from_fp16(uint16_t h) {
    const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    float v;
    if (exp == 0)
        v = ldexpf((float)man, -24);
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = ldexpf((float)(man | 1024), exp - 25);
    return sign ? -v : v;
}

static uint16_t half_at(int t, int row, int i) {
    uint16_t h;
    memcpy(&h, &ts.t[t][row][2 * i], 2);
    return h;
}

static void tdp(int c, int a, int b, int fp16) {
    if (!usable(c) || !usable(a) || !usable(b)) return;
    if (c == a || c == b || a == b) FAULT("tdp: tmm%d, tmm%d, tmm%d not distinct (#UD)", c, a, b);
    const cf_amx_tilecfg* g = &ts.cfg;
    if (g->rows[c] != g->rows[a])
        FAULT("tdp: dst rows %d != src1 rows %d (#UD), tmm%d", g->rows[c], g->rows[a], c);
    if (g->colsb[a] / 4 != g->rows[b] || g->colsb[a] % 4)
        FAULT("tdp: src1 colsb %d / 4 != src2 rows %d (#UD), tmm%d", g->colsb[a], g->rows[b], a);
    if (g->colsb[c] != g->colsb[b] || g->colsb[c] % 4)
        FAULT("tdp: dst colsb %d != src2 colsb %d (#UD), tmm%d", g->colsb[c], g->colsb[b], c);
    const int M = g->rows[c], K = g->colsb[a] / 4, N = g->colsb[c] / 4;
    /* Inputs as fp32 once (bf16 denormals flushed, fp16 ones exact). A product of two bf16 or two
     * fp16 values is exact in fp32, so a multiply and an add round as one FMA does; every result
     * is flushed (FTZ), so no accumulator is ever denormal when read (DAZ). */
    float fa[16][32], fb[16][32], dst[16][16];
    for (int m = 0; m < M; m++)
        for (int i = 0; i < 2 * K; i++)
            fa[m][i] = fp16 ? from_fp16(half_at(a, m, i)) : flush(from_bf16(half_at(a, m, i)));
    for (int k = 0; k < K; k++)
        for (int i = 0; i < 2 * N; i++)
            fb[k][i] = fp16 ? from_fp16(half_at(b, k, i)) : flush(from_bf16(half_at(b, k, i)));
    memcpy(dst, ts.t[c], sizeof dst);
    for (int m = 0; m < M; m++) {
        float temp[32] = {0};
        for (int k = 0; k < K; k++)
            for (int i = 0; i < 2 * N; i++) /* i = 2n + e: pair element e of output n */
                temp[i] = flush(fa[m][2 * k + (i & 1)] * fb[k][i] + temp[i]);
        for (int n = 0; n < N; n++)
            dst[m][n] = flush(flush(dst[m][n]) + flush(temp[2 * n] + temp[2 * n + 1]));
    }
    /* write_row_and_zero / zero_upper_rows: bytes past colsb and rows past M become 0. */
    memset(ts.t[c], 0, sizeof ts.t[c]);
    for (int m = 0; m < M; m++)
        memcpy(ts.t[c][m], dst[m], (size_t)N * 4);
    __atomic_fetch_add(&dps, 1, __ATOMIC_RELAXED);
}

void cf_amx_model_tdpbf16ps(int c, int a, int b) {
    tdp(c, a, b, 0);
}

void cf_amx_model_tdpfp16ps(int c, int a, int b) {
    if (!has_fp16) FAULT("tdpfp16ps: the modelled CPU has no AMX-FP16 (#UD)", c, a, b);
    tdp(c, a, b, 1);
}
