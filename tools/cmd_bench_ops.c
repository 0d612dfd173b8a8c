/* `cflash bench rotary|norm|decode|merge`: timing of the ops around attention, as bytes moved per
 * second against the memory bandwidth measured in the same run (cf_measure_peaks): these ops are
 * memory-bound, so that fraction is their figure of merit. Median of repeated runs after warm-up.
 * Problem flags as every subcommand, plus the op's own:
 *   rotary  x (batch, seqlen, heads, head-dim); --rotary-dim N (default head-dim), --interleaved,
 *           --inplace. Bytes: x read + x (or out) written + cos/sin read.
 *   norm    rows = batch * seqlen, N = heads * head-dim; --layer (LayerNorm; default RMSNorm),
 *           --residual (residual in, prenorm residual_out). Bytes: x (+ residual) read, out
 *           (+ residual_out) written.
 *   decode  q (batch, seqlen-q, heads, head-dim) against a full cache (batch, seqlen-k, heads-kv,
 *           head-dim); --page N (paged cache), --splits N, --kv-quant e4m3|e5m2|int8 (a
 *           quantized cache: 1-byte codes, fp8 descale per KV head, int8 scales per (token,
 *           head)); --against Q: the same decode with a cache of format Q too, each of its
 *           calls after one of the op's (both see the same machine), its median and the op's
 *           speed over it; --cache-seqlens L,L,...: a batch of caches holding those many keys
 *           (cache_seqlens; the batch their count, each cache as long as the longest), as a
 *           serving step's sequences differ. Bytes: the K and V rows read (+ their int8 scales,
 *           q, out).
 *   merge   --splits N parts of (batch, seqlen-q, heads, head-dim) in the dtype, fp32 LSE.
 * --huge-pages (every op): the inputs on 2 MB pages (transparent huge pages, asked for by madvise)
 * as a serving engine would allocate a KV cache; the report says how much the kernel gave.
 * Example (the decode target; issue 13: a quantized cache at >= 1.8x the bf16 one):
 *   cflash bench decode --batch 1 --heads 32 --heads-kv 8 --head-dim 128 --seqlen-q 1
 *       --seqlen-k 131072 --dtype bf16 --kv-quant int8 --against none */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <time.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "cli.h"

int cf_cmd_bench_rotary(int argc, char** argv);
int cf_cmd_bench_norm(int argc, char** argv);
int cf_cmd_bench_decode(int argc, char** argv);
int cf_cmd_bench_merge(int argc, char** argv);

/* ---- Flags: the op's own are taken out, the rest go to cf_problem_parse ---------------------- */

typedef struct ops_flags {
    int64_t rotary_dim, page, splits;
    int interleaved, inplace, layer, residual;
    int kv_quant;  /* cflash_kv_quant */
    int against;   /* decode --against: a second cache format timed in alternation, or -1 */
    int huge;      /* --huge-pages */
    int32_t* lens; /* decode --cache-seqlens: [batch] keys per sequence, or NULL */
    int64_t keys;  /* ... and their sum */
} ops_flags;

/* How tens_new allocates: on 2 MB pages or not (--huge-pages, set by parse), and what it gave. */
static struct {
    int huge;
    double bytes; /* allocated so far */
} tens_pages;

/* The op's own flags, for --help. */
static const char* ops_usage(const char* cmd) {
    return !strcmp(cmd, "rotary") ? "  --rotary-dim N     rotated dims (default head-dim)\n"
                                    "  --interleaved      GPT-J pairs (default GPT-NeoX halves)\n"
                                    "  --inplace          x rotated in place\n"
           : !strcmp(cmd, "norm") ? "  --layer            LayerNorm (default RMSNorm)\n"
                                    "  --residual         residual in, prenorm residual_out\n"
           : !strcmp(cmd, "decode")
               ? "  --seqlen-q N       query rows per sequence (default 1: a decode step;\n"
                 "                     --seqlen sets the cache's length alone)\n"
                 "  --page N           paged cache of page size N\n"
                 "  --splits N         num_splits (default 0: heuristic)\n"
                 "  --kv-quant Q       none | e4m3 | e5m2 | int8: a quantized cache (fp8 descale\n"
                 "                     per KV head, int8 scales per (token, KV head))\n"
                 "  --against Q        the same decode with cache Q too, the two calls alternated\n"
                 "                     (one median each, and their ratio: issue 13's figure)\n"
                 "  --cache-seqlens L,L,...  keys held by each sequence's cache (cache_seqlens):\n"
                 "                     the batch is their count, every cache as long as the\n"
                 "                     longest (a serving step: one long cache among short ones)\n"
               : "  --splits N         parts to merge\n";
}

static const char huge_usage[] =
    "  --huge-pages       inputs on 2 MB pages (madvise MADV_HUGEPAGE before the first touch)\n";

