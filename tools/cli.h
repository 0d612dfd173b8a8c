/* Shared pieces of the `cflash` tool: the problem flags every subcommand takes, device memory,
 * timing and the machine's peaks. Each subcommand lives in its own tools/cmd_*.c. */
#ifndef CFLASH_TOOLS_CLI_H
#define CFLASH_TOOLS_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "cflash.h"
#include "cflash_experimental.h"

/* ---- Problem flags (tools/args.c) ---- */
typedef struct cf_problem {
    int64_t batch, heads, heads_kv, seqlen_q, seqlen_k, head_dim, head_dim_v;
    int seqlen_q_given; /* --seqlen-q was on the command line (else --seqlen's or the default) */
    cflash_dtype dtype;
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
    /* issue 13 */
    int sinks, bias, dbias;
    cflash_dtype bias_dtype;  /* of --bias and dbias: fp32 or dtype */
    float mask, block_sparse; /* densities in (0, 1]; 0 = off */
    int64_t block_size;       /* of --mask / --block-sparse */
    int64_t chunk;            /* attention_chunk, 0 = off */
} cf_problem;

void cf_problem_defaults(cf_problem* p);
/* Parses argv[first..argc) into p. Returns 0, or -1 with a message in err naming the flag. */
int cf_problem_parse(cf_problem* p, int argc, char** argv, int first, char* err, size_t err_len);
/* The flags' usage text (one line per flag, with its default). */
const char* cf_problem_usage(void);

/* ---- Device memory for the tool (tools/device_mem.c): kDLCPU is malloc, kDLCUDA the driver. ----
 */
void* cf_tool_alloc(int device, size_t bytes, char* err, size_t err_len);
/* The element count (*n) and bytes (*bytes, es per element) of a tensor of this shape; -1 with
 * "a tensor of shape (...) is too large" in err when either overflows (shapes come from int64
 * flags). */
int cf_tool_shape_bytes(int ndim, const int64_t* shape, size_t es, int64_t* n, size_t* bytes,
                        char* err, size_t err_len);
void cf_tool_free(int device, void* p);
/* to_device = 1: host src -> device dst; 0: device src -> host dst. Returns 0 or -1 (err set). */
int cf_tool_copy(int device, void* dst, const void* src, size_t bytes, int to_device, char* err,
                 size_t err_len);
int cf_tool_sync(int device, char* err, size_t err_len);

/* ---- Timing and peaks (tools/bench_util.c) ---- */
double cf_now_s(void); /* monotonic seconds */
/* Runs fn(arg) warmup times, then reps times; returns the median wall time in ms. */
double cf_bench_median_ms(void (*fn)(void*), void* arg, int warmup, int reps);
typedef cflash_peaks cf_peaks;
/* The machine's peaks with this many threads (0 = all), measured by the library once per process
 * (cflash_peaks_measure). */
const cf_peaks* cf_measure_peaks(int threads);

/* ---- Subcommands: int cmd(argc, argv) with argv[0] = "cflash". ---- */
typedef int (*cf_cmd_fn)(int argc, char** argv);

#endif
