/* Shared pieces of the `cflash` tool: the problem flags every subcommand takes, device memory,
 * timing and the machine's peaks. Each subcommand lives in its own tools/cmd_*.c. */
#ifndef CFLASH_TOOLS_CLI_H
#define CFLASH_TOOLS_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "cflash.h"
#include "core/tensor.h"

/* ---- Problem flags (tools/args.c) ---- */
typedef struct cf_problem {
    int64_t batch, heads, heads_kv, seqlen_q, seqlen_k, head_dim, head_dim_v;
    cf_dtype dtype;
    int causal;
    int64_t window_left, window_right;
    float softcap;
    int alibi;
    float dropout;
    int bwd;
    const char* backend; /* NULL = auto */
    int threads;         /* 0 = all */
    int device;          /* kDLCPU or kDLCUDA */
    int json;
    int warmup, reps;
} cf_problem;

void cf_problem_defaults(cf_problem* p);
/* Parses argv[first..argc) into p. Returns 0, or -1 with a message in err naming the flag. */
int cf_problem_parse(cf_problem* p, int argc, char** argv, int first, char* err, size_t err_len);
/* The flags' usage text (one line per flag, with its default). */
const char* cf_problem_usage(void);

/* ---- Device memory for the tool (tools/device_mem.c): kDLCPU is malloc, kDLCUDA the driver. ----
 */
void* cf_tool_alloc(int device, size_t bytes, char* err, size_t err_len);
void cf_tool_free(int device, void* p);
/* to_device = 1: host src -> device dst; 0: device src -> host dst. Returns 0 or -1 (err set). */
int cf_tool_copy(int device, void* dst, const void* src, size_t bytes, int to_device, char* err,
                 size_t err_len);
int cf_tool_sync(int device, char* err, size_t err_len);

/* ---- Timing and peaks (tools/bench_util.c) ---- */
double cf_now_s(void); /* monotonic seconds */
/* Runs fn(arg) warmup times, then reps times; returns the median wall time in ms. */
double cf_bench_median_ms(void (*fn)(void*), void* arg, int warmup, int reps);
typedef struct cf_peaks {
    int threads;
    double fma_f32_gflops;  /* fp32 FMA, the widest vector unit present */
    double bf16_dot_gflops; /* AVX512-BF16 vdpbf16ps, or NEON BFMMLA (0 when absent) */
    double amx_bf16_gflops; /* AMX-BF16 tdpbf16ps (0 when absent or not permitted) */
    double mem_bw_gbs;      /* memory bandwidth, read + write bytes per second, GB/s */
} cf_peaks;
/* Measures the machine's peaks with this many threads (0 = all), once per process. */
const cf_peaks* cf_measure_peaks(int threads);

/* ---- Subcommands: int cmd(argc, argv) with argv[0] = "cflash". ---- */
typedef int (*cf_cmd_fn)(int argc, char** argv);

#endif