/* Most sequences --cache-seqlens takes. */
enum { MAX_LENS = 65536 };

/* --cache-seqlens' list v into f->lens (malloc'ed) and f->keys (their sum), its count / longest
 * into pr's batch and seqlen-k: 0, or -1 (said). */
static int parse_lens(const char* v, ops_flags* f, cf_problem* pr) {
    int32_t* l = malloc(sizeof(int32_t) * MAX_LENS);
    int64_t n = 0, most = 0, keys = 0; /* (at most 65536 int32s: no overflow) */
    const char* c = v;
    int ok = l != NULL;
    while (ok) { /* a length, then a comma and the next, or the end */
        char* end = NULL;
        const long long x = strtoll(c, &end, 10);
        ok = end != c && x >= 0 && x <= INT32_MAX && (*end == ',' || !*end) && n < MAX_LENS;
        if (!ok) break;
        l[n++] = (int32_t)x, most = x > most ? x : most, keys += x;
        if (!*end) break;
        c = end + 1;
    }
    if (!ok) {
        fprintf(stderr,
                "cflash bench decode: --cache-seqlens '%s', expected 1 to %d lengths in [0, %d] "
                "separated by commas\n",
                v, MAX_LENS, INT32_MAX);
        free(l);
        return -1;
    }
    free(f->lens);
    f->lens = l, f->keys = keys, pr->batch = n, pr->seqlen_k = most > 0 ? most : 1;
    return 0;
}

/* 0, -1 on a bad flag (said on stderr), 1 after --help (printed). f->lens: free()d by the caller
 * (NULL on -1 and 1). */
static int parse(const char* cmd, int argc, char** argv, cf_problem* pr, ops_flags* f) {
    memset(f, 0, sizeof *f);
    f->splits = -1, f->against = -1;
    for (int i = 3; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: cflash bench %s [flags]\n\n%s flags:\n%s%s\nproblem flags:\n%s", cmd,
                   cmd, ops_usage(cmd), huge_usage, cf_problem_usage());
            return 1;
        }
    char** rest = calloc((size_t)argc + 1, sizeof(char*));
    const char* lens = NULL;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        const char* a = argv[i];
        int64_t* val = !strcmp(a, "--rotary-dim") ? &f->rotary_dim
                       : !strcmp(a, "--page")     ? &f->page
                       : !strcmp(a, "--splits")   ? &f->splits
                                                  : NULL;
        if (i >= 3 && val) {
            char* end = NULL;
            if (i + 1 >= argc || (*val = strtoll(argv[i + 1], &end, 10), *end) || *val < 0) {
                fprintf(stderr, "cflash bench %s: %s needs an integer >= 0\n", cmd, a);
                free(rest);
                return -1;
            }
            i++;
            continue;
        }
        if (i >= 3 &&
            (!strcmp(a, "--kv-quant") || (!strcmp(cmd, "decode") && !strcmp(a, "--against")))) {
            const char* v = i + 1 < argc ? argv[++i] : "";
            int* q = !strcmp(a, "--against") ? &f->against : &f->kv_quant;
            *q = !strcmp(v, "e4m3")   ? CFLASH_KV_QUANT_FP8_E4M3
                 : !strcmp(v, "e5m2") ? CFLASH_KV_QUANT_FP8_E5M2
                 : !strcmp(v, "int8") ? CFLASH_KV_QUANT_INT8
                 : !strcmp(v, "none") ? CFLASH_KV_QUANT_NONE
                                      : -1;
            if (*q < 0) {
                fprintf(stderr, "cflash bench %s: %s '%s', expected none, e4m3, e5m2 or int8\n",
                        cmd, a, v);
                free(rest);
                return -1;
            }
        } else if (i >= 3 && !strcmp(a, "--interleaved"))
            f->interleaved = 1;
        else if (i >= 3 && !strcmp(a, "--inplace"))
            f->inplace = 1;
        else if (i >= 3 && !strcmp(a, "--layer"))
            f->layer = 1;
        else if (i >= 3 && !strcmp(a, "--residual"))
            f->residual = 1;
        else if (i >= 3 && !strcmp(a, "--huge-pages"))
            f->huge = 1;
        else if (i >= 3 && !strcmp(cmd, "decode") && !strcmp(a, "--cache-seqlens"))
            lens = i + 1 < argc ? argv[++i] : "";
        else
            rest[n++] = argv[i];
    }
    char err[256];
    cf_problem_defaults(pr);
    int rc = cf_problem_parse(pr, n, rest, 3, err, sizeof err);
    free(rest);
    if (rc) {
        fprintf(stderr, "cflash bench %s: %s\n", cmd, err);
        return -1;
    }
    /* a decode step is one query row unless --seqlen-q says otherwise (--seqlen, which sets both
     * lengths, then sets the cache's alone): Sq 512 by default timed prefill chunks */
    if (!strcmp(cmd, "decode") && !pr->seqlen_q_given) pr->seqlen_q = 1;
    if (pr->device != kDLCPU) {
        fprintf(stderr, "cflash bench %s: only --device cpu has kernels for this op\n", cmd);
        return -1;
    }
    if (lens && parse_lens(lens, f, pr)) return -1;
    tens_pages.huge = f->huge;
    return 0;
}

