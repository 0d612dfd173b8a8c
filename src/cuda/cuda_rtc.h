/* Run-time compilation of the embedded kernel sources: NVRTC loaded with dlsym from the probe's
 * handle, the target chosen for the device (cubin for its exact sm_XY when NVRTC supports it, else
 * PTX for the newest arch it supports), the kernel cache in front, and precompiled (AOT) cubins
 * when the build embedded them. */
#ifndef CFLASH_CUDA_RTC_H
#define CFLASH_CUDA_RTC_H

#include <stddef.h>

#include "cflash.h"
#include "cuda/cuda_drv.h"

/* ---- Embedded sources (generated at build time from src/cuda/kernels/) ---- */
typedef struct cf_cuda_source {
    const char* name; /* "attn_simt.cu", "cf_common.cuh" */
    const char* text;
} cf_cuda_source;
extern const cf_cuda_source cf_cuda_sources[]; /* terminated by {NULL, NULL} */

/* Cubins built by nvcc when configured with CFLASH_CUDA_AOT=ON (else an empty table). */
typedef struct cf_cuda_aot {
    const char* name;    /* source file */
    const char* defines; /* exactly as in cf_cuda_variant */
    int arch;            /* sm_XY as XY */
    const unsigned char* data;
    size_t len;
} cf_cuda_aot;
extern const cf_cuda_aot cf_cuda_aot_table[];
extern const int cf_cuda_aot_count;

const char* cf_cuda_source_text(const char* name); /* NULL if unknown */
/* One line for the report ("7 sources for NVRTC; no precompiled cubins ..."), with the counts. */
void cf_cuda_describe_kernels(char* out, size_t len, int* n_sources, int* n_binaries);

/* ---- Kernel variants: every (source, defines) the launch code can ask for ---- */
typedef struct cf_cuda_variant {
    const char* name;
    char defines[96]; /* "-DCF_DTYPE=1 -DCF_DMAX=128" */
    int min_arch;     /* lowest sm it is meant for (80 for the tensor-core kernels) */
} cf_cuda_variant;
/* Fills up to max variants; returns the total count. The AOT list in CMakeLists.txt mirrors it. */
int cf_cuda_variants(cf_cuda_variant* out, int max);

/* ---- NVRTC ---- */
/* 1 if NVRTC loaded, else 0 with "libnvrtc.so.* not found: ...". */
int cf_nvrtc_available(char* why, size_t why_len);
/* Version of the loaded NVRTC (0.0 when absent). */
void cf_nvrtc_version(int* major, int* minor);
/* The archs the NVRTC can target (as XY), ascending; returns the count (0 when absent). */
int cf_nvrtc_archs(int* archs, int max);

/* Compiles source name with defines for target (cubin: -arch=sm_XY, or PTX: -arch=compute_XY),
 * through the kernel cache. *image is malloc'ed (free it); *len its size (PTX: with the NUL).
 * *from_cache tells whether it was a cache hit. On a compile error the message holds the log. */
cflash_status cf_nvrtc_compile(const char* name, const char* defines, int arch, int ptx,
                               void** image, size_t* len, int* from_cache);

/* The target NVRTC would use for a device of sm_XY: *ptx = 0 and *target = arch when it can emit
 * a cubin for it, else *ptx = 1 and the newest arch it supports below it. Error when none. */
cflash_status cf_nvrtc_target(int arch, int* target, int* ptx);

/* ---- Modules ---- */
/* The module for (source, defines) on the device, loaded in its primary context (which must be
 * current: call between cf_cu_enter and cf_cu_leave). Built once per process and device, from
 * the AOT table, else the cache, else NVRTC. */
cflash_status cf_cuda_module(const cf_cu_device* dev, const char* name, const char* defines,
                             CUmodule* mod);

#endif
