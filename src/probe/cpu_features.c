/* The CPU probe: vendor, brand, logical CPUs, cache sizes and ISA features, computed once per
 * process. On x86-64 a feature counts only when CPUID reports it AND XGETBV shows the OS saves its
 * register state; AMX also needs the tile-data permission from arch_prctl. On ARM features come
 * from getauxval. Nothing here runs a subprocess; cache sizes come from sysfs, then sysconf. */
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "probe/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <errno.h>
#include <sys/syscall.h>
#define CF_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define CF_ARM64 1
#endif

static cf_cpu_info info;
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* ---- Cores and caches (any architecture) ---- */

static int count_cores(void) {
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Reads a small sysfs text file into buf; returns 0 on success. */
static int read_text(const char* path, char* buf, size_t len) {
    FILE* f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = 0;
    return n ? 0 : -1;
}

static int64_t parse_size(const char* s) {
    char* end;
    long long v = strtoll(s, &end, 10);
    if (*end == 'K')
        v *= 1024;
    else if (*end == 'M')
        v *= 1024 * 1024;
    return v > 0 ? (int64_t)v : 0;
}

/* Number of CPUs in a sysfs list such as "0-7,16-23". */
static int count_cpu_list(const char* s) {
    int n = 0;
    while (*s) {
        char* end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s) break;
        if (*end == '-') b = strtol(end + 1, &end, 10);
        n += (int)(b - a + 1);
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* L1d and L2 of cpu0; L3 as the sum over its instances (size * CPUs / CPUs sharing one). */
static void probe_caches(cf_cpu_info* c) {
    char path[128], level[16], type[32], size[32], shared[256];
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 0; i < 8; i++) {
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        if (read_text(path, level, sizeof level)) continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        if (read_text(path, type, sizeof type)) continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        if (read_text(path, size, sizeof size)) continue;
        int64_t bytes = parse_size(size);
        if (!strcmp(level, "1") && !strcmp(type, "Data"))
            c->l1d_bytes = bytes;
        else if (!strcmp(level, "2"))
            c->l2_bytes = bytes;
        else if (!strcmp(level, "3")) {
            snprintf(path, sizeof path,
                     "/sys/devices/system/cpu/cpu0/cache/index%d/shared_cpu_list", i);
            int sharing = read_text(path, shared, sizeof shared) ? 0 : count_cpu_list(shared);
            int64_t instances =
                sharing > 0 && online > sharing ? (online + sharing - 1) / sharing : 1;
            c->l3_bytes = bytes * instances;
        }
    }
#ifdef _SC_LEVEL1_DCACHE_SIZE
    if (!c->l1d_bytes && sysconf(_SC_LEVEL1_DCACHE_SIZE) > 0)
        c->l1d_bytes = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    if (!c->l2_bytes && sysconf(_SC_LEVEL2_CACHE_SIZE) > 0)
        c->l2_bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (!c->l3_bytes && sysconf(_SC_LEVEL3_CACHE_SIZE) > 0)
        c->l3_bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
}

/* The kernel's transparent huge page mode, the bracketed word of "always [madvise] never". */
static void probe_thp(cf_cpu_info* c) {
    char mode[64];
    if (read_text("/sys/kernel/mm/transparent_hugepage/enabled", mode, sizeof mode)) return;
    const char *a = strchr(mode, '['), *b = a ? strchr(a, ']') : NULL;
    if (b && b - a - 1 < (ptrdiff_t)sizeof c->thp)
        memcpy(c->thp, a + 1, (size_t)(b - a - 1)), c->thp[b - a - 1] = 0;
}

/* ---- x86-64: CPUID, XGETBV, arch_prctl ---- */
#ifdef CF_X86

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

#define BIT(r, n) (((r) >> (n)) & 1u)

/* Asks Linux for the AMX tile-data state (needed before the first tile instruction, else
 * SIGILL). Returns 1 when granted; else 0 with the reason in err. */
static int request_amx(char* err, size_t len) {
#ifdef SYS_arch_prctl
    unsigned long bitmask = 0;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        snprintf(err, len, "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: %s%s",
                 strerror(errno),
                 errno == EINVAL ? " (kernel older than 5.16 or without AMX support)" : "");
        return 0;
    }
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &bitmask) != 0 ||
        !(bitmask & (1ul << XFEATURE_XTILEDATA))) {
        snprintf(err, len,
                 "arch_prctl granted the request but XTILEDATA is not in the permitted "
                 "set");
        return 0;
    }
    return 1;