/* ---- Tensors ----------------------------------------------------------------------------------
 */

typedef struct tens {
    DLTensor dl;
    int64_t shape[5];
} tens;

enum { HUGE_PAGE = 2 << 20 };

/* bytes (0: 1) from malloc, or (--huge-pages) 2 MB-aligned and advised MADV_HUGEPAGE before
 * anything touches it, so that the kernel backs it with transparent huge pages where it is set to
 * "always" or "madvise" (`cflash report`). NULL when out of memory. */
static void* tens_alloc(size_t bytes) {
    if (!bytes) bytes = 1;
    tens_pages.bytes += (double)bytes;
    if (!tens_pages.huge) return malloc(bytes);
    void* p = NULL;
    if (bytes > SIZE_MAX - HUGE_PAGE) return NULL;
    const size_t n = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    if (posix_memalign(&p, HUGE_PAGE, n)) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, n, MADV_HUGEPAGE); /* (advice: where refused, the report says 0 MB) */
#endif
    return p;
}

/* MB of the process's memory on transparent huge pages (AnonHugePages in /proc/self/smaps_rollup),
 * or -1 where that file is not there. */
static double huge_mb(void) {
    FILE* f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) return -1;
    char ln[256];
    double kb = -1;
    while (kb < 0 && fgets(ln, sizeof ln, f))
        if (sscanf(ln, "AnonHugePages: %lf kB", &kb) != 1) kb = -1;
    fclose(f);
    return kb < 0 ? -1 : kb / 1024.0;
}

/* Allocates and fills with values in [-1, 1) from a cheap hash, in parallel (GBs of inputs). */
static int tens_new(tens* t, cflash_dtype dt, int ndim, const int64_t* shape, uint64_t seed) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    int64_t n;
    size_t bytes;
    char err[256];
    if (cf_tool_shape_bytes(ndim, shape, cflash_dtype_size(dt), &n, &bytes, err, sizeof err)) {
        fprintf(stderr, "cflash bench: %s\n", err);
        return -1;
    }
    void* p = tens_alloc(bytes);
    if (!p) {
        fprintf(stderr, "cflash bench: out of memory for %zu bytes\n", bytes);
        return -1;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        uint64_t h = ((uint64_t)i + seed) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        float x = (float)((h >> 40) & 0xffff) / 32768.0f - 1.0f;
        if (dt == CFLASH_DTYPE_I32)
            ((int32_t*)p)[i] = 0;
        else if (dt == CFLASH_DTYPE_U8) /* fp8 codes of magnitude < 2^7: no NaN, no infinity */
            ((uint8_t*)p)[i] = (uint8_t)((h >> 40) & 0xb7);
        else if (dt == CFLASH_DTYPE_I8)
            ((int8_t*)p)[i] = (int8_t)((int)((h >> 40) % 255) - 127);
        else
            cflash_store(p, dt, i, x);
    }
    t->dl.data = p;
    t->dl.device.device_type = kDLCPU;
    t->dl.ndim = ndim;
    t->dl.shape = t->shape;
    t->dl.dtype = cflash_dtype_to_dl(dt);
    return 0;
}

static void tens_free(tens* t) {
    free(t->dl.data);
    t->dl.data = NULL;
}

/* ---- Timing and the report line ----------------------------------------------------------------
 */

typedef struct job {
    cflash_status (*fn)(void*);
    void* arg;
    cflash_status status; /* the first failure's, and its message (the library's is this
                             thread's last: another job's call would replace it) */
    char err[512];
} job;

static void run_job(void* p) {
    job* j = p;
    cflash_status s = j->fn(j->arg);
    if (s != CFLASH_OK && j->status == CFLASH_OK)
        j->status = s, snprintf(j->err, sizeof j->err, "%s", cflash_last_error());
}

/* The backend that would serve j's call ("-> NAME" of explain mode on ctx, then the call itself),
 * into name. Prints the library's message and returns non-zero when the call would fail. */
static int served_by(const char* op, cflash_context* ctx, job* j, char* name, size_t n) {
    char text[1024];
    cflash_context_set_explain(ctx, text, sizeof text);
    if (j->fn(j->arg) != CFLASH_OK) {
        fprintf(stderr, "cflash bench %s: %s\n", op, cflash_last_error());
        return 1;
    }
    const char* a = strstr(text, "-> ");
    snprintf(name, n, "%s", a ? a + 3 : "?");
    char* nl = strchr(name, '\n');
    if (nl) *nl = 0;
    return 0;
}

