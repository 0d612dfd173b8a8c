/* The small-call thread policy (see threads.h): one helper every op's call builder uses to turn
 * the context's thread count and the call's estimated work into the threads its kernel opens. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    if (c->varlen && c->cu_q && (c->cu_k || c->seqused_k)) {
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
 * variants use it so that small shapes still exercise the multi-thread paths of the kernels.
 * A sleeping team (OMP_WAIT_POLICY=passive, or GOMP_SPINCOUNT=0, what libgomp reads) is woken
 * through the kernel at every region, 7 us instead of 0.5 us (docs/PERF.md "Small calls"), and
 * far more when another process holds the other core: each thread must then bring
 * CF_SLEEPING_TEAM_FACTOR times the work. */
static int cut_off;
static double team_factor = 1.0;
static pthread_once_t cut_once = PTHREAD_ONCE_INIT;
static void read_cut(void) {
    const char* e = getenv("CFLASH_SMALL_CALLS");
    cut_off = e && !strcmp(e, "parallel");
    const char* w = getenv("OMP_WAIT_POLICY");
    const char* s = getenv("GOMP_SPINCOUNT");
    if ((w && !strcasecmp(w, "passive")) || (s && !strcmp(s, "0")))
        team_factor = CF_SLEEPING_TEAM_FACTOR;
}

int cf_threads_small_calls_parallel(void) {
    pthread_once(&cut_once, read_cut);
    return cut_off;
}

double cf_threads_team_factor(void) {
    pthread_once(&cut_once, read_cut);
    return team_factor;
}

int cf_threads_resolve(const char* op, int requested, double work, int flops) {
    const double f = cf_threads_team_factor();
    int n = cf_threads_for(requested, work,
                           f * (flops ? CF_MIN_FLOPS_PER_THREAD : CF_MIN_BYTES_PER_THREAD));
    if (cf_threads_small_calls_parallel()) n = requested > 1 ? requested : 1;
    if (cf_log_level() >= CF_LOG_DEBUG)
        cf_log(CF_LOG_DEBUG, "%s: threads %d of %d (work %.0f %s)", op, n, requested, work,
               flops ? "flops" : "bytes");
    return n;
}
