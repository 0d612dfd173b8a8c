/* Backend cpu-amx: bf16 and fp16 attention, forward (amx_fwd.c) and backward (amx_bwd.c), with
 * every product on AMX tiles (tdpbf16ps; tdpfp16ps where the CPU has AMX-FP16, Granite Rapids and
 * later; elsewhere fp16 as bf16 high and low parts, three tdpbf16ps a product). Softmax, masks and
 * conversions run on AVX-512 (the cpu-avx512 table). The tile configuration is loaded once per
 * thread around its tiles.
 * Verified on AMX hardware (docs/PERF.md, Intel AMX section: `build/tests/test_attn_ref 1 cpu-amx
 * bf16,fp16` and the CFLASH_TEST_LEVEL=1 backend grid pass) on a CPU without AMX-FP16, so the
 * tdpfp16ps path has run on the software tile model only (tests/amx_model): amx_verified keeps
 * the automatic choice off it until an AMX-FP16 machine has run the grid. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "core/ops_call.h"
#include "core/status.h"
#include "cpu/attn_cpu.h"
#include "cpu/x86/amx_attn.h"
#include "cpu/x86/amx_tiles.h"
#include "probe/cpu_features.h"

#ifdef CF_AMX_CODE
/* Not static: tests/test_amx_tilecfg.c checks the 64 bytes it hands to ldtilecfg. */
CF_AMX_CFG_TARGET void cf_amx_thread_begin(void) {
    cf_amx_tilecfg cfg;
    cf_amx_tilecfg_fill(&cfg, CF_AMX_NTILES, CF_AMX_ROWS, CF_AMX_COLSB);
    CF_TILE_CONFIG(&cfg);
}

CF_AMX_CFG_TARGET void cf_amx_thread_end(void) {
    CF_TILE_RELEASE();
}

/* The cpu-avx512 table with the tile configuration around each thread's work and the bf16 pairs
 * GEMM on the tiles (the tiled backward's dbias tasks take it; pairs from fp32 are packed by the
 * portable code, which none of cpu-amx's paths calls). */
static cf_attn_kernels amx_k;
static pthread_once_t amx_k_once = PTHREAD_ONCE_INIT;

static void amx_kernels_fill(void) {
    amx_k = *cf_attn_kernels_avx512();
    amx_k.name = "cpu-amx";
    amx_k.gemm_bf16 = cf_amx_gemm_bf16;
    if (!amx_k.pack_pairs_f32) amx_k.pack_pairs_f32 = cf_attn_kernels_generic.pack_pairs_f32;
    amx_k.thread_begin = cf_amx_thread_begin;
    amx_k.thread_end = cf_amx_thread_end;
}

/* (filled once under pthread_once: a flag set after the copy, unsynchronized, let another
 * application thread see the flag before the table, the compiler free to reorder the stores) */
static const cf_attn_kernels* amx_kernels(void) {
    pthread_once(&amx_k_once, amx_kernels_fill);
    return &amx_k;
}
#endif

static int amx_available(char* reason, size_t len) {
#ifndef CF_AMX_CODE
    snprintf(reason, len, "built without AMX support (needs x86-64 and GCC >= 11 or Clang >= 12)");
    return 0;
#else
    const cf_cpu_info* ci = cf_cpu();
#ifndef CF_AMX_MODEL /* the model stands in for the tiles; the rest runs on AVX-512 anyway */
    if (!ci->amx_tile || !ci->amx_bf16) {
        snprintf(reason, len, "CPU lacks AMX-BF16 (amx_tile=%d amx_bf16=%d)", ci->amx_tile,
                 ci->amx_bf16);
        return 0;
    }
    if (!ci->amx_permitted) {
        snprintf(reason, len, "AMX tile data not permitted by the OS: %s",
                 ci->amx_error[0] ? ci->amx_error : "arch_prctl(ARCH_REQ_XCOMP_PERM) refused");
        return 0;
    }
#endif
    if (!ci->avx512f || !ci->avx512bw || !ci->avx512vl || !ci->avx512dq || !ci->avx512bf16 ||
        !ci->fma || !ci->f16c) {
        snprintf(reason, len, "needs AVX-512 F/BW/VL/DQ/BF16 with FMA and F16C beside AMX");
        return 0;
    }
    return 1;
#endif
}

static int amx_supports(const void* call, char* reason, size_t len) {
    const cf_attn_call* c = call;
    if (c->dtype != CF_BF16 && c->dtype != CF_F16) {
        snprintf(reason, len, "serves bf16 and fp16 only (dtype is %s; cpu-avx512 serves it)",
                 cf_dtype_name(c->dtype));
        return 0;
    }
    return cf_attn_cpu_supports(c, cf_attn_kernels_avx512(), reason, len);
}

/* Lift this (always 1) in the commit that records the grid passing on an AMX-FP16 CPU. */
static int amx_verified(const void* call, char* why, size_t len) {
    const cf_attn_call* c = call;
    if (!c || c->dtype != CF_F16 || !cf_cpu()->amx_fp16) return 1;
    snprintf(why, len,
             "fp16 on AMX-FP16 tiles (tdpfp16ps) not yet verified on such a CPU; force it "
             "with CFLASH_BACKEND=cpu-amx");
    return 0;
}

#if defined(__x86_64__)
int cf_attn_avx512_decodes(const void* call, int64_t most_rows);                   /* kv_avx512.c */
int cf_attn_avx512_decode(const void* call, int64_t most_rows, cflash_status* st); /* kv_avx512.c */
#endif