#else
    snprintf(err, len, "arch_prctl is not available on this system");
    return 0;
#endif
}

static void probe_x86(cf_cpu_info* c) {
    unsigned a, b, cx, d;
    if (!__get_cpuid(0, &a, &b, &cx, &d)) return;
    unsigned max_leaf = a;
    memcpy(c->vendor, &b, 4);
    memcpy(c->vendor + 4, &d, 4);
    memcpy(c->vendor + 8, &cx, 4);
    c->vendor[12] = 0;

    unsigned ext = __get_cpuid_max(0x80000000u, NULL);
    if (ext >= 0x80000004u) {
        unsigned r[12];
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        char brand[49];
        memcpy(brand, r, 48);
        brand[48] = 0;
        const char* s = brand;
        while (*s == ' ')
            s++;
        snprintf(c->model, sizeof c->model, "%s", s);
        for (size_t n = strlen(c->model); n && c->model[n - 1] == ' ';)
            c->model[--n] = 0;
    }

    __get_cpuid(1, &a, &b, &cx, &d);
    c->stepping = a & 0xf;
    int base_family = (a >> 8) & 0xf, base_model = (a >> 4) & 0xf;
    c->family = base_family == 0xf ? base_family + (int)((a >> 20) & 0xff) : base_family;
    c->model_id = (base_family == 0x6 || base_family == 0xf)
                      ? base_model + (int)(((a >> 16) & 0xf) << 4)
                      : base_model;
    int osxsave = BIT(cx, 27);
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    c->os_avx = (xcr0 & 0x6) == 0x6;
    c->os_avx512 = c->os_avx && (xcr0 & 0xe0) == 0xe0;
    c->os_amx = (xcr0 & 0x60000) == 0x60000;

    c->sse42 = BIT(cx, 20);
    c->avx = BIT(cx, 28) && c->os_avx;
    c->fma = BIT(cx, 12) && c->os_avx;
    c->f16c = BIT(cx, 29) && c->os_avx;

    unsigned b7 = 0, c7 = 0, d7 = 0, a71 = 0;
    if (max_leaf >= 7) {
        unsigned max_sub;
        __cpuid_count(7, 0, max_sub, b7, c7, d7);
        if (max_sub >= 1) {
            unsigned t1, t2, t3;
            __cpuid_count(7, 1, a71, t1, t2, t3);
        }
    }
    c->avx2 = BIT(b7, 5) && c->os_avx;
    int cpu_avx512f = BIT(b7, 16);
    c->avx512f = cpu_avx512f && c->os_avx512;
    c->avx512dq = BIT(b7, 17) && c->os_avx512;
    c->avx512bw = BIT(b7, 30) && c->os_avx512;
    c->avx512vl = BIT(b7, 31) && c->os_avx512;
    c->avx512vnni = BIT(c7, 11) && c->os_avx512;
    c->avx512vbmi = BIT(c7, 1) && c->os_avx512;
    c->avx512fp16 = BIT(d7, 23) && c->os_avx512;
    c->avx512bf16 = BIT(a71, 5) && c->os_avx512;
    /* vdpbf16ps runs at twice the fp32 FMA rate on AMD (Zen 4: 431 vs 213 GFLOP/s) but at half
     * of it on Intel (family 6 model 207: 161 vs 334; `cflash bench peak`, 2 threads,
     * 2026-12-02), where the fp32 GEMM on converted rows ran bf16 attention 1.5x faster forward
     * and 1.35x backward (docs/PERF.md). */
    c->bf16_dot_gemm = c->avx512bf16 && strcmp(c->vendor, "GenuineIntel") != 0;
    snprintf(c->bf16_gemm_note, sizeof c->bf16_gemm_note, "%s",
             c->bf16_dot_gemm ? "vdpbf16ps (AVX512-BF16)"
             : c->avx512bf16  ? "fp32 FMA on rows converted from bf16: vdpbf16ps runs at half the "
                                "FMA rate on Intel"
                              : "fp32 FMA on rows converted from bf16 (no AVX512-BF16)");
    /* CFLASH_BF16_GEMM=dot|fma takes the other path on a CPU that can run both (so that each is
     * tested on every CPU with AVX512-BF16, and timed against the other) */
    const char* force = getenv("CFLASH_BF16_GEMM");
    if (force && *force) {
        const int dot = !strcmp(force, "dot"), fma = !strcmp(force, "fma");
        if ((dot || fma) && c->avx512bf16) {
            c->bf16_dot_gemm = dot;
            snprintf(c->bf16_gemm_note, sizeof c->bf16_gemm_note, "%s (CFLASH_BF16_GEMM=%s)",
                     dot ? "vdpbf16ps (AVX512-BF16)" : "fp32 FMA on rows converted from bf16",
                     force);
        } else {
            const size_t n = strlen(c->bf16_gemm_note);
            snprintf(c->bf16_gemm_note + n, sizeof c->bf16_gemm_note - n,
                     "; CFLASH_BF16_GEMM=%.16s ignored: %s", force,
                     dot || fma ? "no AVX512-BF16" : "expected dot or fma");
        }
    }
    if (!cpu_avx512f)
        snprintf(c->avx512_note, sizeof c->avx512_note,
                 "CPU does not report AVX-512F (CPUID.(7,0):EBX[16] = 0)");
    else if (!c->os_avx512)
        snprintf(c->avx512_note, sizeof c->avx512_note,
                 "CPU has AVX-512F but the OS does not enable the ZMM/opmask state (XCR0 = 0x%llx)",
                 (unsigned long long)xcr0);

    int cpu_tile = BIT(d7, 24), cpu_bf16 = BIT(d7, 22), cpu_int8 = BIT(d7, 25);
    int cpu_fp16 = BIT(a71, 21);
    if (!cpu_tile) {
        snprintf(c->amx_note, sizeof c->amx_note,
                 "not present: the CPU does not report AMX-TILE (CPUID.(7,0):EDX[24] = 0)");
        return;
    }
    if (!c->os_amx) {
        snprintf(c->amx_note, sizeof c->amx_note,
                 "CPU has AMX but the OS does not enable the tile state (XCR0 = 0x%llx lacks bits "
                 "17-18)",
                 (unsigned long long)xcr0);
        return;
    }
    c->amx_tile = 1;
    c->amx_bf16 = cpu_bf16;
    c->amx_fp16 = cpu_fp16;
    c->amx_int8 = cpu_int8;
    c->amx_permitted = request_amx(c->amx_error, sizeof c->amx_error);
    if (c->amx_permitted)
        snprintf(c->amx_note, sizeof c->amx_note, "usable");
    else
        snprintf(c->amx_note, sizeof c->amx_note, "present but not permitted: %s", c->amx_error);
}
#endif

