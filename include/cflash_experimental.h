/* cflash experimental API: what the `cflash` tool and the fp64 oracle need beyond the stable API of
 * cflash.h (element types and conversions, the dropout rule, CPU features, the machine's measured
 * peaks, device memory). Including this header is the opt-in, as zstd's ZSTD_STATIC_LINKING_ONLY:
 * NO STABILITY PROMISE. Anything here may change or go in any release, minor and patch ones
 * included; the library's SOVERSION does not follow it. Programs that want a stable interface use
 * cflash.h alone. */
#ifndef CFLASH_EXPERIMENTAL_H
#define CFLASH_EXPERIMENTAL_H

#include "cflash.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Element types ------------------------------------------------------------------------ */

/* The element types the library computes in or indexes with (the DLPack ones it accepts). */
typedef enum cflash_dtype {
    CFLASH_DTYPE_F32 = 0,
    CFLASH_DTYPE_F16 = 1,
    CFLASH_DTYPE_BF16 = 2,
    CFLASH_DTYPE_I32 = 3,
    CFLASH_DTYPE_U8 = 4,
    CFLASH_DTYPE_I8 = 5,      /* int8 KV caches (cache_quant CFLASH_KV_QUANT_INT8) */
    CFLASH_DTYPE_F8E4M3 = 6,  /* DLPack kDLFloat8_e4m3fn (code 10, newer than dlpack.h 0.6) */
    CFLASH_DTYPE_F8E5M2 = 7,  /* DLPack kDLFloat8_e5m2 (code 12) */
    CFLASH_DTYPE_INVALID = -1 /* any other DLDataType */
} cflash_dtype;

CFLASH_API cflash_dtype cflash_dtype_of(DLDataType t);
CFLASH_API DLDataType cflash_dtype_to_dl(cflash_dtype d); /* {kDLOpaqueHandle, 8, 1} if invalid */
CFLASH_API size_t cflash_dtype_size(cflash_dtype d);      /* bytes; 0 if invalid */
CFLASH_API const char* cflash_dtype_name(cflash_dtype d); /* "float32", "bfloat16", ... */
/* "cpu", "cuda", "cuda_host", "cuda_managed", "other" for a DLDeviceType. */
CFLASH_API const char* cflash_device_name(int device_type);

/* Element i (in elements) of data of float type d (F32, F16, BF16) as fp32, and x stored there,
 * rounded to nearest even exactly as the kernels round. Other types: 0 / nothing. */
CFLASH_API float cflash_load(const void* data, cflash_dtype d, int64_t i);
CFLASH_API void cflash_store(void* data, cflash_dtype d, int64_t i, float x);
/* x rounded to d and back (what storing then loading gives). */
CFLASH_API float cflash_round_to(cflash_dtype d, float x);

/* ---- Dropout ------------------------------------------------------------------------------ */

/* 1 iff attention weight (b, h, i, j) is kept by dropout with probability p under (seed, offset)
 * (cflash_attn_params): the Philox rule every backend applies (i, j within the sequence; varlen:
 * b is the sequence). p == 0 keeps everything. */
CFLASH_API int cflash_dropout_keep(uint64_t seed, uint64_t offset, float p, uint64_t b, uint64_t h,
                                   uint64_t i, uint64_t j);

/* ---- This machine ------------------------------------------------------------------------- */

typedef struct cflash_cpu_info {
    char vendor[16]; /* "GenuineIntel", "AuthenticAMD", "ARM" */
    char model[64];  /* brand string */
    int cores;       /* logical CPUs available to this process */
    /* Usable now: the CPU has it and the OS saves the state. */
    int avx2, fma, avx512f, avx512bf16, amx_bf16;
    int amx_permitted;   /* the tile data state was granted to this process */
    char amx_error[128]; /* why not permitted ("" when permitted or no AMX) */
    int neon, sve;
    int bf16_dot_gemm; /* x86: cpu-avx512's bf16 GEMMs use vdpbf16ps (0: fp32 FMA, see report) */
} cflash_cpu_info;

/* Fills *out from the library's CPU probe (run once per process). */
CFLASH_API void cflash_cpu_info_get(cflash_cpu_info* out);

/* The machine's measured peaks (not datasheet figures), every thread busy at once. */
typedef struct cflash_peaks {
    int threads;
    double fma_f32_gflops;  /* fp32 FMA on the widest vector unit present */
    double bf16_dot_gflops; /* AVX512-BF16 vdpbf16ps, or BFMMLA on ARM (0 when absent) */
    double amx_bf16_gflops; /* AMX-BF16 tdpbf16ps (0 when absent or not permitted) */
    double mem_bw_gbs;      /* memory bandwidth, read + write bytes per second, GB/s */
} cflash_peaks;

/* Measures the peaks with `threads` threads (0 = all) in about a second, once per process and
 * thread count (later calls return the same figures). wall: per wall-clock second; per_cpu: per
 * CPU-second the threads got, times threads (what the cores do while they run, robust on a shared
 * machine). Either may be NULL. */
CFLASH_API cflash_status cflash_peaks_measure(int threads, cflash_peaks* wall,
                                              cflash_peaks* per_cpu);

/* ---- Device memory ------------------------------------------------------------------------ */

/* Memory on a device the library drives (kDLCUDA), through the library's own driver loader: a
 * program needs no CUDA link of its own. The first call on a device creates its context. Host
 * memory (kDLCPU) is the caller's own: these return CFLASH_ERR_INVALID_ARGUMENT for it. */
CFLASH_API cflash_status cflash_device_alloc(DLDevice dev, size_t bytes, void** p);
CFLASH_API void cflash_device_free(DLDevice dev, void* p); /* accepts NULL */
/* to_device = 1: host src -> device dst; 0: device src -> host dst. Synchronous. */
CFLASH_API cflash_status cflash_device_copy(DLDevice dev, void* dst, const void* src, size_t bytes,
                                            int to_device);
CFLASH_API cflash_status cflash_device_sync(DLDevice dev);

#ifdef __cplusplus
}
#endif

#endif /* CFLASH_EXPERIMENTAL_H */
