/* Calls made at once, as an engine that embeds the library makes them: several application threads
 * (pthreads), each with its own context and tensors, and calls from inside the caller's own
 * OpenMP parallel region (a nested region: the library's team gets one thread whatever the
 * context asks). Every call must give, bit for bit, what the same call gave alone on the main
 * thread with the same context (each of those checked there against the fp64 oracle, or for the
 * quantized KV-cache call, its caches' append against the same call with one thread): a shared
 * scratch buffer, a table filled lazily without a lock, or a work split that counts on the
 * threads it asked for would show as a difference or a poisoned element.
 * Usage: test_concurrent */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/testutil.h"
#include "oracle/attn_oracle.h"

#define NCASES 5
#define NTHREADS 4
#define ROUNDS 3

/* ---- The calls ----------------------------------------------------------------------------- */

/* Attention case k (forward and backward): GQA causal bf16; fp32 decode rows (the KV-cache
 * kernels); fp16 varlen over shuffled pages with seqused; bf16 with a bias, its gradient and a
 * mask; fp32 with sinks, a window and softcap. */
static void attn_case_of(int k, attn_case* c) {
    attn_case_init(c);
    c->seed = tt_seed_base() + 4100 + (uint64_t)k;
    switch (k) {
    case 0:
        c->dtype = CFLASH_DTYPE_BF16, c->B = 2, c->H = 8, c->Hk = 2, c->Sq = c->Sk = 160;
        c->D = c->Dv = 64, c->causal = 1;
        break;
    case 1:
        c->dtype = CFLASH_DTYPE_F32, c->B = 1, c->H = 8, c->Hk = 2, c->Sq = 1, c->Sk = 900;
        c->D = c->Dv = 128;
        break;
    case 2:
        c->dtype = CFLASH_DTYPE_F16, c->varlen = 1, c->B = 3, c->H = 4, c->Hk = 2;
        c->seqlens_q[0] = 40, c->seqlens_q[1] = 1, c->seqlens_q[2] = 97;
        c->seqlens_k[0] = 70, c->seqlens_k[1] = 130, c->seqlens_k[2] = 97;
        c->D = c->Dv = 64, c->page = 16, c->seqused = 2, c->causal = 1;
        break;
    case 3:
        c->dtype = CFLASH_DTYPE_BF16, c->B = 1, c->H = 4, c->Hk = 4, c->Sq = c->Sk = 200;
        c->D = c->Dv = 64, c->bias = ATTN_BC_1H, c->dbias = 1, c->bias_f32 = 1;
        c->mask = ATTN_BC_11;
        break;
    default:
        c->dtype = CFLASH_DTYPE_F32, c->B = 2, c->H = 6, c->Hk = 3, c->Sq = 33, c->Sk = 250;
        c->D = 48, c->Dv = 40, c->sinks = 1, c->window_left = 60, c->window_right = 10;
        c->softcap = 20.0f;
        break;
    }
}

/* Hashes of one run's results: forward (out, lse), backward (dq, dk, dv, dbias, dsinks). */
typedef struct digest {
    uint64_t fwd, bwd;
} digest;

static uint64_t mix(uint64_t h, uint64_t x) {
    return (h ^ x) * 0x100000001b3ull;
}

static uint64_t hash_of(const tt_tensor* t) {
    return t->base ? tt_hash(t) : 0;
}

/* Runs attention case p (forward, then backward) on ctx into *d; 0 when a call failed. */
static int run_attn(cflash_context* ctx, attn_problem* p, digest* d) {
    if (attn_problem_run_fwd(ctx, p) != CFLASH_OK) return 0;
    d->fwd = mix(hash_of(&p->out), hash_of(&p->lse));
    if (attn_problem_run_bwd(ctx, p) != CFLASH_OK) return 0;
    uint64_t h = hash_of(&p->dq);
    h = mix(h, p->c.page ? hash_of(&p->dkp) : hash_of(&p->dk));
    h = mix(h, p->c.page ? hash_of(&p->dvp) : hash_of(&p->dv));
    d->bwd = mix(mix(h, hash_of(&p->dbias)), hash_of(&p->dsinks));
    return 1;
}

/* The quantized KV-cache call (job NCASES): a decode step of B2 H8 Hk2 D128, bf16 q and
 * new rows, int8 caches of 512 rows (300 and 411 held) with their scales; the new row appended
 * to each. Owns its tensors: every run starts from the same caches. */
typedef struct kv_job {
    tt_tensor q, kc, vc, ks, vs, kn, vn, out, lse, sl;
} kv_job;

