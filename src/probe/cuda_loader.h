/* The one CUDA driver loader, shared by the probe (src/probe/gpu_probe.c) and the CUDA backend
 * (src/cuda/cuda_drv.c): every driver entry point cflash uses, resolved once with dlsym on the
 * libcuda handle that dynlib found, then cuDriverGetVersion and cuInit(0). Nothing else: it never
 * creates a context (that breaks fork()), never runs a subprocess, never aborts. */
#ifndef CFLASH_PROBE_CUDA_LOADER_H
#define CFLASH_PROBE_CUDA_LOADER_H

#include <stddef.h>

/* The few driver types used, ABI-compatible with cuda.h (whose own types are used when a test
 * includes it first, to check the attribute numbers of cuda/cuda_drv.h). */
#ifndef __cuda_cuda_h__
typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st* CUcontext;
typedef struct CUmod_st* CUmodule;
typedef struct CUfunc_st* CUfunction;
typedef struct CUstream_st* CUstream;
typedef unsigned long long CUdeviceptr;
#endif

typedef struct cf_cu_api {
    CUresult (*cuInit)(unsigned);
    CUresult (*cuDriverGetVersion)(int*);
    CUresult (*cuDeviceGetCount)(int*);
    CUresult (*cuDeviceGet)(CUdevice*, int);
    CUresult (*cuDeviceGetAttribute)(int*, int, CUdevice);
    CUresult (*cuDeviceGetName)(char*, int, CUdevice);
    CUresult (*cuDeviceTotalMem)(size_t*, CUdevice);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
    CUresult (*cuCtxPushCurrent)(CUcontext);
    CUresult (*cuCtxPopCurrent)(CUcontext*);
    CUresult (*cuCtxSynchronize)(void);
    CUresult (*cuModuleLoadData)(CUmodule*, const void*);
    CUresult (*cuModuleUnload)(CUmodule);
    CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
    CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
    CUresult (*cuFuncGetAttribute)(int*, int, CUfunction);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                               unsigned, unsigned, CUstream, void**, void**);
    CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
    CUresult (*cuMemFree)(CUdeviceptr);
    CUresult (*cuMemAllocAsync)(CUdeviceptr*, size_t, CUstream); /* optional (CUDA 11.2+) */
    CUresult (*cuMemFreeAsync)(CUdeviceptr, CUstream);           /* optional */
    CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void*, size_t);
    CUresult (*cuMemcpyDtoH)(void*, CUdeviceptr, size_t);
    CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
    CUresult (*cuMemcpyDtoHAsync)(void*, CUdeviceptr, size_t, CUstream);
    CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
    CUresult (*cuMemsetD32Async)(CUdeviceptr, unsigned, size_t, CUstream);
    CUresult (*cuStreamSynchronize)(CUstream);
    CUresult (*cuGetErrorString)(CUresult, const char**);
    CUresult (*cuGetErrorName)(CUresult, const char**);
} cf_cu_api;

typedef struct cf_cu_load_result {
    const cf_cu_api* api; /* the resolved pointers (a missing one is NULL); NULL without libcuda */
    /* Entry points the probe needs that the library lacks, ", "-separated ("" when none). Without
     * them the loader calls neither cuDriverGetVersion nor cuInit. */
    char probe_missing[512];
    /* The first entry point the backend needs that the library lacks, and what dlerror said
     * ("" when none: the backend can use api). */
    char backend_missing[64];
    char backend_missing_error[1024];
    int driver_version; /* cuDriverGetVersion, e.g. 12040; 0 = unknown */
    int init_result;    /* CUresult of cuInit(0); -1 when not called */
} cf_cu_load_result;

/* Loads once (thread-safe) and returns the result; never NULL. Loads libcuda through dynlib
 * (cf_dynlib_get(CF_LIB_CUDA)) on the first call only. */
const cf_cu_load_result* cf_cu_load(void);

#endif
