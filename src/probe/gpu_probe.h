/* What the CUDA driver, NVRTC and cuFile offer on this machine, probed once per process through
 * dlopen + dlsym (probe/dynlib.h). The CUDA probe calls cuInit and context-free queries only
 * (driver version, device count, per device name, compute capability, SMs, memory): it never
 * creates a context, never aborts, and every failure leaves its reason in `error`. */
#ifndef CFLASH_PROBE_GPU_PROBE_H
#define CFLASH_PROBE_GPU_PROBE_H

#include <stdint.h>

#define CF_MAX_CUDA_DEVICES 16

typedef struct cf_cuda_device {
    char name[256];
    int major, minor;   /* compute capability */
    int sms;            /* multiprocessors */
    uint64_t total_mem; /* bytes */
    char error[256];    /* "" unless a query for this device failed */
} cf_cuda_device;

typedef struct cf_cuda_info {
    int lib_found;      /* libcuda.so.1 loaded (see cf_dynlib_get(CF_LIB_CUDA) for where) */
    int symbols_ok;     /* every driver entry point the probe needs is exported */
    int init_result;    /* CUresult of cuInit(0); -1 when not called */
    int driver_version; /* cuDriverGetVersion, e.g. 12040 = 12.4; 0 = unknown */
    int device_count;   /* devices listed below (at most CF_MAX_CUDA_DEVICES) */
    int usable;         /* cuInit succeeded and at least one device */
    cf_cuda_device devices[CF_MAX_CUDA_DEVICES];
    char error[2304]; /* why not usable: the loader's message, the missing symbol, or the
                         cuInit error's name and text; "" when usable */
} cf_cuda_info;

typedef struct cf_nvrtc_info {
    int found;           /* libnvrtc loaded and nvrtcVersion works */
    int major, minor;    /* nvrtcVersion */
    int n_archs;         /* nvrtcGetSupportedArchs (0 when the NVRTC is older than 11.2) */
    int archs[128];      /* e.g. 75, 80, 86, 89, 90, 100, 120 */
    int builtins_found;  /* libnvrtc-builtins.so.MAJOR.MINOR loadable (NVRTC loads it to compile) */
    char builtins[1024]; /* its path, or the loader's message */
    char error[2304];    /* why not found; "" when found */
} cf_nvrtc_info;

typedef struct cf_cufile_info {
    int lib_found;         /* libcufile loaded */
    int driver_open_found; /* exports cuFileDriverOpen (not called: that opens the nvidia-fs driver)
                            */
    char error[2304];      /* why cuFile cannot be used; "" when it can */
} cf_cufile_info;

/* Each is computed once (thread-safe) and never NULL. */
const cf_cuda_info* cf_cuda_probe(void);
const cf_nvrtc_info* cf_nvrtc_probe(void);
const cf_cufile_info* cf_cufile_probe(void);

/* The GPU archs on which cflash's CUDA backends have passed the GPU tests (ctest -R test_cuda and
 * the level-1 grid on such a GPU: docs/PERF.md "NVIDIA GPUs"), with the GPU and the date. Other
 * archs are compiled for (test_cuda_nvrtc) but unverified: there the automatic choice passes the
 * CUDA backends over (they serve when forced) and `cflash report` says so. A row is added in the
 * commit that records a new arch passing (the table in gpu_probe.c). Here: the row's GPU and date
 * for sm (10 * major + minor), or NULL when sm has not passed. */
const char* cf_cuda_tested_on(int sm);
/* "sm_90 (NVIDIA H200, 2026-12-04)", the rows joined by ", ", into buf (truncated quietly). */
void cf_cuda_tested_list(char* buf, size_t len);

/* "CUDA_ERROR_NO_DEVICE" and the like for a CUresult (the driver's own name when it exports
 * cuGetErrorName, else a built-in table); never NULL. */
const char* cf_cuda_result_name(int result);

#endif