static int kv_new(kv_job* j) {
    memset(j, 0, sizeof *j);
    const int64_t qs[4] = {2, 1, 8, 128}, cs[4] = {2, 512, 2, 128}, ss[3] = {2, 512, 2},
                  ns[4] = {2, 1, 2, 128}, ls[3] = {2, 8, 1}, bs[1] = {2};
    const uint64_t s = tt_seed_base() + 4200;
    if (tt_alloc(&j->q, CFLASH_DTYPE_BF16, 4, qs, TT_DENSE) ||
        tt_alloc(&j->kc, CFLASH_DTYPE_I8, 4, cs, TT_DENSE) ||
        tt_alloc(&j->vc, CFLASH_DTYPE_I8, 4, cs, TT_DENSE) ||
        tt_alloc(&j->ks, CFLASH_DTYPE_F32, 3, ss, TT_DENSE) ||
        tt_alloc(&j->vs, CFLASH_DTYPE_F32, 3, ss, TT_DENSE) ||
        tt_alloc(&j->kn, CFLASH_DTYPE_BF16, 4, ns, TT_DENSE) ||
        tt_alloc(&j->vn, CFLASH_DTYPE_BF16, 4, ns, TT_DENSE) ||
        tt_alloc(&j->out, CFLASH_DTYPE_BF16, 4, qs, TT_DENSE) ||
        tt_alloc(&j->lse, CFLASH_DTYPE_F32, 3, ls, TT_DENSE) ||
        tt_alloc(&j->sl, CFLASH_DTYPE_I32, 1, bs, TT_DENSE))
        return 0;
    tt_random(&j->q, s, -1, 1), tt_random(&j->kn, s + 1, -1, 1), tt_random(&j->vn, s + 2, -1, 1);
    tt_random(&j->ks, s + 5, 0.001, 0.02), tt_random(&j->vs, s + 6, 0.001, 0.02);
    tt_set_flat(&j->sl, 0, 300), tt_set_flat(&j->sl, 1, 411);
    return 1;
}

static void kv_free(kv_job* j) {
    tt_free(&j->q), tt_free(&j->kc), tt_free(&j->vc), tt_free(&j->ks), tt_free(&j->vs);
    tt_free(&j->kn), tt_free(&j->vn), tt_free(&j->out), tt_free(&j->lse), tt_free(&j->sl);
}

/* The call on ctx from fresh caches (random codes in [-127, 127]); *d gets the hashes of out
 * and lse, and of the four caches after the append. 0 when the call failed. */
static int run_kv(cflash_context* ctx, kv_job* j, digest* d) {
    const uint64_t s = tt_seed_base() + 4300;
    for (int64_t n = 0; n < j->kc.numel; n++) {
        tt_set_flat(&j->kc, n, (double)(((uint64_t)n * 2654435761u + s) % 255u) - 127.0);
        tt_set_flat(&j->vc, n, (double)(((uint64_t)n * 40503u + 7u * s) % 255u) - 127.0);
    }
    tt_random(&j->ks, s + 5, 0.001, 0.02), tt_random(&j->vs, s + 6, 0.001, 0.02);
    tt_poison(&j->out), tt_poison(&j->lse);
    cflash_attn_params ap;
    cflash_attn_params_init(&ap);
    cflash_kvcache_params kp;
    cflash_kvcache_params_init(&kp);
    kp.k_new = &j->kn.dl, kp.v_new = &j->vn.dl, kp.cache_seqlens = &j->sl.dl;
    kp.cache_quant = CFLASH_KV_QUANT_INT8, kp.k_scales = &j->ks.dl, kp.v_scales = &j->vs.dl;
    if (cflash_attn_kvcache_fwd(ctx, &ap, &kp, &j->q.dl, &j->kc.dl, &j->vc.dl, &j->out.dl,
                                &j->lse.dl) != CFLASH_OK)
        return 0;
    d->fwd = mix(tt_hash(&j->out), tt_hash(&j->lse));
    d->bwd = mix(mix(tt_hash(&j->kc), tt_hash(&j->vc)), mix(tt_hash(&j->ks), tt_hash(&j->vs)));
    return tt_count_nan(&j->out) == 0 && tt_count_nan(&j->lse) == 0;
}

/* The ops around attention (job NCASES + 1): LayerNorm with a residual and dropout, forward and
 * backward (bf16 rows of 1000, 300 rows: the dweight / dbias partial sums over threads), and
 * cflash_attn_mask_far_keys of a (1, 2, 300, 701) fp16 mask. */