/* The same-run bandwidth reference: a copy of 256 MB into 256 MB (each far larger than the
 * caches) with the op's thread count, timed in alternation with the op so that both see the same
 * load on the machine; bytes moved = read + written. */
typedef struct copy_ref {
    float *a, *b;
    size_t n;
    int threads;
} copy_ref;

static void run_copy(void* p) {
    copy_ref* c = p;
    float *a = c->a, *b = c->b;
#pragma omp parallel for num_threads(c->threads) schedule(static)
    for (size_t i = 0; i < c->n; i++)
        b[i] = a[i] * 1.0001f;
}

/* CPU seconds of the process (all threads): on a shared machine, the time the op was given. */
static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void* x, const void* y) {
    double a = *(const double*)x, b = *(const double*)y;
    return a < b ? -1 : a > b;
}

/* A second call timed in alternation with the op's (decode --against): its own median, and the
 * op's speed over it. */
typedef struct versus {
    job* j;
    cflash_context* ctx;
    const char* what; /* "int8 cache", ... */
} versus;

/* Times j (the op's call on ctx) against the copy and prints the line; the call is explained
 * first, for the backend's name. vs: NULL, or a call timed after each of j's. */
static int report(const char* op, const cf_problem* pr, const char* shape, cflash_context* ctx,
                  job* j, double bytes, const versus* vs) {
    char backend[64], vs_backend[64] = "";
    if (served_by(op, ctx, j, backend, sizeof backend)) return 1;
    if (vs && served_by(op, vs->ctx, vs->j, vs_backend, sizeof vs_backend)) return 1;
    int threads = pr->threads;
#ifdef _OPENMP
    if (threads <= 0) threads = omp_get_max_threads();
#endif
    if (threads <= 0) threads = 1;
    copy_ref cr = {NULL, NULL, (size_t)64 << 20, threads};
    cr.a = malloc(cr.n * sizeof(float));
    cr.b = malloc(cr.n * sizeof(float));
    if (!cr.a || !cr.b) {
        fprintf(stderr, "cflash bench %s: out of memory for the bandwidth reference\n", op);
        free(cr.a), free(cr.b);
        return 1;
    }
    memset(cr.a, 0, cr.n * sizeof(float)), memset(cr.b, 0, cr.n * sizeof(float));
    int reps = pr->reps > 0 ? pr->reps : 1;
    /* wall op, wall copy, cpu op, cpu copy, wall vs */
    double* t = calloc((size_t)reps * 5, sizeof(double));
    if (!t) {
        fprintf(stderr, "cflash bench %s: out of memory\n", op);
        free(cr.a), free(cr.b);
        return 1;
    }
    j->status = CFLASH_OK;
    if (vs) vs->j->status = CFLASH_OK;
    for (int w = 0; w < pr->warmup; w++) {
        run_job(j), run_copy(&cr);
        if (vs) run_job(vs->j);
    }
    for (int r = 0; r < reps; r++) {
        double t0 = cf_now_s(), c0 = cpu_s();
        run_job(j);
        double t1 = cf_now_s(), c1 = cpu_s();
        run_copy(&cr);
        t[r] = (t1 - t0) * 1e3;
        t[reps + r] = (cf_now_s() - t1) * 1e3;
        t[2 * reps + r] = (c1 - c0) * 1e3 / threads;
        t[3 * reps + r] = (cpu_s() - c1) * 1e3 / threads;
        if (vs) {
            const double t2 = cf_now_s();
            run_job(vs->j);
            t[4 * reps + r] = (cf_now_s() - t2) * 1e3;
        }
    }
    for (int k = 0; k < 5; k++)
        qsort(t + k * reps, (size_t)reps, sizeof(double), cmp_d);
    double ms = t[reps / 2], ms_cp = t[reps + reps / 2];
    double cms = t[2 * reps + reps / 2], cms_cp = t[3 * reps + reps / 2],
           ms_vs = t[4 * reps + reps / 2];
    free(t), free(cr.a), free(cr.b);
    for (int k = 0; k < (vs ? 2 : 1); k++) {
        const job* jj = k ? vs->j : j;
        if (jj->status != CFLASH_OK) {
            fprintf(stderr, "cflash bench %s: %s: %s\n", op, cflash_status_string(jj->status),
                    jj->err);
            return 1;
        }
    }
    const double hmb = huge_mb(); /* (before the peaks' own buffers) */
    const cf_peaks* pk = cf_measure_peaks(threads);
    const double cb = 2.0 * (double)(cr.n * sizeof(float));
    double gbs = bytes / (ms * 1e-3) * 1e-9, ref = cb / (ms_cp * 1e-3) * 1e-9;
    double frac = pk->mem_bw_gbs > 0 ? gbs / pk->mem_bw_gbs : 0, frac_ref = gbs / ref;
    /* per CPU time / threads: what an unshared machine gives (the copy being memory-bound) */
    double gbs_cpu = bytes / (cms * 1e-3) * 1e-9, ref_cpu = cb / (cms_cp * 1e-3) * 1e-9;
    if (pr->json) {
        printf("{\"op\":\"%s\",\"shape\":\"%s\",\"dtype\":\"%s\",\"backend\":\"%s\",\"threads\":%d,"
               "\"ms\":%.4f,\"bytes\":%.0f,\"gbs\":%.2f,\"mem_bw_gbs\":%.2f,\"frac_mem_bw\":%.3f,"
               "\"copy_gbs_same_run\":%.2f,\"frac_copy\":%.3f,\"gbs_cpu_time\":%.2f,"
               "\"copy_gbs_cpu_time\":%.2f,\"frac_copy_cpu_time\":%.3f",
               op, shape, cflash_dtype_name(pr->dtype), backend, threads, ms, bytes, gbs,
               pk->mem_bw_gbs, frac, ref, frac_ref, gbs_cpu, ref_cpu, gbs_cpu / ref_cpu);
        if (vs)
            printf(",\"against\":\"%s\",\"against_backend\":\"%s\",\"against_ms\":%.4f,"
                   "\"speedup\":%.3f",
                   vs->what, vs_backend, ms_vs, ms_vs / ms);
        if (tens_pages.huge) printf(",\"huge_pages_mb\":%.0f", hmb);
        printf("}\n");
        return 0;
    }
    printf("%-7s %s %s on %s, %d threads: %.3f ms (median of %d), %.3f GB moved, %.2f GB/s\n"
           "        = %.0f%% of the copy bandwidth timed alternately with it (%.2f GB/s, median)\n"
           "        = %.0f%% of `cflash bench peak` memory bandwidth (%.2f GB/s, best of 5)\n"
           "        per CPU time (CPU ms / threads): %.2f GB/s = %.0f%% of the copy's %.2f GB/s\n",
           op, shape, cflash_dtype_name(pr->dtype), backend, threads, ms, reps, bytes * 1e-9, gbs,
           100.0 * frac_ref, ref, 100.0 * frac, pk->mem_bw_gbs, gbs_cpu, 100.0 * gbs_cpu / ref_cpu,
           ref_cpu);
    if (vs)
        printf("        against the %s on %s, timed after each call: %.3f ms (median): "
               "%.2fx its speed\n",
               vs->what, vs_backend, ms_vs, ms_vs / ms);
    if (tens_pages.huge && hmb >= 0)
        printf(
            "        inputs asked for 2 MB pages: the process has %.0f MB on them, of %.0f MB of "
            "inputs\n",
            hmb, tens_pages.bytes / 1048576.0);
    else if (tens_pages.huge)
        printf("        inputs asked for 2 MB pages: how many it got is not known here "
               "(/proc/self/smaps_rollup)\n");
    return 0;
}

