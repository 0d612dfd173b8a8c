/* The AMX tile operations the AMX kernels are written in, as one thin layer with two meanings:
 * in the library, the instructions themselves (inline asm); compiled with -DCF_AMX_MODEL (the
 * test build compiles the AMX sources a second time so, as test_amx_model, pre-including the
 * model's header), calls into the software model of tests/amx_model, so the same kernel text runs
 * on any AVX-512 machine.
 * Tile numbers are constants (the instructions encode them). Every tile is 16 rows x 64 bytes.
 *
 * Why asm and not GCC's <immintrin.h> macros: GCC 12's _tile_loadd declares no memory operand
 * and no "memory" clobber, so the optimiser may keep stores to the buffer a tile is loaded from
 * after the load (or drop them); here every load and store clobbers memory. tdpbf16ps and
 * tdpfp16ps are emitted as bytes (VEX.128.F3/F2.0F38.W0 5C /r) so no assembler needs to know
 * AMX-FP16 (binutils learned it in 2.40). */
#ifndef CFLASH_CPU_X86_AMX_TILES_H
#define CFLASH_CPU_X86_AMX_TILES_H

#include "cpu/x86/amx_tilecfg.h"

/* Palette 1, every tile 16 rows x 64 bytes: 16 x 16 fp32 or 16 x 16 pairs of 16-bit values. */
#define CF_AMX_NTILES 8
#define CF_AMX_ROWS 16
#define CF_AMX_COLSB 64

#if defined(CF_AMX_MODEL)
/* The test build pre-includes the model's header (-include): the library never names tests/. */
#ifndef CFLASH_TESTS_AMX_MODEL_H
#error "CF_AMX_MODEL builds pre-include tests/amx_model/amx_model.h"
#endif
#define CF_AMX_CODE 1
/* The AVX-512 parts run natively; only the tile operations are modelled. */
#define CF_AMX_TARGET                                                                              \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
/* The tile configuration's load and release: no target (they call the model). */
#define CF_AMX_CFG_TARGET
#define CF_TILE_CONFIG(cfg) cf_amx_model_ldtilecfg(cfg)
#define CF_TILE_RELEASE() cf_amx_model_tilerelease()
#define CF_TILE_LOAD(t, base, stride) cf_amx_model_tileloadd(t, base, stride)
#define CF_TILE_STORE(t, base, stride) cf_amx_model_tilestored(t, base, stride)
#define CF_TILE_ZERO(t) cf_amx_model_tilezero(t)
#define CF_TILE_DPBF16(c, a, b) cf_amx_model_tdpbf16ps(c, a, b)
#define CF_TILE_DPFP16(c, a, b) cf_amx_model_tdpfp16ps(c, a, b)
/* Whether the CPU (here: the model) has AMX-FP16. */
#define CF_AMX_HAS_FP16() cf_amx_model_has_fp16()

#elif defined(CF_HAVE_AMX_CODE)
#include "probe/cpu_features.h"
#define CF_AMX_CODE 1
#define CF_AMX_TARGET                                                                              \
    __attribute__((                                                                                \
        target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
/* The tile configuration's load and release: AMX-TILE alone, so that GCC fills the config with
 * no AVX-512 stores (test_amx_tilecfg calls them on every x86-64 CPU, AVX2-only ones included,
 * and catches ldtilecfg's SIGILL where AMX is absent). */
#define CF_AMX_CFG_TARGET __attribute__((target("amx-tile")))
#define CF_TILE_CONFIG(cfg) cf_amx_tilecfg_load(cfg)
#define CF_TILE_RELEASE() __asm__ volatile("tilerelease" ::: "memory")
#define CF_TILE_LOAD(t, base, stride)                                                              \
    __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm" #t "|tileloadd\t%%tmm" #t ", [%0+%1*1]}"       \
                     :                                                                             \
                     : "r"((const void*)(base)), "r"((long)(stride))                               \
                     : "memory")
#define CF_TILE_STORE(t, base, stride)                                                             \
    __asm__ volatile("{tilestored\t%%tmm" #t ", (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm" #t "}"     \
                     :                                                                             \
                     : "r"((void*)(base)), "r"((long)(stride))                                     \
                     : "memory")
#define CF_TILE_ZERO(t) __asm__ volatile("tilezero\t%%tmm" #t ::)
/* VEX C4, RXB = 111 map 0F38 (E2), W0 vvvv = ~b L0 pp, opcode 5C, ModRM 11 c a. */
#define CF_TILE_DP_BYTES(pp, c, a, b)                                                              \
    __asm__ volatile(".byte 0xc4, 0xe2, %c0, 0x5c, %c1"                                            \
                     :                                                                             \
                     : "i"(((~(b)&15) << 3) | (pp)), "i"(0xc0 | ((c) << 3) | (a)))
#define CF_TILE_DPBF16(c, a, b) CF_TILE_DP_BYTES(2, c, a, b) /* F3: tdpbf16ps */
#define CF_TILE_DPFP16(c, a, b) CF_TILE_DP_BYTES(3, c, a, b) /* F2: tdpfp16ps */
#define CF_AMX_HAS_FP16() (cf_cpu()->amx_fp16)
#endif

#endif