typedef struct ops_job {
    tt_tensor x, res, w, b, out, rout, mean, rstd, dy, dx, dw, db, bias, keep;
} ops_job;

static int ops_new(ops_job* j) {
    memset(j, 0, sizeof *j);
    const int64_t xs[2] = {300, 1000}, ws[1] = {1000}, ms[1] = {300}, bs[4] = {1, 2, 300, 701};
    const uint64_t s = tt_seed_base() + 4400;
    if (tt_alloc(&j->x, CFLASH_DTYPE_BF16, 2, xs, TT_DENSE) ||
        tt_alloc(&j->res, CFLASH_DTYPE_BF16, 2, xs, TT_DENSE) ||
        tt_alloc(&j->w, CFLASH_DTYPE_BF16, 1, ws, TT_DENSE) ||
        tt_alloc(&j->b, CFLASH_DTYPE_BF16, 1, ws, TT_DENSE) ||
        tt_alloc(&j->out, CFLASH_DTYPE_BF16, 2, xs, TT_DENSE) ||
        tt_alloc(&j->rout, CFLASH_DTYPE_BF16, 2, xs, TT_DENSE) ||
        tt_alloc(&j->mean, CFLASH_DTYPE_F32, 1, ms, TT_DENSE) ||
        tt_alloc(&j->rstd, CFLASH_DTYPE_F32, 1, ms, TT_DENSE) ||
        tt_alloc(&j->dy, CFLASH_DTYPE_BF16, 2, xs, TT_DENSE) ||
        tt_alloc(&j->dx, CFLASH_DTYPE_BF16, 2, xs, TT_DENSE) ||
        tt_alloc(&j->dw, CFLASH_DTYPE_F32, 1, ws, TT_DENSE) ||
        tt_alloc(&j->db, CFLASH_DTYPE_F32, 1, ws, TT_DENSE) ||
        tt_alloc(&j->bias, CFLASH_DTYPE_F16, 4, bs, TT_DENSE) ||
        tt_alloc(&j->keep, CFLASH_DTYPE_U8, 4, bs, TT_DENSE))
        return 0;
    tt_random(&j->x, s, -2, 2), tt_random(&j->res, s + 1, -2, 2), tt_random(&j->w, s + 2, -1, 1);
    tt_random(&j->b, s + 3, -1, 1), tt_random(&j->dy, s + 4, -1, 1);
    tt_random(&j->bias, s + 5, -30, 0);
    for (int64_t n = 0; n < j->bias.numel; n += 7) /* a far key in every row */
        tt_set_flat(&j->bias, n, -60000.0);
    return 1;
}

static void ops_free(ops_job* j) {
    tt_tensor* t[] = {&j->x,    &j->res, &j->w,  &j->b,  &j->out, &j->rout, &j->mean,
                      &j->rstd, &j->dy,  &j->dx, &j->dw, &j->db,  &j->bias, &j->keep};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        tt_free(t[i]);
}

/* The three calls on ctx, every output poisoned first; *d gets the forward's outputs' hashes
 * and those of the backward's and of keep. 0 when a call failed. */
static int run_ops(cflash_context* ctx, ops_job* j, digest* d) {
    tt_tensor* o[] = {&j->out, &j->rout, &j->mean, &j->rstd, &j->dx, &j->dw, &j->db, &j->keep};
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++)
        tt_poison(o[i]);
    cflash_norm_params np;
    cflash_norm_params_init(&np);
    np.type = CFLASH_NORM_LAYER, np.dropout_p = 0.1f, np.seed = 77, np.offset = 5;
    int flags = 0;
    if (cflash_norm_fwd(ctx, &np, &j->x.dl, &j->res.dl, &j->w.dl, &j->b.dl, &j->out.dl, &j->rout.dl,
                        &j->mean.dl, &j->rstd.dl) != CFLASH_OK ||
        cflash_norm_bwd(ctx, &np, &j->dy.dl, &j->rout.dl, &j->w.dl, &j->b.dl, &j->mean.dl,
                        &j->rstd.dl, NULL, &j->dx.dl, &j->dw.dl, &j->db.dl, NULL) != CFLASH_OK ||
        cflash_attn_mask_far_keys(&j->bias.dl, 100.0, &j->keep.dl, &flags) != CFLASH_OK)
        return 0;
    d->fwd =
        mix(mix(tt_hash(&j->out), tt_hash(&j->rout)), mix(tt_hash(&j->mean), tt_hash(&j->rstd)));
    d->bwd = mix(mix(mix(tt_hash(&j->dx), tt_hash(&j->dw)), tt_hash(&j->db)),
                 mix(tt_hash(&j->keep), (uint64_t)flags));
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++)
        if (tt_count_nan(o[i])) return 0;
    return flags == CFLASH_FAR_KEYS_HIDES;
}

