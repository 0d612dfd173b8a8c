/* A fake CUDA driver (built by the tests as libcuda.so.1) to drive the probe through failures that
 * need a real driver to happen otherwise: cuInit returns the code in CFLASH_FAKE_CUINIT (default
 * 100, CUDA_ERROR_NO_DEVICE); with 0 it lists one fake device, sm_80 or the compute capability
 * in CFLASH_FAKE_CC (major * 10 + minor: 90 = sm_90). Built with
 * -DFAKE_LACK_TOTALMEM it lacks cuDeviceTotalMem_v2, like a driver too old or a wrong library.
 * It exports every entry point the CUDA backends load, so their reasons come from cuInit too;
 * anything that would touch a GPU fails with CUDA_ERROR_NOT_SUPPORTED (801). */
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* cuInit calls so far: the probe and the backends share one loader, so at most one per process. */
EXPORT int cf_fake_cuinit_calls;

EXPORT int cuInit(unsigned flags) {
    (void)flags;
    cf_fake_cuinit_calls++;
    const char* e = getenv("CFLASH_FAKE_CUINIT");
    return e ? atoi(e) : 100;
}
EXPORT int cuDriverGetVersion(int* v) {
    *v = 12040;
    return 0;
}
EXPORT int cuDeviceGetCount(int* n) {
    *n = 1;
    return 0;
}
EXPORT int cuDeviceGet(int* d, int ordinal) {
    *d = ordinal;
    return ordinal == 0 ? 0 : 101;
}
EXPORT int cuDeviceGetName(char* name, int len, int dev) {
    (void)dev;
    strncpy(name, "Fake GPU for cflash tests", (size_t)len);
    name[len - 1] = 0;
    return 0;
}
static int fake_cc(void) {
    const char* e = getenv("CFLASH_FAKE_CC");
    return e ? atoi(e) : 80;
}
EXPORT int cuDeviceGetAttribute(int* v, int attr, int dev) {
    (void)dev;
    switch (attr) {
    case 75: *v = fake_cc() / 10; return 0; /* compute capability major */
    case 76: *v = fake_cc() % 10; return 0; /* minor */
    case 16: *v = 108; return 0;            /* multiprocessors */
    default: *v = 0; return 1;
    }
}
#ifndef FAKE_LACK_TOTALMEM
EXPORT int cuDeviceTotalMem_v2(size_t* bytes, int dev) {
    (void)dev;
    *bytes = (size_t)40 << 30;
    return 0;
}
#endif

EXPORT int cuGetErrorName(int r, const char** s) {
    *s = r == 100   ? "CUDA_ERROR_NO_DEVICE"
         : r == 34  ? "CUDA_ERROR_STUB_LIBRARY"
         : r == 801 ? "CUDA_ERROR_NOT_SUPPORTED"
         : r == 0   ? "CUDA_SUCCESS"
                    : NULL;
    return *s ? 0 : 1;
}
EXPORT int cuGetErrorString(int r, const char** s) {
    *s = r == 100   ? "no CUDA-capable device is detected (fake)"
         : r == 34  ? "CUDA driver is a stub library (fake)"
         : r == 801 ? "operation not supported (fake driver)"
         : r == 0   ? "no error"
                    : NULL;
    return *s ? 0 : 1;
}

/* Everything past probing: no GPU behind this driver. */
#define FAKE_UNSUPPORTED(name)                                                                     \
    EXPORT int name(void) {                                                                        \
        return 801;                                                                                \
    }
FAKE_UNSUPPORTED(cuDevicePrimaryCtxRetain)
FAKE_UNSUPPORTED(cuCtxPushCurrent)
FAKE_UNSUPPORTED(cuCtxPushCurrent_v2)
FAKE_UNSUPPORTED(cuCtxPopCurrent)
FAKE_UNSUPPORTED(cuCtxPopCurrent_v2)
FAKE_UNSUPPORTED(cuCtxSynchronize)
FAKE_UNSUPPORTED(cuModuleLoadData)
FAKE_UNSUPPORTED(cuModuleUnload)
FAKE_UNSUPPORTED(cuModuleGetFunction)
FAKE_UNSUPPORTED(cuFuncSetAttribute)
FAKE_UNSUPPORTED(cuFuncGetAttribute)
FAKE_UNSUPPORTED(cuLaunchKernel)
FAKE_UNSUPPORTED(cuMemAlloc)
FAKE_UNSUPPORTED(cuMemAlloc_v2)
FAKE_UNSUPPORTED(cuMemAllocAsync)
FAKE_UNSUPPORTED(cuMemFree)
FAKE_UNSUPPORTED(cuMemFree_v2)
FAKE_UNSUPPORTED(cuMemFreeAsync)
FAKE_UNSUPPORTED(cuMemcpyHtoD)
FAKE_UNSUPPORTED(cuMemcpyHtoD_v2)
FAKE_UNSUPPORTED(cuMemcpyDtoH)
FAKE_UNSUPPORTED(cuMemcpyDtoH_v2)
FAKE_UNSUPPORTED(cuMemcpyHtoDAsync)
FAKE_UNSUPPORTED(cuMemcpyHtoDAsync_v2)
FAKE_UNSUPPORTED(cuMemcpyDtoHAsync)
FAKE_UNSUPPORTED(cuMemcpyDtoHAsync_v2)
FAKE_UNSUPPORTED(cuMemsetD8Async)
FAKE_UNSUPPORTED(cuMemsetD32Async)
FAKE_UNSUPPORTED(cuStreamSynchronize)
