/* The AMX tile configuration (palette 1) and the one way cflash loads it.
 * Why not _tile_loadconfig(): GCC 12 declares its operand as `*(const void**)cfg`, 8 bytes, so the
 * optimiser treats the stores to bytes 8..63 of a local config as dead and deletes them; ldtilecfg
 * then loads stack garbage and faults (#GP, SIGSEGV) or leaves tiles unconfigured (#UD, SIGILL).
 * Here the asm's memory operand is the whole 64-byte struct, so no compiler can drop a store. */
#ifndef CFLASH_CPU_X86_AMX_TILECFG_H
#define CFLASH_CPU_X86_AMX_TILECFG_H

#include <stdint.h>
#include <string.h>

/* GCC >= 11 and clang >= 12 know the AMX target attributes and mnemonics. */
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) ||                       \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define CF_HAVE_AMX_CODE 1
#endif

/* The 64-byte operand of ldtilecfg / sttilecfg (Intel SDM vol. 1, 18.2.2). */
typedef struct __attribute__((aligned(64))) cf_amx_tilecfg {
    uint8_t palette;      /* 1 */
    uint8_t start_row;    /* 0 */
    uint8_t reserved[14]; /* 0 */
    uint16_t colsb[16];   /* bytes per row of tile t (<= 64) */
    uint8_t rows[16];     /* rows of tile t (<= 16) */
} cf_amx_tilecfg;

_Static_assert(sizeof(cf_amx_tilecfg) == 64, "ldtilecfg reads exactly 64 bytes");

/* Palette 1 with tiles [0, ntiles) of rows x colsb bytes each, the others unused (0). */
static inline void cf_amx_tilecfg_fill(cf_amx_tilecfg* cfg, int ntiles, int rows, int colsb) {
    memset(cfg, 0, sizeof *cfg);
    cfg->palette = 1;
    for (int t = 0; t < ntiles && t < 16; t++) {
        cfg->colsb[t] = (uint16_t)colsb;
        cfg->rows[t] = (uint8_t)rows;
    }
}

#ifdef CF_HAVE_AMX_CODE
/* ldtilecfg with the whole struct as the memory operand (see the top of this file). */
__attribute__((target("amx-tile"))) static inline void
cf_amx_tilecfg_load(const cf_amx_tilecfg* cfg) {
    __asm__ volatile("ldtilecfg %0" : : "m"(*cfg) : "memory");
}
/* sttilecfg: reads the configuration in force back (tests compare it with what was loaded). */
__attribute__((target("amx-tile"))) static inline void cf_amx_tilecfg_store(cf_amx_tilecfg* cfg) {
    __asm__ volatile("sttilecfg %0" : "=m"(*cfg) : : "memory");
}
#endif

#endif