static cflash_context* make_ctx(const cf_problem* pr) {
    cflash_context* ctx = NULL;
    if (cflash_context_create(&ctx) != CFLASH_OK) return NULL;
    cflash_context_set_threads(ctx, pr->threads);
    if (pr->backend && cflash_context_set_backend(ctx, pr->backend) != CFLASH_OK) {
        fprintf(stderr, "cflash bench: %s\n", cflash_last_error());
        cflash_context_free(ctx);
        return NULL;
    }
    return ctx;
}

/* ---- rotary -----------------------------------------------------------------------------------
 */

typedef struct rot_arg {
    cflash_context* ctx;
    cflash_rotary_params p;
    tens x, cs, sn, out;
    int inplace;
} rot_arg;

static cflash_status rot_call(void* p) {
    rot_arg* a = p;
    return cflash_rotary_apply(a->ctx, &a->p, &a->x.dl, &a->cs.dl, &a->sn.dl,
                               a->inplace ? NULL : &a->out.dl);
}

int cf_cmd_bench_rotary(int argc, char** argv) {
    cf_problem pr;
    ops_flags f;
    const int pa = parse("rotary", argc, argv, &pr, &f);
    if (pa) return pa < 0 ? 2 : 0;
    rot_arg a;
    memset(&a, 0, sizeof a);
    int64_t B = pr.batch, S = pr.seqlen_q, H = pr.heads, D = pr.head_dim;
    int64_t rd = f.rotary_dim ? f.rotary_dim : D;
    int64_t xs[4] = {B, S, H, D}, cs[2] = {S, rd / 2};
    a.ctx = make_ctx(&pr);
    if (!a.ctx || tens_new(&a.x, pr.dtype, 4, xs, 1) ||
        tens_new(&a.cs, CFLASH_DTYPE_F32, 2, cs, 2) ||
        tens_new(&a.sn, CFLASH_DTYPE_F32, 2, cs, 3) ||
        (!f.inplace && tens_new(&a.out, pr.dtype, 4, xs, 4)))
        return 1;
    cflash_rotary_params_init(&a.p);
    a.p.interleaved = f.interleaved;
    a.inplace = f.inplace;
    char shape[128];
    snprintf(shape, sizeof shape, "x(%lld,%lld,%lld,%lld) rd%lld%s%s", (long long)B, (long long)S,
             (long long)H, (long long)D, (long long)rd, f.interleaved ? " interleaved" : "",
             f.inplace ? " inplace" : "");
    double es = (double)cflash_dtype_size(pr.dtype), n = (double)(B * S * H * D);
    /* in place only the rotated dims are written back */
    double bytes = n * es + (f.inplace ? n * es * (double)rd / (double)D : n * es) +
                   2.0 * (double)(S * (rd / 2)) * 4.0;
    job j = {rot_call, &a, CFLASH_OK, ""};
    int rc = report("rotary", &pr, shape, a.ctx, &j, bytes, NULL);
    tens_free(&a.x), tens_free(&a.cs), tens_free(&a.sn), tens_free(&a.out);
    cflash_context_free(a.ctx);
    return rc;
}

