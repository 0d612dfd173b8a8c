/* The small-call thread policy (see threads.h): one helper every op's call builder uses to turn
 * the context's thread count and the call's estimated work into the threads its kernel opens. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/threads.h"

int cf_threads_for(int requested, double work, double min_per_thread) {
    if (requested <= 1 || !(work > 0.0)) return 1;
    if (!(min_per_thread > 0.0)) return requested;
    const double most = floor(work / min_per_thread);
    if (most < 1.0) return 1;
    return most < (double)requested ? (int)most : requested;
}

double cf_attn_flops(const cf_attn_call* c) {
    double pairs = 0.0;
    if (c->varlen && c->cu_q && c->cu_k) {
        for (int64_t b = 0; b < c->B; b++) {
            int64_t q0, sq, k0, sk;
            cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
            pairs += (double)sq * (double)sk;
        }
    } else {
        pairs = (double)c->B * (double)c->Sq * (double)c->Sk;
    }
    /* D + Dv in double: the dims of empty views may be huge */
    return 2.0 * pairs * (double)c->H * ((double)c->D + (double)c->Dv);
}

/* CFLASH_SMALL_CALLS=parallel turns the cut off (every call gets the context's count): the test
 * variants use it so that small shapes still exercise the multi-thread paths of the kernels. */
static int cut_off;
static pthread_once_t cut_once = PTHREAD_ONCE_INIT;
static void read_cut(void) {
    const char* e = getenv("CFLASH_SMALL_CALLS");
    cut_off = e && !strcmp(e, "parallel");
}

int cf_threads_small_calls_parallel(void) {
    pthread_once(&cut_once, read_cut);
    return cut_off;
}

int cf_threads_resolve(const char* op, int requested, double work, int flops) {
    int n = flops ? cf_threads_for_flops(requested, work) : cf_threads_for_bytes(requested, work);
    if (cf_threads_small_calls_parallel()) n = requested > 1 ? requested : 1;
    if (cf_log_level() >= CF_LOG_DEBUG)
        cf_log(CF_LOG_DEBUG, "%s: threads %d of %d (work %.0f %s)", op, n, requested, work,
               flops ? "flops" : "bytes");
    return n;
}