/* ---- ARM64: getauxval, prctl ---- */
#ifdef CF_ARM64
#include <sys/prctl.h>
/* The bits of <asm/hwcap.h>, spelled out: older libc headers lack the newer ones. */
#define CF_HWCAP_ASIMD (1ul << 1)
#define CF_HWCAP_FPHP (1ul << 9)
#define CF_HWCAP_ASIMDHP (1ul << 10)
#define CF_HWCAP_ASIMDDP (1ul << 20)
#define CF_HWCAP_SVE (1ul << 22)
#define CF_HWCAP_ASIMDFHM (1ul << 23)
#define CF_HWCAP2_SVE2 (1ul << 1)
#define CF_HWCAP2_SVEBF16 (1ul << 12)
#define CF_HWCAP2_I8MM (1ul << 13)
#define CF_HWCAP2_BF16 (1ul << 14)
#define CF_HWCAP2_SME (1ul << 23)
#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif
#ifndef PR_SVE_GET_VL
#define PR_SVE_GET_VL 51
#endif
#define CF_PR_SVE_VL_LEN_MASK 0xffff

static void probe_arm(cf_cpu_info* c) {
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    snprintf(c->vendor, sizeof c->vendor, "ARM");
    snprintf(c->model, sizeof c->model, "aarch64");
    /* MIDR_EL1 as Linux exposes it: implementer [31:24], variant [23:20], part [15:4], rev [3:0].
     */
    char midr[32];
    if (!read_text("/sys/devices/system/cpu/cpu0/regs/identification/midr_el1", midr,
                   sizeof midr)) {
        unsigned long m = strtoul(midr, NULL, 16);
        c->family = (int)((m >> 24) & 0xff);
        c->model_id = (int)((m >> 4) & 0xfff);
        c->stepping = (int)(m & 0xf);
        snprintf(c->model, sizeof c->model, "aarch64 (implementer 0x%02x, part 0x%03x)", c->family,
                 c->model_id);
    }
    c->neon = (hw & CF_HWCAP_ASIMD) != 0;
    c->fphp = (hw & CF_HWCAP_FPHP) != 0;
    c->asimdhp = (hw & CF_HWCAP_ASIMDHP) != 0;
    c->asimdfhm = (hw & CF_HWCAP_ASIMDFHM) != 0;
    c->asimddp = (hw & CF_HWCAP_ASIMDDP) != 0;
    c->bf16 = (hw2 & CF_HWCAP2_BF16) != 0;
    c->i8mm = (hw2 & CF_HWCAP2_I8MM) != 0;
    c->sve = (hw & CF_HWCAP_SVE) != 0;
    c->sve2 = (hw2 & CF_HWCAP2_SVE2) != 0;
    c->sve_bf16 = (hw2 & CF_HWCAP2_SVEBF16) != 0;
    c->sme = (hw2 & CF_HWCAP2_SME) != 0;
    if (c->sve) {
        /* The length this thread runs with (a process may lower it with PR_SVE_SET_VL). */
        const int vl = prctl(PR_SVE_GET_VL, 0, 0, 0, 0);
        c->sve_vl = vl > 0 ? vl & CF_PR_SVE_VL_LEN_MASK : 0;
    }
    char sve[64];
    if (c->sve)
        snprintf(sve, sizeof sve, "%d-bit vectors%s", c->sve_vl * 8, c->sve2 ? ", SVE2" : "");
    else
        snprintf(sve, sizeof sve, "absent (AT_HWCAP bit 22 = 0)");
    if (!c->neon)
        snprintf(c->arm_note, sizeof c->arm_note,
                 "AdvSIMD not reported (AT_HWCAP bit 1 = 0): no NEON kernels; SVE %s", sve);
    else
        snprintf(c->arm_note, sizeof c->arm_note, "NEON usable; bf16 %s; fp16 %s; SVE %s",
                 c->bf16 ? "by BFMMLA (FEAT_BF16)" : "converted to fp32 (no FEAT_BF16)",
                 c->asimdfhm ? "by FMLAL (FEAT_FHM)" : "converted to fp32 (no FEAT_FHM)", sve);
    snprintf(c->avx512_note, sizeof c->avx512_note, "not an x86 CPU");
    snprintf(c->amx_note, sizeof c->amx_note, "not present: not an x86 CPU");
}
#endif

static void probe(void) {
    cf_cpu_info* c = &info;
    snprintf(c->vendor, sizeof c->vendor, "unknown");
    snprintf(c->model, sizeof c->model, "unknown");
#if defined(CF_X86)
    snprintf(c->arm_note, sizeof c->arm_note, "not an ARM CPU");
    probe_x86(c);
#elif defined(CF_ARM64)
    probe_arm(c);
#else
    snprintf(c->arm_note, sizeof c->arm_note, "not an ARM CPU");
    snprintf(c->avx512_note, sizeof c->avx512_note, "not an x86 CPU");
    snprintf(c->amx_note, sizeof c->amx_note, "not present: not an x86 CPU");
#endif
    c->cores = count_cores();
    probe_caches(c);
    probe_thp(c);
}

const cf_cpu_info* cf_cpu(void) {
    pthread_once(&once, probe);
    return &info;
}