/* ---- norm -------------------------------------------------------------------------------------
 */

typedef struct norm_arg {
    cflash_context* ctx;
    cflash_norm_params p;
    tens x, res, w, out, resout;
    int residual;
} norm_arg;

static cflash_status norm_call(void* p) {
    norm_arg* a = p;
    return cflash_norm_fwd(a->ctx, &a->p, &a->x.dl, a->residual ? &a->res.dl : NULL, &a->w.dl, NULL,
                           &a->out.dl, a->residual ? &a->resout.dl : NULL, NULL, NULL);
}

int cf_cmd_bench_norm(int argc, char** argv) {
    cf_problem pr;
    ops_flags f;
    const int pa = parse("norm", argc, argv, &pr, &f);
    if (pa) return pa < 0 ? 2 : 0;
    norm_arg a;
    memset(&a, 0, sizeof a);
    int64_t M = pr.batch * pr.seqlen_q, N = pr.heads * pr.head_dim;
    int64_t xs[2] = {M, N}, ws[1] = {N};
    a.ctx = make_ctx(&pr);
    a.residual = f.residual;
    if (!a.ctx || tens_new(&a.x, pr.dtype, 2, xs, 1) ||
        tens_new(&a.w, CFLASH_DTYPE_F32, 1, ws, 2) || tens_new(&a.out, pr.dtype, 2, xs, 3) ||
        (f.residual &&
         (tens_new(&a.res, pr.dtype, 2, xs, 4) || tens_new(&a.resout, pr.dtype, 2, xs, 5))))
        return 1;
    cflash_norm_params_init(&a.p);
    a.p.type = f.layer ? CFLASH_NORM_LAYER : CFLASH_NORM_RMS;
    char shape[128];
    snprintf(shape, sizeof shape, "%s x(%lld,%lld)%s", f.layer ? "layernorm" : "rmsnorm",
             (long long)M, (long long)N, f.residual ? " +residual" : "");
    double bytes = (double)(M * N) * (double)cflash_dtype_size(pr.dtype) * (f.residual ? 4.0 : 2.0);
    job j = {norm_call, &a, CFLASH_OK, ""};
    int rc = report("norm", &pr, shape, a.ctx, &j, bytes, NULL);
    tens_free(&a.x), tens_free(&a.w), tens_free(&a.out), tens_free(&a.res), tens_free(&a.resout);
    cflash_context_free(a.ctx);
    return rc;
}

/* ---- decode -----------------------------------------------------------------------------------
 */

typedef struct dec_arg {
    cflash_context* ctx;
    cflash_attn_params p;
    cflash_kvcache_params kp;
    tens q, kc, vc, out, lse, bt, kd, vd, ks, vs, sl;
} dec_arg;

static cflash_status dec_call(void* p) {
    dec_arg* a = p;
    return cflash_attn_kvcache_fwd(a->ctx, &a->p, &a->kp, &a->q.dl, &a->kc.dl, &a->vc.dl,
                                   &a->out.dl, &a->lse.dl);
}

/* a's tensors and parameters for the decode of pr and f with a cache of format quant (scales and
 * descales positive, as a quantizer makes them); *bytes (bytes not NULL): what the call moves.
 * 0, or 1 (said). */