/* ---- One worker's calls ---------------------------------------------------------------------- */

/* A worker's own problems (the same inputs as everyone's: same cases, same seeds). */
typedef struct worker {
    attn_problem* p[NCASES];
    kv_job kv;
    ops_job ops;
    int ok;
} worker;

static int worker_new(worker* w) {
    memset(w, 0, sizeof *w);
    w->ok = kv_new(&w->kv) & ops_new(&w->ops);
    for (int k = 0; k < NCASES; k++) {
        attn_case c;
        attn_case_of(k, &c);
        w->ok &= (w->p[k] = attn_problem_new(&c)) != NULL;
    }
    return w->ok;
}

static void worker_free(worker* w) {
    for (int k = 0; k < NCASES; k++)
        attn_problem_free(w->p[k]);
    kv_free(&w->kv);
    ops_free(&w->ops);
}

/* Job k of a worker (k < NCASES: attention case k; NCASES: the KV-cache call; NCASES + 1: the
 * ops) on ctx. */
static int run_job(cflash_context* ctx, worker* w, int k, digest* d) {
    return k < NCASES    ? run_attn(ctx, w->p[k], d)
           : k == NCASES ? run_kv(ctx, &w->kv, d)
                         : run_ops(ctx, &w->ops, d);
}

#define NJOBS (NCASES + 2)

/* want[t][k]: job k's digest alone on the main thread, with a context of t + 1 threads;
 * nested[k]: with 2 threads asked for, from inside a parallel region of the caller. */
static digest want[2][NJOBS], nested[NJOBS];
static cflash_context* ctxs[2];

/* Counts of a worker's runs and of those that failed or differed. */
typedef struct tally {
    int runs, failed, differed;
    char first[256]; /* the first difference */
} tally;

static void note(tally* t, int ok, const digest* got, const digest* w, int k, const char* how) {
    t->runs++;
    if (!ok) t->failed++;
    if (ok && (got->fwd != w->fwd || got->bwd != w->bwd)) {
        if (!t->differed++)
            snprintf(t->first, sizeof t->first, "job %d (%s): forward %s, %s", k, how,
                     got->fwd == w->fwd ? "same" : "differs",
                     got->bwd == w->bwd ? "backward / caches same" : "backward / caches differ");
    }
}

typedef struct pthread_arg {
    int id;
    tally t;
} pthread_arg;

/* An application thread: its own contexts (of 1 and 2 threads, in turn), its own tensors, every
 * job ROUNDS times in an order of its own. */
static void* app_thread(void* a) {
    pthread_arg* pa = a;
    worker w;
    cflash_context* ctx[2] = {NULL, NULL};
    if (!worker_new(&w) || cflash_context_create(&ctx[0]) || cflash_context_create(&ctx[1]) ||
        cflash_context_set_threads(ctx[0], 1) || cflash_context_set_threads(ctx[1], 2)) {
        pa->t.failed++;
    } else {
        for (int r = 0; r < ROUNDS; r++)
            for (int i = 0; i < NJOBS; i++) {
                const int k = (i + pa->id + r) % NJOBS, nt = (pa->id + r + i) % 2;
                digest d;
                note(&pa->t, run_job(ctx[nt], &w, k, &d), &d, &want[nt][k], k,
                     nt ? "application threads, context of 2"
                        : "application threads, context of 1");
            }
    }
    cflash_context_free(ctx[0]), cflash_context_free(ctx[1]);
    worker_free(&w);
    return NULL;
}

/* ---- The tests ------------------------------------------------------------------------------ */

/* Each job alone on the main thread: the digests to match, each result checked first. */
static void test_alone(void) {
    worker w;
    CHECK(worker_new(&w));
    if (!w.ok) return;
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < NJOBS; k++) {
            CHECK_MSG(run_job(ctxs[t], &w, k, &want[t][k]), "job %d, %d threads: %s", k, t + 1,
                      cflash_last_error());
            char msg[512];
            if (k < NCASES) {
                CHECK_MSG(attn_problem_check_fwd(w.p[k], msg, sizeof msg), "%d threads: %s", t + 1,
                          msg);
                CHECK_MSG(attn_problem_check_bwd(w.p[k], msg, sizeof msg), "%d threads: %s", t + 1,
                          msg);
            }
            digest again; /* (a call repeats itself bit for bit: what the tests below rely on) */
            CHECK(run_job(ctxs[t], &w, k, &again));
            CHECK_MSG(again.fwd == want[t][k].fwd && again.bwd == want[t][k].bwd,
                      "job %d, %d threads: a second run differs", k, t + 1);
        }
    /* the append writes the same caches whatever the threads (the attention may differ by its
     * splits) */
    CHECK(want[0][NCASES].bwd == want[1][NCASES].bwd);
    worker_free(&w);
}

