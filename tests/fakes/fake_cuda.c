/* A fake CUDA driver (built by the tests as libcuda.so.1) to drive the probe through failures that
 * need a real driver to happen otherwise: cuInit returns the code in CFLASH_FAKE_CUINIT (default
 * 100, CUDA_ERROR_NO_DEVICE); with 0 it lists one fake sm_80 device. Built with
 * -DFAKE_LACK_TOTALMEM it lacks cuDeviceTotalMem_v2, like a driver too old or a wrong library. */
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT int cuInit(unsigned flags) {
    (void)flags;
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
EXPORT int cuDeviceGetAttribute(int* v, int attr, int dev) {
    (void)dev;
    switch (attr) {
    case 75: *v = 8; return 0;   /* compute capability major */
    case 76: *v = 0; return 0;   /* minor */
    case 16: *v = 108; return 0; /* multiprocessors */
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
