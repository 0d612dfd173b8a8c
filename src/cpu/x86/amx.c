/* Backend cpu-amx: bf16 attention forward with the S^T = K Q^T products on AMX-BF16 tiles
 * (tdpbf16ps, 16 x 16 fp32 accumulators, B operands in the VNNI pair layout the driver already
 * packs); everything else, edges included, from the cpu-avx512 table. The tile configuration is
 * loaded once per thread around the tile loop, never in the inner loops.
 * UNVERIFIED: the machine it was written on has no AMX, so it compiles and reports itself
 * unavailable; it must be run through tests/test_attn_backends on a Sapphire Rapids or later. */
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"
#include "cpu/x86/amx_tilecfg.h"
#include "probe/cpu_features.h"

const cf_attn_kernels* cf_attn_kernels_avx512(void);
void cf_avx512_gemm_bf16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                         int64_t csa, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                         int acc);

#ifdef CF_HAVE_AMX_CODE
#include <immintrin.h>
#define HAVE_AMX_CODE 1
#define TAMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16")))

/* Palette 1: tiles 0-3 are C (16 rows x 64 bytes), 4 is A (16 rows x 16 pairs), 5 is B.
 * Not static: tests/test_amx_tilecfg.c checks the 64 bytes it hands to ldtilecfg. */
void cf_amx_thread_begin(void);
TAMX void cf_amx_thread_begin(void) {
    cf_amx_tilecfg cfg;
    cf_amx_tilecfg_fill(&cfg, 6, 16, 64);
    cf_amx_tilecfg_load(&cfg);
}

TAMX static void amx_end(void) {
    _tile_release();
}

#define TDP_COL(t)                                                                                 \
    do {                                                                                           \
        _tile_loadd(5, B + p0 * ldb + n0 + 16 * t, (int)(ldb * 4));                                \
        _tile_dpbf16ps(t, 4, 5);                                                                   \
    } while (0)

/* C (+)= A B on 16 x 64 blocks with A rows contiguous (csa == 1); the rest on AVX512-BF16. */
TAMX static void gemm_bf16_amx(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                               int64_t csa, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                               int acc) {
    const int64_t Mf = M / 16 * 16, Nf = N / 64 * 64, Pf = P / 16 * 16;
    if (csa != 1 || Mf == 0 || Nf == 0 || Pf == 0) {
        cf_avx512_gemm_bf16(M, N, P, A, rsa, csa, B, ldb, C, ldc, acc);
        return;
    }
    const int sc = (int)(ldc * 4);
    for (int64_t m0 = 0; m0 < Mf; m0 += 16)
        for (int64_t n0 = 0; n0 < Nf; n0 += 64) {
            float* c = C + m0 * ldc + n0;
            if (acc) {
                _tile_loadd(0, c, sc);
                _tile_loadd(1, c + 16, sc);
                _tile_loadd(2, c + 32, sc);
                _tile_loadd(3, c + 48, sc);
            } else {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            }
            for (int64_t p0 = 0; p0 < Pf; p0 += 16) {
                _tile_loadd(4, A + m0 * rsa + p0, (int)(rsa * 4));
                TDP_COL(0);
                TDP_COL(1);
                TDP_COL(2);
                TDP_COL(3);
            }
            _tile_stored(0, c, sc);
            _tile_stored(1, c + 16, sc);
            _tile_stored(2, c + 32, sc);
            _tile_stored(3, c + 48, sc);
        }
    if (Pf < P) /* the last pairs of the AMX part */
        cf_avx512_gemm_bf16(Mf, Nf, P - Pf, A + Pf, rsa, 1, B + Pf * ldb, ldb, C, ldc, 1);
    if (Nf < N) /* columns past the last 64 */
        cf_avx512_gemm_bf16(Mf, N - Nf, P, A, rsa, 1, B + Nf, ldb, C + Nf, ldc, acc);
    if (Mf < M) /* rows past the last 16 */
        cf_avx512_gemm_bf16(M - Mf, N, P, A + Mf * rsa, rsa, 1, B, ldb, C + Mf * ldc, ldc, acc);
}
#endif

static const cf_attn_kernels* amx_kernels(void) {
#ifdef HAVE_AMX_CODE
    static cf_attn_kernels k;
    static int init = 0;
    if (!init) { /* benign race: every thread writes the same values */
        k = *cf_attn_kernels_avx512();
        k.name = "cpu-amx";
        k.gemm_bf16 = gemm_bf16_amx;
        k.thread_begin = cf_amx_thread_begin;
        k.thread_end = amx_end;
        init = 1;
    }
    return &k;
#else
    return cf_attn_kernels_avx512();
#endif
}

static int amx_available(char* reason, size_t len) {
#ifndef HAVE_AMX_CODE
    snprintf(reason, len, "built without AMX support (needs x86-64 and GCC >= 11 or Clang >= 12)");
    return 0;
#else
    const cf_cpu_info* ci = cf_cpu();
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
    if (!ci->avx512f || !ci->avx512bw || !ci->avx512vl || !ci->avx512dq || !ci->avx512bf16) {
        snprintf(reason, len, "needs AVX-512 F/BW/VL/DQ/BF16 beside AMX for the edges");
        return 0;
    }
    return 1;
#endif
}

/* Lift this (NULL) in the commit that records `build/tests/test_attn_ref 1 cpu-amx` and the
 * CFLASH_TEST_LEVEL=1 backend grid passing on an AMX machine (DEVELOPERS.md). */
#define AMX_UNVERIFIED "not yet verified on AMX hardware; force it with CFLASH_BACKEND=cpu-amx"

static int amx_supports_fwd(const void* call, char* reason, size_t len) {
    const cf_attn_call* c = call;
    if (c->dtype != CF_BF16) {
        snprintf(reason, len, "serves bf16 only (dtype is %s; cpu-avx512 serves it)",
                 cf_dtype_name(c->dtype));
        return 0;
    }
    return cf_attn_cpu_supports(c, amx_kernels(), reason, len);
}

static int amx_supports_bwd(const void* call, char* reason, size_t len) {
    (void)call;
    snprintf(reason, len,
             "no AMX backward kernel yet (the CPU backward computes in fp32; "
             "cpu-avx512 serves it)");
    return 0;
}

static cflash_status amx_fwd(const void* call) {
    return cf_attn_cpu_fwd(call, amx_kernels());
}
static cflash_status amx_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, amx_kernels());
}

const cf_impl cf_impl_amx_attn_fwd = {
    .backend = "cpu-amx",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = amx_supports_fwd,
    .run = amx_fwd,
    .available = amx_available,
    .unverified = AMX_UNVERIFIED,
};
const cf_impl cf_impl_amx_attn_bwd = {
    .backend = "cpu-amx",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = amx_supports_bwd,
    .run = amx_bwd,
    .available = amx_available,
    .unverified = AMX_UNVERIFIED,
};