static int dec_setup(dec_arg* a, const cf_problem* pr, const ops_flags* f, int quant,
                     double* bytes) {
    memset(a, 0, sizeof *a);
    int64_t B = pr->batch, Sq = pr->seqlen_q, Sk = pr->seqlen_k, H = pr->heads, Hk = pr->heads_kv,
            D = pr->head_dim;
    int64_t qs[4] = {B, Sq, H, D}, ls[3] = {B, H, Sq};
    const int64_t pages = f->page ? Sk / f->page + (Sk % f->page != 0) : 0;
    int64_t Bp = 0; /* B * pages */
    if (__builtin_mul_overflow(B, pages, &Bp)) {
        fprintf(stderr, "cflash bench decode: %lld sequences of %lld pages is too many\n",
                (long long)B, (long long)pages);
        return 1;
    }
    int64_t ks[4] = {B, Sk, Hk, D}, kps[4] = {Bp, f->page, Hk, D}, bts[2] = {B, pages};
    int64_t ss[3] = {f->page ? Bp : B, f->page ? f->page : Sk, Hk}, ds[1] = {Hk};
    const int int8 = quant == CFLASH_KV_QUANT_INT8, fp8 = quant && !int8;
    const cflash_dtype cdt = int8 ? CFLASH_DTYPE_I8 : fp8 ? CFLASH_DTYPE_U8 : pr->dtype;
    a->ctx = make_ctx(pr);
    if (!a->ctx || tens_new(&a->q, pr->dtype, 4, qs, 1) ||
        tens_new(&a->kc, cdt, 4, f->page ? kps : ks, 2) ||
        tens_new(&a->vc, cdt, 4, f->page ? kps : ks, 3) || tens_new(&a->out, pr->dtype, 4, qs, 4) ||
        tens_new(&a->lse, CFLASH_DTYPE_F32, 3, ls, 5) ||
        (f->page && tens_new(&a->bt, CFLASH_DTYPE_I32, 2, bts, 6)) ||
        (fp8 && (tens_new(&a->kd, CFLASH_DTYPE_F32, 1, ds, 7) ||
                 tens_new(&a->vd, CFLASH_DTYPE_F32, 1, ds, 8))) ||
        (int8 && (tens_new(&a->ks, CFLASH_DTYPE_F32, 3, ss, 9) ||
                  tens_new(&a->vs, CFLASH_DTYPE_F32, 3, ss, 10))))
        return 1;
    tens* sc[4] = {&a->kd, &a->vd, &a->ks, &a->vs};
    for (int i = 0; i < 4; i++) { /* [-1, 1) -> [0.01, 1.01) */
        float* x = sc[i]->dl.data;
        int64_t n = x ? 1 : 0;
        for (int d = 0; x && d < sc[i]->dl.ndim; d++)
            n *= sc[i]->shape[d];
        for (int64_t e = 0; e < n; e++)
            x[e] = 0.01f + 0.5f * (x[e] + 1.0f);
    }
    const int64_t sls[1] = {B};
    if (f->lens && tens_new(&a->sl, CFLASH_DTYPE_I32, 1, sls, 11)) return 1;
    /* rows read (at most B * Sk, whose product with Hk * D tens_new checked) */
    const int64_t keys = f->lens ? f->keys : B * Sk;
    if (f->lens) memcpy(a->sl.dl.data, f->lens, sizeof(int32_t) * (size_t)B);
    for (int64_t i = 0; f->page && i < Bp; i++) /* pages in a scattered order */
        ((int32_t*)a->bt.dl.data)[i] = (int32_t)((i * 7919) % Bp);
    cflash_attn_params_init(&a->p);
    a->p.causal = pr->causal;
    a->p.window_left = pr->window_left, a->p.window_right = pr->window_right;
    a->p.softcap = pr->softcap;
    cflash_kvcache_params_init(&a->kp);
    a->kp.cache_seqlen = Sk;
    a->kp.cache_seqlens = f->lens ? &a->sl.dl : NULL;
    a->kp.block_table = f->page ? &a->bt.dl : NULL;
    a->kp.num_splits = f->splits >= 0 ? (int)f->splits : 0;
    a->kp.cache_quant = quant;
    a->kp.k_descale = fp8 ? &a->kd.dl : NULL, a->kp.v_descale = fp8 ? &a->vd.dl : NULL;
    a->kp.k_scales = int8 ? &a->ks.dl : NULL, a->kp.v_scales = int8 ? &a->vs.dl : NULL;
    const double es = (double)cflash_dtype_size(pr->dtype), ces = (double)cflash_dtype_size(cdt);
    if (bytes)
        *bytes = 2.0 * (double)(keys * Hk * D) * ces + 2.0 * (double)(B * Sq * H * D) * es +
                 (int8 ? 2.0 * 4.0 * (double)(keys * Hk) : 0.0);
    return 0;
}

static void dec_free(dec_arg* a) {
    tens* t[11] = {&a->q,  &a->kc, &a->vc, &a->out, &a->lse, &a->bt,
                   &a->kd, &a->vd, &a->ks, &a->vs,  &a->sl};
    for (int i = 0; i < 11; i++)
        tens_free(t[i]);
    cflash_context_free(a->ctx);
    a->ctx = NULL;
}