#ifdef CF_AMX_CODE
/* Decode rows: the query rows per KV head (G * sq) up to which a forward goes to cpu-avx512's
 * KV-cache kernels (cf_attn_avx512_decode) instead of the tiles, which repack every key block for
 * those few rows. Intel model 167, 2 threads (docs/PERF.md, stop 51), B1 Hk4-8 D128, the kernels'
 * time against the tiles': bf16 4 rows 0.6-0.8x at 1024-4096 keys, 0.4-0.5x at 32768; 8 rows
 * 0.95-1.3x at 1024-4096, even at 8192, 0.8-0.95x at 16384 and 0.7-1.0x at 32768 (so 8 from
 * AMX_LONG keys: Sk, the longest sequence's in varlen calls); 12 rows 1.6x at 4096. fp16 without
 * AMX-FP16 (three tile products a product): 0.3-0.8x up to 12 rows, 16 rows even at 4096 and 0.75x
 * at 32768, 24 rows 1.3x at 4096. */
#define AMX_LONG 16384
static int64_t amx_decode_rows(const cf_attn_call* a) {
    if (a->dtype == CF_F16 && !cf_cpu()->amx_fp16) return 16;
    return a->Sk >= AMX_LONG ? 8 : 4;
}

/* Every other call runs on the tiles: fp16 without AMX-FP16 as bf16 pairs (cf_amx_mm2), a
 * backward's dbias summed by the tiled backward's own tasks beside them (cf_amx_attn_bwd), paged
 * K / V (block_table) gathered per key block where it spans pages. */
static cflash_status amx_fwd(const void* call) {
    cflash_status st;
    if (cf_attn_avx512_decode(call, amx_decode_rows(call), &st)) return st;
    return cf_amx_attn_fwd(call, amx_kernels());
}
static cflash_status amx_bwd(const void* call) {
    return cf_amx_attn_bwd(call, amx_kernels());
}
static int amx_fwd_route(const void* call, char* note, size_t len) {
    if (!call || !cf_attn_avx512_decodes(call, amx_decode_rows(call))) return 0;
    snprintf(note, len,
             "through cpu-avx512's KV-cache kernels: decode rows (few query rows per KV head)");
    return 1;
}
#define AMX_FWD_ROUTE amx_fwd_route
#define AMX_BWD_ROUTE NULL /* (the backward always runs on the tiles) */
#else
static cflash_status amx_fwd(const void* call) {
    return cf_attn_cpu_fwd(call, cf_attn_kernels_avx512());
}
static cflash_status amx_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, cf_attn_kernels_avx512());
}
static int amx_fwd_route(const void* call, char* note, size_t len) {
    (void)call;
    snprintf(note, len, "through cpu-avx512's driver: a build without AMX code");
    return 1;
}
#define AMX_FWD_ROUTE amx_fwd_route
#define AMX_BWD_ROUTE amx_fwd_route
#endif

/* ---- The KV-cache call: its chunks of prefill on the AMX forward ----------------------------
 * cpu-avx512's KV-cache driver and kernels, with a different attention forward for the chunks of
 * prefill (a sequence with G * sq >= 32 query rows over an unquantized cache: attention over its
 * cache rows): amx_fwd for bf16 and fp16 (docs/PERF.md: 4.4x the KV-cache GEMM path for Sq 512
 * over 4096 keys), cpu-avx512's for fp32. Decode steps and quantized caches run exactly as on
 * cpu-avx512. */
#if defined(__x86_64__)
cflash_status cf_kvcache_avx512_run(const void* call, const cf_impl* attn,
                                    int spread); /* kv_avx512.c */
int cf_kvcache_avx512_spread(void);              /* kv_avx512.c: its own forward's */
extern const cf_impl cf_impl_avx512_attn_fwd;    /* avx512.c */
#endif

static cflash_status amx_kv_run(const void* call);

/* As amx_verified, for the attention calls amx_kv_run hands to amx_fwd. */
static int amx_kv_verified(const void* call, char* why, size_t len) {
    const cf_kvcache_call* c = call;
    return amx_verified(c ? &c->a : NULL, why, len);
}

const cf_impl cf_impl_amx_attn_fwd = {
    .backend = "cpu-amx",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = amx_supports,
    .run = amx_fwd,
    .available = amx_available,
    .verified = amx_verified,
    .route = AMX_FWD_ROUTE,
};
const cf_impl cf_impl_amx_attn_bwd = {
    .backend = "cpu-amx",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = amx_supports,
    .run = amx_bwd,
    .available = amx_available,
    .verified = amx_verified,
    .route = AMX_BWD_ROUTE,
};
const cf_impl cf_impl_amx_kvcache_fwd = {
    .backend = "cpu-amx",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCPU,
    .supports = NULL, /* every call */
    .run = amx_kv_run,
    .available = amx_available,
    .verified = amx_kv_verified,
};

static cflash_status amx_kv_run(const void* call) {
#if defined(__x86_64__)
    const cf_kvcache_call* c = call;
    const int tiles = c->a.dtype == CF_BF16 || c->a.dtype == CF_F16;
    return tiles
               ? cf_kvcache_avx512_run(call, &cf_impl_amx_attn_fwd, 0 /* KV_SPREAD_ANY */)
               : cf_kvcache_avx512_run(call, &cf_impl_avx512_attn_fwd, cf_kvcache_avx512_spread());
#else
    (void)call;
    return cf_error(CFLASH_ERR_UNSUPPORTED, "cpu-amx kvcache_fwd: not an x86-64 build");
#endif
}
