/* The AMX tile configuration reaches ldtilecfg whole (issue 10): GCC 12 deleted the stores to
 * bytes 8..63 of the config as dead, and ldtilecfg loaded stack garbage (SIGSEGV on Intel AMX).
 * On an AMX machine the config is loaded for real and read back with sttilecfg. Elsewhere
 * ldtilecfg raises SIGILL; a handler decodes the instruction's memory operand from the saved
 * registers, copies the 64 bytes it would have loaded, and steps over it. Either way the bytes
 * are compared with the config the kernels ask for, after the stack was filled with a pattern. */
#define _GNU_SOURCE /* REG_RIP and the other saved-register names */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include "common/testutil.h"
#include "cpu/x86/amx_tilecfg.h"
#include "probe/cpu_features.h"

#if defined(CF_HAVE_AMX_CODE) && defined(__linux__)
void cf_amx_thread_begin(void); /* src/cpu/x86/amx.c */

static volatile sig_atomic_t seen;              /* ldtilecfg executions caught by the handler */
static _Alignas(64) unsigned char captured[64]; /* what the last one would have loaded */
static volatile sig_atomic_t undecoded;         /* SIGILL at an instruction that is not ldtilecfg */

/* Register number (ModRM/SIB encoding, 0..15) -> its saved value. */
static uint64_t reg_value(const ucontext_t* uc, int r) {
    static const int map[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP,
                                REG_RSI, REG_RDI, REG_R8,  REG_R9,  REG_R10, REG_R11,
                                REG_R12, REG_R13, REG_R14, REG_R15};
    return (uint64_t)uc->uc_mcontext.gregs[map[r]];
}

/* ldtilecfg m512 is VEX.128.NP.0F38.W0 49 /0: C4 [RXB map=2] 78 49 ModRM [SIB] [disp]. Returns
 * its length and the operand's address, or 0 when the bytes at ip are something else. */
static int decode_ldtilecfg(const unsigned char* ip, const ucontext_t* uc, uint64_t* addr) {
    if (ip[0] != 0xc4 || (ip[1] & 0x1f) != 2 || ip[2] != 0x78 || ip[3] != 0x49) return 0;
    int X = !(ip[1] & 0x40), B = !(ip[1] & 0x20);
    unsigned modrm = ip[4], mod = modrm >> 6, rm = modrm & 7;
    if (mod == 3 || ((modrm >> 3) & 7) != 0) return 0;
    int len = 5;
    uint64_t a = 0;
    if (rm == 4) { /* SIB */
        unsigned sib = ip[len++], scale = sib >> 6;
        int index = (int)((sib >> 3) & 7) | X << 3, base = (int)(sib & 7);
        if (index != 4) a += reg_value(uc, index) << scale;
        if (base == 5 && mod == 0) {
            int32_t d;
            memcpy(&d, ip + len, 4);
            len += 4;
            a += (uint64_t)(int64_t)d;
        } else {
            a += reg_value(uc, base | B << 3);
        }
    } else if (rm == 5 && mod == 0) { /* RIP-relative */
        int32_t d;
        memcpy(&d, ip + len, 4);
        len += 4;
        a = (uint64_t)(uintptr_t)(ip + len) + (uint64_t)(int64_t)d;
    } else {
        a = reg_value(uc, (int)rm | B << 3);
    }
    if (mod == 1) {
        a += (uint64_t)(int64_t)(int8_t)ip[len++];
    } else if (mod == 2) {
        int32_t d;
        memcpy(&d, ip + len, 4);
        len += 4;
        a += (uint64_t)(int64_t)d;
    }
    *addr = a;
    return len;
}

static void on_sigill(int sig, siginfo_t* si, void* ctx) {
    (void)sig, (void)si;
    ucontext_t* uc = ctx;
    const unsigned char* ip = (const unsigned char*)(uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
    uint64_t addr = 0;
    int len = decode_ldtilecfg(ip, uc, &addr);
    if (!len) { /* not ours: let the default action report it */
        undecoded = 1;
        signal(SIGILL, SIG_DFL);
        return;
    }
    memcpy(captured, (const void*)(uintptr_t)addr, 64);
    seen++;
    uc->uc_mcontext.gregs[REG_RIP] += len;
}

/* Leaves a recognisable pattern where the next call's frame will be. */
__attribute__((noinline)) static void dirty_stack(void) {
    volatile unsigned char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(0xa5 ^ i);
}

static void expect_kernel_config(const unsigned char* got, const char* what) {
    cf_amx_tilecfg want;
    cf_amx_tilecfg_fill(&want, 8, 16, 64);
    CHECK_MSG(!memcmp(got, &want, 64), "%s: config bytes differ from palette 1, tiles 0-7 16x64",
              what);
    const cf_amx_tilecfg* g = (const cf_amx_tilecfg*)got;
    CHECK_MSG(g->palette == 1 && g->colsb[7] == 64 && g->rows[7] == 16 && g->rows[8] == 0,
              "%s: palette %d, tile 7 %d x %d bytes, tile 8 rows %d", what, g->palette, g->rows[7],
              g->colsb[7], g->rows[8]);
}

__attribute__((target("amx-tile"))) static void tile_release(void) {
    __asm__ volatile("tilerelease" ::: "memory");
}

int main(void) {
    const cf_cpu_info* ci = cf_cpu();
    if (ci->amx_tile && ci->amx_permitted) {
        printf("AMX present: loading the kernels' config for real and reading it back\n");
        cf_amx_tilecfg back;
        dirty_stack();
        cf_amx_thread_begin();
        cf_amx_tilecfg_store(&back);
        tile_release();
        expect_kernel_config((const unsigned char*)&back, "cf_amx_thread_begin (sttilecfg)");
        return tt_summary();
    }
    if (ci->amx_tile) { /* ldtilecfg would run (no SIGILL) but tiles may not be used */
        printf("skipped: AMX present but tile data not permitted (%s)\n", ci->amx_error);
        return 77;
    }
    printf("no usable AMX (%s): catching ldtilecfg's SIGILL and reading its operand\n",
           ci->amx_note);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigill;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGILL, &sa, &old) == 0);

    /* The kernels' per-thread setup (src/cpu/x86/amx.c). */
    dirty_stack();
    cf_amx_thread_begin();
    CHECK_MSG(seen == 1 && !undecoded, "ldtilecfg caught %d times, undecoded %d", (int)seen,
              (int)undecoded);
    expect_kernel_config(captured, "cf_amx_thread_begin");

    /* The helper itself on a config built here, in a frame of its own. */
    seen = 0;
    dirty_stack();
    {
        cf_amx_tilecfg cfg;
        cf_amx_tilecfg_fill(&cfg, 8, 16, 64);
        cf_amx_tilecfg_load(&cfg);
    }
    CHECK(seen == 1);
    expect_kernel_config(captured, "cf_amx_tilecfg_load");

    sigaction(SIGILL, &old, NULL);
    return tt_summary();
}
#else
int main(void) {
    printf("skipped: no AMX code in this build (not x86-64, or the compiler lacks AMX)\n");
    return 77;
}
#endif