/* NTHREADS application threads at once. */
static void test_app_threads(void) {
    pthread_t th[NTHREADS];
    pthread_arg arg[NTHREADS];
    memset(arg, 0, sizeof arg);
    for (int i = 0; i < NTHREADS; i++) {
        arg[i].id = i;
        CHECK(pthread_create(&th[i], NULL, app_thread, &arg[i]) == 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(arg[i].t.failed == 0 && arg[i].t.differed == 0 && arg[i].t.runs == ROUNDS * NJOBS,
                  "application thread %d: %d runs, %d failed, %d differed (first: %s)", i,
                  arg[i].t.runs, arg[i].t.failed, arg[i].t.differed, arg[i].t.first);
    }
    printf("concurrent: %d application threads x %d calls, each as alone\n", NTHREADS,
           ROUNDS * NJOBS);
}

/* Calls from inside the caller's parallel region (2 threads, each with its own tensors and a
 * context asking for 2 threads): first one thread of the region alone (checked against the
 * oracle), then both at once. */
static void test_nested(void) {
#ifdef _OPENMP
    worker w[2];
    CHECK(worker_new(&w[0]) && worker_new(&w[1]));
    if (!w[0].ok || !w[1].ok) return;
    cflash_context* ctx[2] = {NULL, NULL};
    CHECK_OK(cflash_context_create(&ctx[0]));
    CHECK_OK(cflash_context_create(&ctx[1]));
    CHECK_OK(cflash_context_set_threads(ctx[0], 2));
    CHECK_OK(cflash_context_set_threads(ctx[1], 2));
    int ok[NJOBS];
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        for (int k = 0; k < NJOBS; k++)
            ok[k] = run_job(ctx[0], &w[0], k, &nested[k]);
    }
    for (int k = 0; k < NJOBS; k++) {
        CHECK_MSG(ok[k], "job %d inside a parallel region: %s", k, cflash_last_error());
        char msg[512];
        if (ok[k] && k < NCASES) {
            CHECK_MSG(attn_problem_check_fwd(w[0].p[k], msg, sizeof msg), "nested: %s", msg);
            CHECK_MSG(attn_problem_check_bwd(w[0].p[k], msg, sizeof msg), "nested: %s", msg);
        }
    }
    CHECK(nested[NCASES].bwd == want[0][NCASES].bwd); /* the append, as alone */
    tally t[2];
    memset(t, 0, sizeof t);
#pragma omp parallel num_threads(2)
    {
        const int me = omp_get_thread_num();
        for (int r = 0; me < 2 && r < ROUNDS; r++)
            for (int i = 0; i < NJOBS; i++) {
                const int k = (i + me) % NJOBS;
                digest d;
                note(&t[me], run_job(ctx[me], &w[me], k, &d), &d, &nested[k], k,
                     "inside the caller's parallel region");
            }
    }
    for (int i = 0; i < 2; i++)
        CHECK_MSG(t[i].failed == 0 && t[i].differed == 0,
                  "region thread %d: %d runs, %d failed, %d differed (first: %s)", i, t[i].runs,
                  t[i].failed, t[i].differed, t[i].first);
    cflash_context_free(ctx[0]), cflash_context_free(ctx[1]);
    worker_free(&w[0]), worker_free(&w[1]);
    printf("concurrent: 2 threads of the caller's parallel region x %d calls, each as alone\n",
           ROUNDS * NJOBS);
#else
    printf("concurrent: built without OpenMP, no parallel region to call from\n");
#endif
}

int main(void) {
    CHECK_OK(cflash_context_create(&ctxs[0]));
    CHECK_OK(cflash_context_create(&ctxs[1]));
    CHECK_OK(cflash_context_set_threads(ctxs[0], 1));
    CHECK_OK(cflash_context_set_threads(ctxs[1], 2));
    test_alone();
    test_app_threads();
    test_nested();
    cflash_context_free(ctxs[0]), cflash_context_free(ctxs[1]);
    return tt_summary();
}
