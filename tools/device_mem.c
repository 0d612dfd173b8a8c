/* Device memory for the tool: plain malloc for the CPU; other devices go through the library's
 * experimental device memory (cflash_device_*, its own driver loader), so the tool, like the
 * library, never links CUDA. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The tool runs on device 0 of a type. */
static DLDevice dev0(int device) {
    DLDevice d = {(DLDeviceType)device, 0};
    return d;
}

void* cf_tool_alloc(int device, size_t bytes, char* err, size_t err_len) {
    if (device == kDLCPU) {
        void* p = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
        if (!p) snprintf(err, err_len, "out of host memory (%zu bytes)", bytes);
        return p;
    }
    /* CFLASH-TOOL-CUDA-ALLOC */
    if (device == kDLCUDA) { /* device 0; the context is created here, at first use */
        void* p = NULL;
        if (cflash_device_alloc(dev0(device), bytes, &p) != CFLASH_OK) {
            snprintf(err, err_len, "%s", cflash_last_error());
            return NULL;
        }
        return p;
    }
    snprintf(err, err_len, "device %s: this build of the tool has no memory support for it",
             cflash_device_name(device));
    return NULL;
}

int cf_tool_shape_bytes(int ndim, const int64_t* shape, size_t es, int64_t* n, size_t* bytes,
                        char* err, size_t err_len) {
    int big = 0;
    *n = 1, *bytes = 0;
    for (int i = 0; i < ndim; i++)
        big |= __builtin_mul_overflow(*n, shape[i], n);
    if (!big && *n >= 0 && !__builtin_mul_overflow((size_t)*n, es, bytes)) return 0;
    int k = snprintf(err, err_len, "a tensor of shape (%lld", ndim ? (long long)shape[0] : 0LL);
    for (int i = 1; i < ndim && k >= 0 && (size_t)k < err_len; i++)
        k += snprintf(err + k, err_len - (size_t)k, ", %lld", (long long)shape[i]);
    if (k >= 0 && (size_t)k < err_len) snprintf(err + k, err_len - (size_t)k, ") is too large");
    return -1;
}

void cf_tool_free(int device, void* p) {
    if (!p) return;
    if (device == kDLCPU) {
        free(p);
        return;
    }
    /* CFLASH-TOOL-CUDA-FREE */
    if (device == kDLCUDA) cflash_device_free(dev0(device), p);
}

int cf_tool_copy(int device, void* dst, const void* src, size_t bytes, int to_device, char* err,
                 size_t err_len) {
    (void)to_device;
    if (device == kDLCPU) {
        memcpy(dst, src, bytes);
        return 0;
    }
    /* CFLASH-TOOL-CUDA-COPY */
    if (device == kDLCUDA) {
        if (cflash_device_copy(dev0(device), dst, src, bytes, to_device) == CFLASH_OK) return 0;
        snprintf(err, err_len, "%s", cflash_last_error());
        return -1;
    }
    snprintf(err, err_len, "device %s: copies not supported by this build of the tool",
             cflash_device_name(device));
    return -1;
}

int cf_tool_sync(int device, char* err, size_t err_len) {
    if (device == kDLCPU) return 0;
    /* CFLASH-TOOL-CUDA-SYNC */
    if (device == kDLCUDA) {
        if (cflash_device_sync(dev0(device)) == CFLASH_OK) return 0;
        snprintf(err, err_len, "%s", cflash_last_error());
        return -1;
    }
    snprintf(err, err_len, "device %s: sync not supported by this build of the tool",
             cflash_device_name(device));
    return -1;
}
