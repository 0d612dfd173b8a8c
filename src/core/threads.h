/* The thread count a CPU call actually uses: the context's count, cut so that every thread gets at
 * least a minimum amount of work. A parallel region costs a fork/join (0.5 us hot, 7 us when the
 * team sleeps, milliseconds when another process holds the other core), so small calls run on one
 * thread. Thresholds measured on the 2-core dev machine: see docs/PERF.md "Small calls". */
#ifndef CFLASH_CORE_THREADS_H
#define CFLASH_CORE_THREADS_H

#include <stdint.h>

#include "core/attn_call.h"

/* Minimum work per thread: compute-bound ops in flops, memory-bound ops in bytes moved. */
#define CF_MIN_FLOPS_PER_THREAD (256.0 * 1024.0)
#define CF_MIN_BYTES_PER_THREAD (128.0 * 1024.0)

/* With the OpenMP team asleep between regions (OMP_WAIT_POLICY=passive or GOMP_SPINCOUNT=0),
 * each thread needs this many times the minimum: waking a sleeping thread costs 7 us or more, a
 * spinning one 0.5 us. At 4x, a thread's share of a decode call is ~15 us of fp32 work. */
#define CF_SLEEPING_TEAM_FACTOR 4.0

/* requested (>= 1) threads, cut to floor(work / min_per_thread), at least 1. */
int cf_threads_for(int requested, double work, double min_per_thread);
static inline int cf_threads_for_flops(int requested, double flops) {
    return cf_threads_for(requested, flops, CF_MIN_FLOPS_PER_THREAD);
}
static inline int cf_threads_for_bytes(int requested, double bytes) {
    return cf_threads_for(requested, bytes, CF_MIN_BYTES_PER_THREAD);
}
/* Threads for a parallel region over `items` work items: min(threads, items), at least 1. */
static inline int cf_threads_items(int threads, int64_t items) {
    if (threads < 1) threads = 1;
    return items < threads ? (items > 1 ? (int)items : 1) : threads;
}

/* Flops of an attention forward: 2 (D + Dv) per visible-or-not (query, key) pair and head, summed
 * over the sequences (varlen: from the host cu_q / cu_k). */
double cf_attn_flops(const cf_attn_call* c);

/* 1 when CFLASH_SMALL_CALLS=parallel (read once): cf_threads_resolve then keeps the requested
 * count for every call (for tests of the kernels' multi-thread paths on small shapes). */
int cf_threads_small_calls_parallel(void);

/* CF_SLEEPING_TEAM_FACTOR when the environment puts the OpenMP team to sleep between regions,
 * else 1 (read once). */
double cf_threads_team_factor(void);

/* The count for `work` (flops when `flops`, else bytes) with the minimum per thread scaled by
 * cf_threads_team_factor(). Logs (CFLASH_LOG=debug) "OP: threads N of M (work W UNIT)" and
 * returns N; every op's call builder goes through it, so the resolved count is visible. */
int cf_threads_resolve(const char* op, int requested, double work, int flops);

#endif
