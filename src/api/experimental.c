/* The experimental API (include/cflash_experimental.h): thin exports of what core and probe
 * already do, for the tool and the fp64 oracle, which see the library through its public headers
 * only. The peak measurement is CPU code and lives with it (src/cpu/peak.c). */
#include <stdio.h>
#include <string.h>

#include "cflash_experimental.h"
#include "core/device.h"
#include "core/philox.h"
#include "core/status.h"
#include "core/tensor.h"
#include "probe/cpu_features.h"

/* ---- Element types ---- */

cflash_dtype cflash_dtype_of(DLDataType t) {
    return cf_dtype_of(t);
}

DLDataType cflash_dtype_to_dl(cflash_dtype d) {
    DLDataType t = {kDLFloat, 32, 1};
    switch (d) {
    case CF_F32: break;
    case CF_F16: t.bits = 16; break;
    case CF_BF16: t.code = kDLBfloat, t.bits = 16; break;
    case CF_I32: t.code = kDLInt; break;
    case CF_U8: t.code = kDLUInt, t.bits = 8; break;
    case CF_I8: t.code = kDLInt, t.bits = 8; break;
    case CF_F8E4M3: t.code = CF_DL_FLOAT8_E4M3FN, t.bits = 8; break;
    case CF_F8E5M2: t.code = CF_DL_FLOAT8_E5M2, t.bits = 8; break;
    default: t.code = kDLOpaqueHandle, t.bits = 8; break;
    }
    return t;
}

size_t cflash_dtype_size(cflash_dtype d) {
    return cf_dtype_size(d);
}

const char* cflash_dtype_name(cflash_dtype d) {
    return cf_dtype_name(d);
}

const char* cflash_device_name(int device_type) {
    return cf_device_name(device_type);
}

float cflash_load(const void* data, cflash_dtype d, int64_t i) {
    return cf_load(data, d, i);
}

void cflash_store(void* data, cflash_dtype d, int64_t i, float x) {
    cf_store(data, d, i, x);
}

float cflash_round_to(cflash_dtype d, float x) {
    return cf_round_to(d, x);
}

/* ---- Dropout ---- */

int cflash_dropout_keep(uint64_t seed, uint64_t offset, float p, uint64_t b, uint64_t h, uint64_t i,
                        uint64_t j) {
    return cf_dropout_keep(seed, offset, p, b, h, i, j);
}

/* ---- This machine ---- */

void cflash_cpu_info_get(cflash_cpu_info* out) {
    if (!out) return;
    const cf_cpu_info* c = cf_cpu();
    memset(out, 0, sizeof *out);
    snprintf(out->vendor, sizeof out->vendor, "%s", c->vendor);
    snprintf(out->model, sizeof out->model, "%s", c->model);
    out->cores = c->cores;
    out->avx2 = c->avx2;
    out->fma = c->fma;
    out->avx512f = c->avx512f;
    out->avx512bf16 = c->avx512bf16;
    out->amx_bf16 = c->amx_bf16;
    out->amx_permitted = c->amx_permitted;
    snprintf(out->amx_error, sizeof out->amx_error, "%s", c->amx_error);
    out->neon = c->neon;
    out->sve = c->sve;
    out->bf16_dot_gemm = c->bf16_dot_gemm;
}

/* ---- Device memory ---- */

static cflash_status host_memory(DLDevice dev) {
    return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                    "dev: %s memory is the caller's own (malloc), expected a device such as cuda",
                    cf_device_name(dev.device_type));
}

cflash_status cflash_device_alloc(DLDevice dev, size_t bytes, void** p) {
    CFLASH_RETURN_IF(!p, CFLASH_ERR_INVALID_ARGUMENT, "p: is NULL, expected void**");
    if (dev.device_type == kDLCPU) return host_memory(dev);
    return cf_device_alloc(dev.device_type, dev.device_id, p, bytes);
}

void cflash_device_free(DLDevice dev, void* p) {
    if (p && dev.device_type != kDLCPU) cf_device_free(dev.device_type, dev.device_id, p);
}

cflash_status cflash_device_copy(DLDevice dev, void* dst, const void* src, size_t bytes,
                                 int to_device) {
    if (dev.device_type == kDLCPU) return host_memory(dev);
    CFLASH_RETURN_IF(bytes && (!dst || !src), CFLASH_ERR_INVALID_ARGUMENT,
                     "dst, src: NULL with %zu bytes to copy", bytes);
    return cf_device_copy(dev.device_type, dev.device_id, dst, src, bytes, to_device);
}

cflash_status cflash_device_sync(DLDevice dev) {
    if (dev.device_type == kDLCPU) return host_memory(dev);
    return cf_device_sync(dev.device_type, dev.device_id);
}
