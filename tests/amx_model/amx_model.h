/* A software model of the AMX tile instructions cflash's AMX kernels use (ldtilecfg, tilerelease,
 * tileloadd, tilestored, tilezero, tdpbf16ps, tdpfp16ps), as the Intel SDM defines them, for tests
 * on machines without AMX. src/cpu/x86/amx_tiles.h maps the kernels' tile operations here when the
 * AMX sources are compiled with -DCF_AMX_MODEL (tests/CMakeLists.txt builds test_amx_model so).
 * State is per thread, as the tile registers are. What a CPU would fault on (#UD, #GP) is counted
 * as a fault with its reason, and the operation is skipped; tests assert there were none. */
#ifndef CFLASH_TESTS_AMX_MODEL_H
#define CFLASH_TESTS_AMX_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "cpu/x86/amx_tilecfg.h"

void cf_amx_model_ldtilecfg(const cf_amx_tilecfg* cfg);
void cf_amx_model_sttilecfg(cf_amx_tilecfg* cfg);
void cf_amx_model_tilerelease(void);
/* Rows of tile t from base + r * stride (bytes), colsb bytes each; the rest of the tile zeroed. */
void cf_amx_model_tileloadd(int t, const void* base, int64_t stride);
void cf_amx_model_tilestored(int t, void* base, int64_t stride);
void cf_amx_model_tilezero(int t);
/* c (fp32 M x N) += a (M x K pairs) * b (K pairs x N), pairs of bf16 / fp16 (SDM pseudocode:
 * per output, even and odd products accumulated apart with DAZ/FTZ round-to-nearest-even FMAs
 * from 0, then summed and added to c). bf16 input denormals count as 0; fp16 ones do not. */
void cf_amx_model_tdpbf16ps(int c, int a, int b);
void cf_amx_model_tdpfp16ps(int c, int a, int b);

/* Faults (all threads) since the last reset; *msg gets the first one's reason. */
long cf_amx_model_faults(char* msg, size_t len);
/* Tile multiplies executed (all threads), to show that a kernel ran on the tiles. */
long cf_amx_model_dp_count(void);
void cf_amx_model_reset(void);
/* Whether the modelled CPU has AMX-FP16 (default 1): the kernels ask this instead of CPUID. */
int cf_amx_model_has_fp16(void);
void cf_amx_model_set_fp16(int on);

#endif
