/* The CUDA driver API as cflash uses it, from the one driver loader (src/probe/cuda_loader.h) that
 * the probe shares: no link to libcuda or libcudart, and no CUDA context until a CUDA op runs.
 * The primary context of a device is retained once and pushed/popped around each operation. */
#ifndef CFLASH_CUDA_DRV_H
#define CFLASH_CUDA_DRV_H

#include <stddef.h>
#include <stdint.h>

#include "cflash.h"
#include "probe/cuda_loader.h"

/* Attribute numbers from cuda.h (checked against the installed header by test_cuda_nvrtc). */
enum {
    CF_CU_ATTR_MAX_SMEM_PER_BLOCK = 8,
    CF_CU_ATTR_SM_COUNT = 16,
    CF_CU_ATTR_CC_MAJOR = 75,
    CF_CU_ATTR_CC_MINOR = 76,
    CF_CU_ATTR_MAX_SMEM_OPTIN = 97,
    CF_CU_ATTR_MEMORY_POOLS = 115,
    CF_CU_FUNC_ATTR_NUM_REGS = 4,
    CF_CU_FUNC_ATTR_MAX_DYN_SMEM = 8,
};

/* The driver functions, or NULL with a reason ("libcuda.so.1 not found: <dlerror>", "cuInit
 * failed: CUDA_ERROR_NO_DEVICE ..."). Loads and runs cuInit once; creates no context. */
const cf_cu_api* cf_cu(char* why, size_t why_len);

/* Availability for the dispatcher and the report: 1, or 0 with the reason. Same as cf_cu plus
 * "no CUDA device" when cuDeviceGetCount is 0. */
int cf_cu_available(char* why, size_t why_len);

/* A device's fixed properties (queried once, no context needed). */
typedef struct cf_cu_device {
    int ordinal;
    int cc_major, cc_minor; /* sm_XY = 10 * X + Y */
    int sm_count;
    int smem_optin;   /* max dynamic shared memory per block after opt-in, bytes */
    int smem_default; /* without opt-in */
    int memory_pools; /* cuMemAllocAsync usable */
    size_t total_mem;
    char name[128];
} cf_cu_device;

/* Number of devices (0 when the driver is missing). */
int cf_cu_device_count(void);
/* Properties of device ordinal, or CFLASH_ERR_BACKEND / INVALID_ARGUMENT (message set). */
cflash_status cf_cu_device_get(int ordinal, cf_cu_device* out);

/* cf_impl.verified for a CUDA backend named `backend` and a call on device_id: 1 when the
 * device's arch has passed the GPU tests (probe/gpu_probe.h's table) or the device cannot be
 * queried (supports() has said why), else 0 with the reason and how to force it. */
int cf_cuda_verified(int device_id, const char* backend, char* why, size_t n);

/* Makes the device's primary context current for this thread (retained once per process, lazily),
 * remembering the previous one; cf_cu_leave restores it. Every CUDA op runs between the two. */
cflash_status cf_cu_enter(int ordinal);
void cf_cu_leave(void);

/* Turns a failing CUresult into CFLASH_ERR_BACKEND with "cuda: what: NAME: description". */
cflash_status cf_cu_error(CUresult r, const char* what);
#define CF_CU_TRY(expr, what)                                                                      \
    do {                                                                                           \
        CUresult cf_cu_r_ = (expr);                                                                \
        if (cf_cu_r_ != 0) return cf_cu_error(cf_cu_r_, (what));                                   \
    } while (0)

/* ---- Memory for the tool and the tests (each enters and leaves the context itself) ---- */
cflash_status cf_cu_malloc(int ordinal, void** p, size_t bytes);
void cf_cu_free(int ordinal, void* p);
/* to_device = 1: host -> device. Synchronous. */
cflash_status cf_cu_memcpy(int ordinal, void* dst, const void* src, size_t bytes, int to_device);
cflash_status cf_cu_sync(int ordinal);

#endif
