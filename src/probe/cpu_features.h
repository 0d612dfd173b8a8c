/* What the CPU can do, probed once per process: CPUID leaves with OS support from XGETBV on
 * x86-64, getauxval on ARM. Kernels and dispatch read this, never CPUID directly. */
#ifndef CFLASH_PROBE_CPU_FEATURES_H
#define CFLASH_PROBE_CPU_FEATURES_H

#include <stdint.h>

typedef struct cf_cpu_info {
    char vendor[16];                       /* "GenuineIntel", "AuthenticAMD", "ARM" */
    char model[64];                        /* brand string */
    int family, model_id, stepping;        /* x86: CPUID leaf 1; ARM: MIDR implementer, part, rev */
    int cores;                             /* online logical CPUs available to this process */
    int64_t l1d_bytes, l2_bytes, l3_bytes; /* per core (L1d, L2) and total (L3); 0 = unknown */
    char thp[16]; /* transparent huge pages: "always", "madvise", "never"; "" = not known */
    /* ISA features usable now: CPU has it AND the OS saves the state (XGETBV). */
    int sse42, avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512dq, avx512bf16, avx512fp16, avx512vnni;
    int avx512vbmi; /* VPERMB / VPERMI2B: byte tables (the KV cache's fp8 / int8 codes) */
    int amx_tile, amx_bf16, amx_fp16, amx_int8; /* CPU reports AMX and XCR0 enables tile state */
    int amx_permitted;   /* arch_prctl(ARCH_REQ_XCOMP_PERM) granted the tile data state */
    char amx_error[128]; /* why not permitted ("" when permitted or no AMX) */
    /* ARM (getauxval AT_HWCAP / AT_HWCAP2; Linux sets a bit only when the kernel supports it) */
    int neon;          /* AdvSIMD (asimd): every AArch64 Linux CPU */
    int fphp, asimdhp; /* FEAT_FP16: scalar / vector half-precision arithmetic */
    int asimdfhm;      /* FEAT_FHM: FMLAL, fp16 products accumulated in fp32 */
    int asimddp;       /* FEAT_DotProd: SDOT/UDOT */
    int bf16, i8mm;    /* FEAT_BF16 (BFDOT, BFMMLA, BFCVT) and FEAT_I8MM (SMMLA) for AdvSIMD */
    int sve, sve2, sve_bf16, sme;
    int sve_vl;         /* SVE vector length of this thread in bytes (PR_SVE_GET_VL); 0 = no SVE */
    char arm_note[192]; /* what the ARM kernels can use here, or "not an ARM CPU" */
    /* Why the features above are what they are, in words, for reasons and the report: */
    int os_avx, os_avx512, os_amx; /* XCR0 enables the YMM / ZMM+opmask / tile state */
    char avx512_note[160];         /* "" when AVX-512F is usable, else why not */
    char amx_note[192]; /* "usable" or why not ("CPU does not report AMX-TILE (CPUID...)") */
    /* x86 bf16 GEMMs (cpu-avx512, and cpu-amx's work off the tiles): 1 = vdpbf16ps, 0 = the bf16
     * rows converted (exactly) to fp32 for the FMA GEMM; the note says which and why. */
    int bf16_dot_gemm;
    char bf16_gemm_note[160];
} cf_cpu_info;

/* The probe result; computed once (thread-safe), never NULL. AMX permission is requested on
 * the first call when the CPU has AMX. */
const cf_cpu_info* cf_cpu(void);

#endif
