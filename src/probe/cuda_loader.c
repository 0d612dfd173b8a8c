/* The driver loader (cuda_loader.h): one table of entry points, each marked with who needs it, so
 * the probe and the backend load the same symbols from the same handle once and call cuInit once.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/strbuf.h"
#include "probe/cuda_loader.h"
#include "probe/dynlib.h"

static cf_cu_api api;
static cf_cu_load_result result = {.init_result = -1};
static pthread_once_t once = PTHREAD_ONCE_INIT;

enum { PROBE = 1, BACKEND = 2 }; /* who needs the entry point (0 = optional for both) */

static void load(void) {
    const cf_dynlib* lib = cf_dynlib_get(CF_LIB_CUDA);
    if (!lib->found || !lib->handle) return;
    result.api = &api;
    const struct {
        void** slot;
        const char* name;
        int needed_by;
    } syms[] = {
#define S(field, sym, who) {(void**)&api.field, sym, who}
        S(cuInit, "cuInit", PROBE | BACKEND),
        S(cuDriverGetVersion, "cuDriverGetVersion", PROBE | BACKEND),
        S(cuDeviceGetCount, "cuDeviceGetCount", PROBE | BACKEND),
        S(cuDeviceGet, "cuDeviceGet", PROBE | BACKEND),
        S(cuDeviceGetName, "cuDeviceGetName", PROBE | BACKEND),
        S(cuDeviceGetAttribute, "cuDeviceGetAttribute", PROBE | BACKEND),
        S(cuDeviceTotalMem, "cuDeviceTotalMem_v2", PROBE | BACKEND),
        S(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", BACKEND),
        S(cuCtxPushCurrent, "cuCtxPushCurrent_v2", BACKEND),
        S(cuCtxPopCurrent, "cuCtxPopCurrent_v2", BACKEND),
        S(cuCtxSynchronize, "cuCtxSynchronize", BACKEND),
        S(cuModuleLoadData, "cuModuleLoadData", BACKEND),
        S(cuModuleUnload, "cuModuleUnload", BACKEND),
        S(cuModuleGetFunction, "cuModuleGetFunction", BACKEND),
        S(cuFuncSetAttribute, "cuFuncSetAttribute", BACKEND),
        S(cuFuncGetAttribute, "cuFuncGetAttribute", BACKEND),
        S(cuLaunchKernel, "cuLaunchKernel", BACKEND),
        S(cuMemAlloc, "cuMemAlloc_v2", BACKEND),
        S(cuMemFree, "cuMemFree_v2", BACKEND),
        S(cuMemAllocAsync, "cuMemAllocAsync", 0),
        S(cuMemFreeAsync, "cuMemFreeAsync", 0),
        S(cuMemcpyHtoD, "cuMemcpyHtoD_v2", BACKEND),
        S(cuMemcpyDtoH, "cuMemcpyDtoH_v2", BACKEND),
        S(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", BACKEND),
        S(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", BACKEND),
        S(cuMemsetD8Async, "cuMemsetD8Async", BACKEND),
        S(cuMemsetD32Async, "cuMemsetD32Async", BACKEND),
        S(cuStreamSynchronize, "cuStreamSynchronize", BACKEND),
        S(cuGetErrorString, "cuGetErrorString", BACKEND),
        S(cuGetErrorName, "cuGetErrorName", BACKEND),
#undef S
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        dlerror();
        *syms[i].slot = dlsym(lib->handle, syms[i].name);
        if (*syms[i].slot) continue;
        const char* e = dlerror();
        if (syms[i].needed_by & PROBE)
            cf_strcatf(result.probe_missing, sizeof result.probe_missing, "%s%s",
                       result.probe_missing[0] ? ", " : "", syms[i].name);
        if ((syms[i].needed_by & BACKEND) && !result.backend_missing[0]) {
            snprintf(result.backend_missing, sizeof result.backend_missing, "%s", syms[i].name);
            snprintf(result.backend_missing_error, sizeof result.backend_missing_error, "%s",
                     e ? e : "");
        }
    }
    if (result.probe_missing[0]) return;
    /* The version needs no cuInit, so it is known even when cuInit fails. */
    int v = 0;
    if (api.cuDriverGetVersion(&v) == 0) result.driver_version = v;
    result.init_result = api.cuInit(0);
}

const cf_cu_load_result* cf_cu_load(void) {
    pthread_once(&once, load);
    return &result;
}