/* What a cache of format quant holds, for the report: "int8 cache", "bfloat16 cache". */
static const char* dec_cache_name(int quant, cflash_dtype dt, char* buf, size_t n) {
    snprintf(buf, n, "%s cache",
             quant ? (const char*[]){"", "e4m3", "e5m2", "int8"}[quant] : cflash_dtype_name(dt));
    return buf;
}

int cf_cmd_bench_decode(int argc, char** argv) {
    cf_problem pr;
    ops_flags f;
    const int pa = parse("decode", argc, argv, &pr, &f);
    if (pa) return pa < 0 ? 2 : 0;
    dec_arg a, b;
    double bytes = 0;
    memset(&b, 0, sizeof b);
    int rc = dec_setup(&a, &pr, &f, f.kv_quant, &bytes) ||
             (f.against >= 0 && dec_setup(&b, &pr, &f, f.against, NULL));
    if (!rc) {
        char shape[192], what[64], paged[32] = "", sk[64];
        if (f.page) snprintf(paged, sizeof paged, " paged%lld", (long long)f.page);
        if (f.lens) /* (the longest; the keys of all) */
            snprintf(sk, sizeof sk, "Sk<=%lld (%lld keys)", (long long)pr.seqlen_k,
                     (long long)f.keys);
        else
            snprintf(sk, sizeof sk, "Sk%lld", (long long)pr.seqlen_k);
        snprintf(shape, sizeof shape, "B%lld H%lld/%lld D%lld Sq%lld %s%s%s%s", (long long)pr.batch,
                 (long long)pr.heads, (long long)pr.heads_kv, (long long)pr.head_dim,
                 (long long)pr.seqlen_q, sk,
                 (const char*[]){"", " cache-e4m3", " cache-e5m2", " cache-int8"}[f.kv_quant],
                 paged, pr.causal ? " causal" : "");
        job j = {dec_call, &a, CFLASH_OK, ""}, jb = {dec_call, &b, CFLASH_OK, ""};
        /* (no --against: no second call, and no name for it: f.against is -1) */
        const versus vs = {&jb, b.ctx,
                           f.against >= 0 ? dec_cache_name(f.against, pr.dtype, what, sizeof what)
                                          : NULL};
        rc = report("decode", &pr, shape, a.ctx, &j, bytes, f.against >= 0 ? &vs : NULL);
    }
    dec_free(&a), dec_free(&b);
    free(f.lens);
    return rc;
}

/* ---- merge ------------------------------------------------------------------------------------
 */

typedef struct merge_arg {
    cflash_context* ctx;
    tens op, lp, out, lse;
} merge_arg;

static cflash_status merge_call(void* p) {
    merge_arg* a = p;
    return cflash_attn_merge(a->ctx, &a->op.dl, &a->lp.dl, &a->out.dl, &a->lse.dl);
}

int cf_cmd_bench_merge(int argc, char** argv) {
    cf_problem pr;
    ops_flags f;
    const int pa = parse("merge", argc, argv, &pr, &f);
    if (pa) return pa < 0 ? 2 : 0;
    merge_arg a;
    memset(&a, 0, sizeof a);
    int64_t NS = f.splits > 0 ? f.splits : 4, B = pr.batch, Sq = pr.seqlen_q, H = pr.heads,
            D = pr.head_dim;
    int64_t ps[5] = {NS, B, Sq, H, D}, pl[4] = {NS, B, H, Sq}, os[4] = {B, Sq, H, D},
            ls[3] = {B, H, Sq};
    a.ctx = make_ctx(&pr);
    if (!a.ctx || tens_new(&a.op, pr.dtype, 5, ps, 1) ||
        tens_new(&a.lp, CFLASH_DTYPE_F32, 4, pl, 2) || tens_new(&a.out, pr.dtype, 4, os, 3) ||
        tens_new(&a.lse, CFLASH_DTYPE_F32, 3, ls, 4))
        return 1;
    char shape[128];
    snprintf(shape, sizeof shape, "%lld x (%lld,%lld,%lld,%lld)", (long long)NS, (long long)B,
             (long long)Sq, (long long)H, (long long)D);
    double es = (double)cflash_dtype_size(pr.dtype), n = (double)(B * Sq * H * D);
    double bytes =
        (double)NS * (n * es + (double)(B * H * Sq) * 4.0) + n * es + (double)(B * H * Sq) * 4.0;
    job j = {merge_call, &a, CFLASH_OK, ""};
    int rc = report("merge", &pr, shape, a.ctx, &j, bytes, NULL);
    tens_free(&a.op), tens_free(&a.lp), tens_free(&a.out), tens_free(&a.lse);
    cflash_context_free(a.ctx);
    return rc;
}
