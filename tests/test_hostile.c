/* Hostile input (issue 11, findings 1-7): sizes, offsets, strides and windows near the int64
 * limits, empty tensors with no data, layouts that do not flatten. Every call must return a status
 * (the error ones naming the argument, with the outputs untouched) and never touch memory outside
 * its tensors: buffers are sized exactly to their views (tt_alloc_strided), so the sanitizer build
 * sees any stray access. Each case runs in a child process, so a crash fails that case alone
 * (CFLASH_TEST_NOFORK=1 runs them in-process, for a debugger). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/testutil.h"
#include "core/tensor.h"
#include "oracle/attn_oracle.h"
#include "oracle/ops_oracle.h"

#define INV CFLASH_ERR_INVALID_ARGUMENT
#define BIG (INT64_C(1) << 62)

/* ---- Harness ------------------------------------------------------------------------------ */

/* Runs fn in a child; one CHECK here: the child exited 0 (no failed check, no crash). */
static void isolated(const char* name, void (*fn)(void)) {
    const char* nf = getenv("CFLASH_TEST_NOFORK");
    if (nf && *nf == '1') {
        int before = tt_failed;
        fn();
        printf("%s: %s\n", name, tt_failed == before ? "ok" : "FAILED");
        return;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(120); /* a hang (a loop over huge dims) fails the case: SIGALRM */
        tt_passed = tt_failed = 0;
        fn();
        printf("%s: %d passed, %d failed\n", name, tt_passed, tt_failed);
        fflush(stdout);
        _exit(tt_failed ? 1 : 0);
    }
    int st = 0;
    CHECK_MSG(pid > 0 && waitpid(pid, &st, 0) == pid, "%s: fork/wait failed", name);
    if (WIFSIGNALED(st))
        CHECK_MSG(0, "%s: crashed with signal %d", name, WTERMSIG(st));
    else
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: failed (exit %d)", name,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static void alloc4(tt_tensor* t, cf_dtype dt, int64_t a, int64_t b, int64_t c, int64_t d) {
    const int64_t s[4] = {a, b, c, d};
    tt_alloc(t, dt, 4, s, TT_DENSE);
}

static void alloc_n(tt_tensor* t, cf_dtype dt, int nd, const int64_t* shape) {
    tt_alloc(t, dt, nd, shape, TT_DENSE);
}

/* A tensor with data NULL (the header allows it when a dim is 0), strides as given or NULL. */
static DLTensor null_tensor(cf_dtype dt, int nd, int64_t* shape, int64_t* strides) {
    DLTensor t;
    memset(&t, 0, sizeof t);
    t.device.device_type = kDLCPU;
    t.ndim = nd;
    t.dtype = tt_dl_dtype(dt);
    t.shape = shape;
    t.strides = strides;
    return t;
}

/* ---- 1. KV cache with Sq = 0 and the split heuristic ------------------------------------ */

static void kv_sq0(void) {
    for (int bi = 0; ops_backends[bi]; bi++) {
        const char* be = ops_backends[bi];
        tt_tensor q, kc, vc, kn, vn, sl, out, lse;
        alloc4(&q, CF_F32, 2, 0, 4, 16);
        alloc4(&kc, CF_F32, 2, 8, 2, 16);
        alloc4(&vc, CF_F32, 2, 8, 2, 16);
        alloc4(&kn, CF_F32, 2, 3, 2, 16);
        alloc4(&vn, CF_F32, 2, 3, 2, 16);
        alloc4(&out, CF_F32, 2, 0, 4, 16);
        const int64_t ls[3] = {2, 4, 0}, n2[1] = {2};
        alloc_n(&lse, CF_F32, 3, ls);
        alloc_n(&sl, CF_I32, 1, n2);
        tt_random(&kc, 1, -1, 1), tt_random(&vc, 2, -1, 1);
        tt_random(&kn, 3, -1, 1), tt_random(&vn, 4, -1, 1);
        ((int32_t*)sl.base)[0] = 2, ((int32_t*)sl.base)[1] = 5;
        cflash_attn_params p;
        cflash_attn_params_init(&p);
        cflash_kvcache_params kp;
        cflash_kvcache_params_init(&kp);
        kp.k_new = &kn.dl, kp.v_new = &vn.dl, kp.cache_seqlens = &sl.dl, kp.num_splits = 0;
        cflash_context* ctx = ops_context(be, 2);
        cflash_status s =
            cflash_attn_kvcache_fwd(ctx, &p, &kp, &q.dl, &kc.dl, &vc.dl, &out.dl, &lse.dl);
        if (!ops_backend_skips(be, "kvcache_fwd", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s: kvcache Sq = 0: %s", be, cflash_last_error());
            int same = 1; /* the new rows were appended at cache_seqlens */
            for (int64_t b = 0; b < 2; b++)
                for (int64_t n = 0; n < 3; n++)
                    for (int64_t h = 0; h < 2; h++)
                        for (int64_t d = 0; d < 16; d++) {
                            const int64_t L = b ? 5 : 2, ic[4] = {b, L + n, h, d},
                                          in[4] = {b, n, h, d};
                            same &= tt_get(&kc, ic) == tt_get(&kn, in);
                            same &= tt_get(&vc, ic) == tt_get(&vn, in);
                        }
            CHECK_MSG(same, "%s: kvcache Sq = 0 did not append k_new / v_new", be);
        }
        cflash_context_free(ctx);
        tt_free(&q), tt_free(&kc), tt_free(&vc), tt_free(&kn), tt_free(&vn);
        tt_free(&sl), tt_free(&out), tt_free(&lse);
    }
}

/* ---- 2. KV cache lengths near INT64_MAX --------------------------------------------------- */

/* A small KV-cache problem whose every output is hashed before the call. */
typedef struct kvfix {
    tt_tensor q, kc, vc, out, lse, sl, kn, vn;
    uint64_t h;
} kvfix;

static void kvfix_init(kvfix* f, int64_t sn, int64_t sn_stride, int64_t D) {
    memset(f, 0, sizeof *f);
    alloc4(&f->q, CF_F32, 1, 1, 2, D);
    alloc4(&f->kc, CF_F32, 1, 128, 1, D);
    alloc4(&f->vc, CF_F32, 1, 128, 1, D);
    alloc4(&f->out, CF_F32, 1, 1, 2, D);
    const int64_t ls[3] = {1, 2, 1}, n1[1] = {1};
    alloc_n(&f->lse, CF_F32, 3, ls);
    alloc_n(&f->sl, CF_I32, 1, n1);
    const int64_t ns[4] = {1, sn, 1, D}, st[4] = {D, sn_stride, D, 1};
    tt_alloc_strided(&f->kn, CF_F32, 4, ns, st);
    tt_alloc_strided(&f->vn, CF_F32, 4, ns, st);
    tt_random(&f->q, 5, -1, 1), tt_random(&f->kc, 6, -1, 1), tt_random(&f->vc, 7, -1, 1);
    ((float*)f->kn.base)[0] = 0.5f, ((float*)f->vn.base)[0] = 0.25f;
}

static uint64_t kvfix_hash(const kvfix* f) {
    return tt_hash(&f->kc) ^ 3 * tt_hash(&f->vc) ^ 5 * tt_hash(&f->out) ^ 7 * tt_hash(&f->lse);
}

static void kvfix_free(kvfix* f) {
    tt_free(&f->q), tt_free(&f->kc), tt_free(&f->vc), tt_free(&f->out), tt_free(&f->lse);
    tt_free(&f->sl), tt_free(&f->kn), tt_free(&f->vn);
}

/* Each backend: a KV-cache call whose length + new rows wraps int64 is rejected naming `what`,
 * nothing written. seqlens32 >= 0: cache_seqlens = [seqlens32], k_new of sn rows of D values with
 * row stride sn_stride; else cache_seqlen = INT64_MAX - 1 with 2 new rows. */
static void kv_length_wraps(int64_t seqlens32, int64_t sn, int64_t sn_stride, int64_t D,
                            const char* what) {
    for (int bi = 0; ops_backends[bi]; bi++) {
        cflash_context* ctx = ops_context(ops_backends[bi], 2);
        cflash_attn_params p;
        cflash_attn_params_init(&p);
        cflash_kvcache_params kp;
        cflash_kvcache_params_init(&kp);
        kvfix f;
        kvfix_init(&f, sn, sn_stride, D);
        kp.k_new = &f.kn.dl, kp.v_new = &f.vn.dl;
        if (seqlens32 >= 0)
            ((int32_t*)f.sl.base)[0] = (int32_t)seqlens32, kp.cache_seqlens = &f.sl.dl;
        else
            kp.cache_seqlen = INT64_MAX - 1;
        uint64_t h = kvfix_hash(&f);
        CHECK_ERR(cflash_attn_kvcache_fwd(ctx, &p, &kp, &f.q.dl, &f.kc.dl, &f.vc.dl, &f.out.dl,
                                          &f.lse.dl),
                  INV, what);
        CHECK_MSG(kvfix_hash(&f) == h, "%s: a rejected call wrote its outputs", ops_backends[bi]);
        kvfix_free(&f);
        cflash_context_free(ctx);
    }
}

/* cache_seqlen (int64) near INT64_MAX: L + Sn wraps. */
static void kv_seqlen_overflow(void) {
    kv_length_wraps(-1, 2, 8, 8, "cache_seqlen");
}

/* cache_seqlens[0] = 100 with a broadcast k_new of INT64_MAX - 50 rows (D = 1, so the element
 * count fits): L + Sn wraps. */
static void kv_seqlens_overflow(void) {
    kv_length_wraps(100, INT64_MAX - 50, 0, 1, "cache_seqlens[0]");
}

/* ---- 3. Rotary offset near INT64_MAX -------------------------------------------------------- */

static void rotary_offset_overflow(void) {
    for (int bi = 0; ops_backends[bi]; bi++) {
        cflash_context* ctx = ops_context(ops_backends[bi], 2);
        tt_tensor x, out, cs, sn;
        alloc4(&x, CF_F32, 1, 4, 2, 8);
        alloc4(&out, CF_F32, 1, 4, 2, 8);
        const int64_t t[2] = {16, 4};
        alloc_n(&cs, CF_F32, 2, t);
        alloc_n(&sn, CF_F32, 2, t);
        tt_random(&x, 1, -1, 1), tt_random(&cs, 2, -1, 1), tt_random(&sn, 3, -1, 1);
        cflash_rotary_params p;
        cflash_rotary_params_init(&p);
        const int64_t offs[3] = {INT64_MAX - 1, INT64_MAX - 3, INT64_MAX};
        for (int i = 0; i < 3; i++) {
            p.seqlen_offset = offs[i];
            uint64_t h = tt_hash(&out) ^ tt_hash(&x);
            CHECK_ERR(cflash_rotary_apply(ctx, &p, &x.dl, &cs.dl, &sn.dl, &out.dl), INV, "cos");
            CHECK_ERR(cflash_rotary_apply(ctx, &p, &x.dl, &cs.dl, &sn.dl, NULL), INV, "cos");
            CHECK_MSG((tt_hash(&out) ^ tt_hash(&x)) == h, "%s: rejected rotary wrote memory",
                      ops_backends[bi]);
        }
        tt_free(&x), tt_free(&out), tt_free(&cs), tt_free(&sn);
        cflash_context_free(ctx);
    }
}

/* ---- 4. Norm rows with negative strides ---------------------------------------------------- */

/* x (2, 3, 8) with the given strides (exact extent): forward and backward equal the same call on
 * a dense copy (flattenable), or INVALID with nothing written (not flattenable). */
static void norm_strides(const int64_t* st, int flattens) {
    const int64_t shape[3] = {2, 3, 8}, w1[1] = {8};
    for (int bi = 0; ops_backends[bi]; bi++) {
        const char* be = ops_backends[bi];
        cflash_context* ctx = ops_context(be, 2);
        tt_tensor x, xd, out, outd, dy, dyd, dx, dxd, w;
        tt_alloc_strided(&x, CF_F32, 3, shape, st);
        tt_alloc_strided(&dy, CF_F32, 3, shape, st);
        tt_alloc_strided(&out, CF_F32, 3, shape, st);
        tt_alloc_strided(&dx, CF_F32, 3, shape, st);
        tt_alloc(&xd, CF_F32, 3, shape, TT_DENSE);
        tt_alloc(&dyd, CF_F32, 3, shape, TT_DENSE);
        tt_alloc(&outd, CF_F32, 3, shape, TT_DENSE);
        tt_alloc(&dxd, CF_F32, 3, shape, TT_DENSE);
        tt_alloc(&w, CF_F32, 1, w1, TT_DENSE);
        tt_random(&xd, 11, -2, 2), tt_random(&dyd, 12, -1, 1), tt_random(&w, 13, 0.5, 1.5);
        for (int64_t n = 0; n < xd.numel; n++)
            tt_set_flat(&x, n, tt_get_flat(&xd, n)), tt_set_flat(&dy, n, tt_get_flat(&dyd, n));
        cflash_norm_params np;
        cflash_norm_params_init(&np);
        np.type = CFLASH_NORM_LAYER;
        uint64_t h = tt_hash(&out) ^ tt_hash(&dx);
        cflash_status sf =
            cflash_norm_fwd(ctx, &np, &x.dl, NULL, &w.dl, NULL, &out.dl, NULL, NULL, NULL);
        cflash_status sb = cflash_norm_bwd(ctx, &np, &dy.dl, &x.dl, &w.dl, NULL, NULL, NULL, NULL,
                                           &dx.dl, NULL, NULL, NULL);
        if (!flattens) {
            CHECK_MSG(sf == INV && strstr(cflash_last_error(), "flatten"),
                      "%s: unflattenable x: %s", be, cflash_last_error());
            CHECK_MSG(sb == INV, "%s: unflattenable x (bwd): %s", be, cflash_status_string(sb));
            CHECK_MSG((tt_hash(&out) ^ tt_hash(&dx)) == h, "%s: rejected norm wrote memory", be);
        } else if (!ops_backend_skips(be, "norm", sf != CFLASH_OK ? sf : sb)) {
            CHECK_MSG(sf == CFLASH_OK && sb == CFLASH_OK, "%s: negative row strides: %s", be,
                      cflash_last_error());
            CHECK_OK(
                cflash_norm_fwd(ctx, &np, &xd.dl, NULL, &w.dl, NULL, &outd.dl, NULL, NULL, NULL));
            CHECK_OK(cflash_norm_bwd(ctx, &np, &dyd.dl, &xd.dl, &w.dl, NULL, NULL, NULL, NULL,
                                     &dxd.dl, NULL, NULL, NULL));
            int same = 1;
            for (int64_t n = 0; n < xd.numel; n++)
                same &= tt_get_flat(&out, n) == tt_get_flat(&outd, n) &&
                        tt_get_flat(&dx, n) == tt_get_flat(&dxd, n);
            CHECK_MSG(same, "%s: norm over negative strides differs from the dense copy", be);
        }
        tt_free(&x), tt_free(&xd), tt_free(&out), tt_free(&outd), tt_free(&dy), tt_free(&dyd);
        tt_free(&dx), tt_free(&dxd), tt_free(&w);
        cflash_context_free(ctx);
    }
}

static void norm_negative_stride(void) {
    const int64_t bad[3] = {24, -8, 1};   /* rows at 0, -8, -16, 24, 16, 8: not one stride */
    const int64_t good[3] = {-24, -8, 1}; /* row r at -8 r: one stride, reversed */
    const int64_t bad2[3] = {-8, 24, 1};  /* rows 0, 24, 48, -8, 16, 40 */
    norm_strides(bad, 0);
    norm_strides(bad2, 0);
    norm_strides(good, 1);
}

/* ---- 5. Windows near INT64_MAX ------------------------------------------------------------ */

static const char* const attn_backends[] = {"cpu-ref", "cpu-generic", "cpu-avx2", "cpu-avx512",
                                            "cpu-amx", "cpu-neon",    "cpu-sve",  NULL};

/* Attention with window sizes beyond any sequence equals the unbounded window (the oracle's). */
static void window_huge(void) {
    const int64_t huge[4][2] = {
        {INT64_MAX, INT64_MAX}, {INT64_MAX - 1, -1}, {-1, INT64_MAX}, {INT64_MAX, 0}};
    for (int bi = 0; attn_backends[bi]; bi++)
        for (int wi = 0; wi < 4; wi++) {
            attn_case c;
            attn_case_init(&c);
            c.B = 2, c.H = 4, c.Hk = 2, c.Sq = 37, c.Sk = 50, c.D = 16, c.Dv = 8;
            c.seed = 40 + (uint64_t)wi;
            c.window_left = huge[wi][0] < 0 ? -1 : huge[wi][0] == INT64_MAX ? 1000 : 999;
            c.window_right = huge[wi][1] < 0 ? -1 : huge[wi][1] == 0 ? 0 : 1000;
            attn_problem* p = attn_problem_new(&c);
            p->params.window_left = huge[wi][0], p->params.window_right = huge[wi][1];
            cflash_context* ctx = ops_context(attn_backends[bi], 2);
            char msg[1024];
            cflash_status s = attn_problem_run_bwd(ctx, p);
            if (!ops_backend_skips(attn_backends[bi], "attn", s)) {
                CHECK_MSG(s == CFLASH_OK, "%s: %s", attn_backends[bi], cflash_last_error());
                CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s window (%lld, %lld): %s",
                          attn_backends[bi], (long long)huge[wi][0], (long long)huge[wi][1], msg);
                CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s window (%lld, %lld): %s",
                          attn_backends[bi], (long long)huge[wi][0], (long long)huge[wi][1], msg);
            }
            cflash_context_free(ctx);
            attn_problem_free(p);
        }
}

/* ---- 11. Block offsets (q_offset / k_offset) with windows near INT64_MAX -------------------- */

/* Offsets move the diagonal by up to 2^32 either way: a window near INT64_MAX added to it (or
 * subtracted) must still mean "unbounded", as the oracle's -1; offsets outside [0, 2^32 - S] are
 * rejected with nothing written. */
static void offsets_huge_windows(void) {
    const int64_t P = INT64_C(1) << 32, Sq = 21, Sk = 34;
    const struct {
        int64_t qo, ko, wl, wr; /* the call's */
        int causal;
    } k[5] = {{P - Sq, 0, INT64_MAX, INT64_MAX, 0},
              {0, P - Sk, INT64_MAX, -1, 0},
              {0, P - Sk, -1, INT64_MAX - 1, 0},
              {P - Sq, 0, INT64_MAX - 1, 0, 1},
              {0, P - Sk, INT64_MAX, 0, 1}};
    for (int bi = 0; attn_backends[bi]; bi++)
        for (int ki = 0; ki < 5; ki++) {
            attn_case c;
            attn_case_init(&c);
            c.B = 2, c.H = 4, c.Hk = 2, c.Sq = Sq, c.Sk = Sk, c.D = 16, c.Dv = 8;
            c.seed = 70 + (uint64_t)ki;
            c.q_offset = k[ki].qo, c.k_offset = k[ki].ko, c.causal = k[ki].causal;
            attn_problem* p = attn_problem_new(&c); /* the oracle's windows: -1 (unbounded) */
            p->params.window_left = k[ki].wl, p->params.window_right = k[ki].wr;
            cflash_context* ctx = ops_context(attn_backends[bi], 2);
            char msg[1024];
            cflash_status s = attn_problem_run_bwd(ctx, p);
            if (!ops_backend_skips(attn_backends[bi], "attn", s)) {
                CHECK_MSG(s == CFLASH_OK, "%s: %s", attn_backends[bi], cflash_last_error());
                CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s case %d: %s",
                          attn_backends[bi], ki, msg);
                CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s case %d: %s",
                          attn_backends[bi], ki, msg);
            }
            cflash_context_free(ctx);
            attn_problem_free(p);
        }
    /* out of range: rejected before anything is written */
    const int64_t bad[5] = {INT64_MAX, INT64_MIN, -1, P - Sq + 1, INT64_MAX - Sq + 1};
    for (int i = 0; i < 10; i++) {
        attn_case c;
        attn_case_init(&c);
        c.B = 1, c.H = 2, c.Hk = 1, c.Sq = Sq, c.Sk = Sq, c.D = 8, c.Dv = 8;
        attn_problem* p = attn_problem_new(&c);
        p->params.window_left = INT64_MAX, p->params.window_right = INT64_MAX - 1;
        if (i < 5)
            p->params.q_offset = bad[i];
        else
            p->params.k_offset = bad[i - 5];
        tt_poison(&p->out), tt_poison(&p->lse);
        const uint64_t h = tt_hash(&p->out) ^ tt_hash(&p->lse);
        cflash_status s =
            cflash_attn_fwd(NULL, &p->params, &p->q.dl, &p->k.dl, &p->v.dl, &p->out.dl, &p->lse.dl);
        CHECK_MSG(s == INV && strstr(cflash_last_error(), i < 5 ? "q_offset" : "k_offset"),
                  "offset %lld: %s", (long long)bad[i % 5], cflash_last_error());
        CHECK_MSG((tt_hash(&p->out) ^ tt_hash(&p->lse)) == h, "rejected offset wrote memory");
        uint8_t m[Sq * Sq];
        int64_t ms[4] = {1, 1, Sq, Sq};
        DLTensor md = {m, {kDLCPU, 0}, 4, {kDLUInt, 8, 1}, ms, NULL, 0};
        memset(m, 0xab, sizeof m);
        CHECK_ERR(cflash_attn_dropout_mask(&p->params, &md), INV, "offset");
        int same = 1;
        for (size_t e = 0; e < sizeof m; e++)
            same &= m[e] == 0xab;
        CHECK_MSG(same, "rejected dropout mask offset wrote memory");
        attn_problem_free(p);
    }
}

/* ---- 6. Empty tensors without data; huge empty dims; misaligned scratch; NaN in exp ---------- */

/* Every op on empty tensors whose data is NULL (valid: nothing to read or write). */
static void empty_null_data(void) {
    for (int bi = 0; ops_backends[bi]; bi++) {
        cflash_context* ctx = ops_context(ops_backends[bi], 2);
        const char* be = ops_backends[bi];
        int64_t q0[4] = {0, 5, 2, 8}, o0[4] = {0, 5, 2, 8}, l0[3] = {0, 2, 5};
        DLTensor q = null_tensor(CF_F32, 4, q0, NULL), o = null_tensor(CF_F32, 4, o0, NULL);
        DLTensor l = null_tensor(CF_F32, 3, l0, NULL);
        cflash_status s = cflash_attn_fwd(ctx, NULL, &q, &q, &q, &o, &l);
        if (!ops_backend_skips(be, "attn", s))
            CHECK_MSG(s == CFLASH_OK, "%s B = 0: %s", be, cflash_last_error());
        s = cflash_attn_bwd(ctx, NULL, &o, &q, &q, &q, &o, &l, &q, &q, &q);
        if (!ops_backend_skips(be, "attn", s))
            CHECK_MSG(s == CFLASH_OK, "%s B = 0 bwd: %s", be, cflash_last_error());

        /* Sq = 0 with keys: q, out, lse, dout, dq NULL; dk, dv come back 0. */
        tt_tensor k, v, dk, dv;
        alloc4(&k, CF_F32, 1, 6, 2, 8), alloc4(&v, CF_F32, 1, 6, 2, 8);
        alloc4(&dk, CF_F32, 1, 6, 2, 8), alloc4(&dv, CF_F32, 1, 6, 2, 8);
        tt_random(&k, 1, -1, 1), tt_random(&v, 2, -1, 1);
        int64_t qs[4] = {1, 0, 2, 8}, ls[3] = {1, 2, 0};
        DLTensor qn = null_tensor(CF_F32, 4, qs, NULL), ln = null_tensor(CF_F32, 3, ls, NULL);
        s = cflash_attn_fwd(ctx, NULL, &qn, &k.dl, &v.dl, &qn, &ln);
        if (!ops_backend_skips(be, "attn", s))
            CHECK_MSG(s == CFLASH_OK, "%s Sq = 0: %s", be, cflash_last_error());
        s = cflash_attn_bwd(ctx, NULL, &qn, &qn, &k.dl, &v.dl, &qn, &ln, &qn, &dk.dl, &dv.dl);
        if (!ops_backend_skips(be, "attn", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s Sq = 0 bwd: %s", be, cflash_last_error());
            int zero = 1;
            for (int64_t n = 0; n < dk.numel; n++)
                zero &= tt_get_flat(&dk, n) == 0.0 && tt_get_flat(&dv, n) == 0.0;
            CHECK_MSG(zero, "%s Sq = 0: dk, dv not zeroed", be);
        }
        /* Sk = 0: k, v NULL; out 0, lse -inf. */
        tt_tensor q1, out1, lse1;
        alloc4(&q1, CF_F32, 1, 3, 2, 8), alloc4(&out1, CF_F32, 1, 3, 2, 8);
        const int64_t l1[3] = {1, 2, 3};
        alloc_n(&lse1, CF_F32, 3, l1);
        tt_random(&q1, 3, -1, 1);
        int64_t ks[4] = {1, 0, 2, 8};
        DLTensor kn = null_tensor(CF_F32, 4, ks, NULL);
        s = cflash_attn_fwd(ctx, NULL, &q1.dl, &kn, &kn, &out1.dl, &lse1.dl);
        if (!ops_backend_skips(be, "attn", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s Sk = 0: %s", be, cflash_last_error());
            int ok = 1;
            for (int64_t n = 0; n < out1.numel; n++)
                ok &= tt_get_flat(&out1, n) == 0.0;
            for (int64_t n = 0; n < lse1.numel; n++)
                ok &= tt_get_flat(&lse1, n) == -INFINITY;
            CHECK_MSG(ok, "%s Sk = 0: out not 0 or lse not -inf", be);
        }
        /* KV cache with B = 0, and with Sq = 0 (q, out NULL). */
        int64_t kq0[4] = {0, 1, 2, 8}, kc0[4] = {0, 4, 1, 8};
        DLTensor kq = null_tensor(CF_F32, 4, kq0, NULL), kcn = null_tensor(CF_F32, 4, kc0, NULL);
        s = cflash_attn_kvcache_fwd(ctx, NULL, NULL, &kq, &kcn, &kcn, &kq, NULL);
        if (!ops_backend_skips(be, "kvcache", s))
            CHECK_MSG(s == CFLASH_OK, "%s kvcache B = 0: %s", be, cflash_last_error());
        int64_t kq1[4] = {1, 0, 2, 8};
        DLTensor kqs = null_tensor(CF_F32, 4, kq1, NULL);
        s = cflash_attn_kvcache_fwd(ctx, NULL, NULL, &kqs, &k.dl, &v.dl, &kqs, NULL);
        if (!ops_backend_skips(be, "kvcache", s))
            CHECK_MSG(s == CFLASH_OK, "%s kvcache Sq = 0: %s", be, cflash_last_error());
        /* Rotary with S = 0; norm with M = 0. */
        int64_t xs[4] = {1, 0, 2, 8}, cs[2] = {4, 4};
        tt_tensor cosv;
        alloc_n(&cosv, CF_F32, 2, cs);
        tt_random(&cosv, 4, -1, 1);
        DLTensor xn = null_tensor(CF_F32, 4, xs, NULL);
        s = cflash_rotary_apply(ctx, NULL, &xn, &cosv.dl, &cosv.dl, &xn);
        if (!ops_backend_skips(be, "rotary", s))
            CHECK_MSG(s == CFLASH_OK, "%s rotary S = 0: %s", be, cflash_last_error());
        int64_t ns[2] = {0, 8};
        DLTensor nx = null_tensor(CF_F32, 2, ns, NULL);
        s = cflash_norm_fwd(ctx, NULL, &nx, NULL, NULL, NULL, &nx, NULL, NULL, NULL);
        if (!ops_backend_skips(be, "norm", s))
            CHECK_MSG(s == CFLASH_OK, "%s norm M = 0: %s", be, cflash_last_error());
        s = cflash_norm_bwd(ctx, NULL, &nx, &nx, NULL, NULL, NULL, NULL, NULL, &nx, NULL, NULL,
                            NULL);
        if (!ops_backend_skips(be, "norm", s))
            CHECK_MSG(s == CFLASH_OK, "%s norm bwd M = 0: %s", be, cflash_last_error());
        /* Merge with Dv = 0 (out_partial and out without data): lse is still computed. */
        int64_t op0[5] = {2, 1, 3, 2, 0}, oo0[4] = {1, 3, 2, 0};
        DLTensor opn = null_tensor(CF_F32, 5, op0, NULL), oon = null_tensor(CF_F32, 4, oo0, NULL);
        tt_tensor lp, lo;
        const int64_t lps[4] = {2, 1, 2, 3}, los[3] = {1, 2, 3};
        alloc_n(&lp, CF_F32, 4, lps), alloc_n(&lo, CF_F32, 3, los);
        tt_random(&lp, 5, -2, 2);
        s = cflash_attn_merge(ctx, &opn, &lp.dl, &oon, &lo.dl);
        if (!ops_backend_skips(be, "merge", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s merge Dv = 0: %s", be, cflash_last_error());
            int ok = 1;
            for (int64_t h = 0; h < 2; h++)
                for (int64_t i = 0; i < 3; i++) {
                    const int64_t a[4] = {0, 0, h, i}, b[4] = {1, 0, h, i}, o3[3] = {0, h, i};
                    double x = tt_get(&lp, a), y = tt_get(&lp, b), m = x > y ? x : y;
                    ok &= fabs(tt_get(&lo, o3) - (m + log(exp(x - m) + exp(y - m)))) < 1e-5;
                }
            CHECK_MSG(ok, "%s merge Dv = 0: wrong lse", be);
        }
        tt_free(&k), tt_free(&v), tt_free(&dk), tt_free(&dv), tt_free(&q1), tt_free(&out1);
        tt_free(&lse1), tt_free(&cosv), tt_free(&lp), tt_free(&lo);
        cflash_context_free(ctx);
    }
}

/* Empty tensors whose other dims multiply past INT64_MAX, strides NULL (dense): nothing to do. */
static void empty_huge_dims(void) {
    int64_t q[4] = {0, INT64_C(1) << 40, INT64_C(1) << 40, 8};
    int64_t l[3] = {0, INT64_C(1) << 40, INT64_C(1) << 40};
    DLTensor tq = null_tensor(CF_F32, 4, q, NULL), tl = null_tensor(CF_F32, 3, l, NULL);
    for (int bi = 0; ops_backends[bi]; bi++) {
        cflash_context* ctx = ops_context(ops_backends[bi], 1);
        CHECK_OK(cflash_attn_fwd(ctx, NULL, &tq, &tq, &tq, &tq, &tl));
        int64_t x[4] = {INT64_C(1) << 62, INT64_C(1) << 62, 0, 8};
        DLTensor tx = null_tensor(CF_F32, 4, x, NULL);
        CHECK_OK(cflash_norm_fwd(ctx, NULL, &tx, NULL, NULL, NULL, &tx, NULL, NULL, NULL));
        DLTensor tr = null_tensor(CF_F32, 4, q, NULL);
        int64_t cs[2] = {4, 4};
        tt_tensor cosv;
        alloc_n(&cosv, CF_F32, 2, cs);
        tt_random(&cosv, 4, -1, 1);
        CHECK_OK(cflash_rotary_apply(ctx, NULL, &tr, &cosv.dl, &cosv.dl, &tr));
        tt_free(&cosv);
        cflash_context_free(ctx);
    }
    /* rotary tables with no element and 2^62 rows (or columns): nothing to compute (the row loop
     * ran 2^62 times, found by the fuzzer; alarm() fails the case) */
    int64_t t0[2] = {INT64_C(1) << 62, 0}, t1[2] = {0, INT64_C(1) << 62};
    DLTensor c0 = null_tensor(CF_F32, 2, t0, NULL), s0 = null_tensor(CF_F32, 2, t0, NULL);
    DLTensor c1 = null_tensor(CF_F32, 2, t1, NULL), s1 = null_tensor(CF_F32, 2, t1, NULL);
    CHECK_OK(cflash_rotary_tables(NULL, &c0, &s0));
    CHECK_OK(cflash_rotary_tables(NULL, &c1, &s1));
}

/* KV cache with D = 33, Dv = 32 (odd scratch sizes: with one row per item, H = Hk = 1 and
 * Sq = 1, the float scratch before any int64 array has an odd length) on every backend, against
 * cpu-ref. */
static void kv_odd_dims_case(int64_t H, int64_t Hk, int64_t Sq) {
    tt_tensor q, kc, vc, ref, out, lse;
    alloc4(&q, CF_F32, 2, Sq, H, 33);
    alloc4(&kc, CF_F32, 2, 40, Hk, 33);
    alloc4(&vc, CF_F32, 2, 40, Hk, 32);
    alloc4(&ref, CF_F32, 2, Sq, H, 32);
    alloc4(&out, CF_F32, 2, Sq, H, 32);
    const int64_t ls[3] = {2, H, Sq};
    alloc_n(&lse, CF_F32, 3, ls);
    tt_random(&q, 1, -1, 1), tt_random(&kc, 2, -1, 1), tt_random(&vc, 3, -1, 1);
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    p.causal = 1;
    cflash_context* rc = ops_context("cpu-ref", 1);
    CHECK_OK(cflash_attn_kvcache_fwd(rc, &p, NULL, &q.dl, &kc.dl, &vc.dl, &ref.dl, NULL));
    cflash_context_free(rc);
    for (int bi = 0; ops_backends[bi]; bi++) {
        cflash_context* ctx = ops_context(ops_backends[bi], 2);
        tt_poison(&out);
        cflash_status s =
            cflash_attn_kvcache_fwd(ctx, &p, NULL, &q.dl, &kc.dl, &vc.dl, &out.dl, &lse.dl);
        if (!ops_backend_skips(ops_backends[bi], "kvcache", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s: %s", ops_backends[bi], cflash_last_error());
            double e = 0;
            for (int64_t n = 0; n < out.numel; n++) {
                double d = fabs(tt_get_flat(&out, n) - tt_get_flat(&ref, n));
                if (!(d <= e)) e = d;
            }
            CHECK_MSG(e < 1e-5, "%s: kvcache D 33 / Dv 32 differs from cpu-ref by %g",
                      ops_backends[bi], e);
        }
        cflash_context_free(ctx);
    }
    tt_free(&q), tt_free(&kc), tt_free(&vc), tt_free(&ref), tt_free(&out), tt_free(&lse);
}

static void kv_odd_dims(void) {
    kv_odd_dims_case(1, 1, 1);
    kv_odd_dims_case(4, 2, 3);
}

/* NaN in q and k of a KV-cache call (the vector exp sees NaN): no undefined behaviour. */
static void kv_nan_exp(void) {
    tt_tensor q, kc, vc, out;
    alloc4(&q, CF_F32, 1, 2, 2, 16);
    alloc4(&kc, CF_F32, 1, 40, 1, 16);
    alloc4(&vc, CF_F32, 1, 40, 1, 16);
    alloc4(&out, CF_F32, 1, 2, 2, 16);
    tt_random(&q, 1, -1, 1), tt_random(&kc, 2, -1, 1), tt_random(&vc, 3, -1, 1);
    const int64_t iq[4] = {0, 0, 0, 3}, ik[4] = {0, 17, 0, 5};
    tt_set(&q, iq, NAN);
    tt_set(&kc, ik, NAN);
    for (int bi = 0; ops_backends[bi]; bi++) {
        cflash_context* ctx = ops_context(ops_backends[bi], 1);
        cflash_status s =
            cflash_attn_kvcache_fwd(ctx, NULL, NULL, &q.dl, &kc.dl, &vc.dl, &out.dl, NULL);
        if (!ops_backend_skips(ops_backends[bi], "kvcache", s)) CHECK_OK(s);
        cflash_context_free(ctx);
    }
    tt_free(&q), tt_free(&kc), tt_free(&vc), tt_free(&out);
}

/* ---- 7. Extents past the address space ---------------------------------------------------- */

static void extent_overflow(void) {
    /* q (2, 4, 2, 8) over a real buffer, with strides or byte_offset that reach past the
     * address space; each is rejected naming q, with out untouched. */
    typedef struct {
        int64_t st[4];
        uint64_t byte_offset;
    } bad_t;
    const bad_t bad[] = {
        {{64, BIG, 8, 1}, 0},                 /* 3 * 2^62 elements */
        {{64, -BIG, 8, 1}, 0},                /* -3 * 2^62 */
        {{BIG, BIG, 8, 1}, 0},                /* 2^62 + 3 * 2^62 */
        {{INT64_C(1) << 61, 16, 8, 1}, 0},    /* 2^61 elements = 2^63 bytes */
        {{-(INT64_C(1) << 60), 16, 8, 1}, 0}, /* below address 0 */
        {{64, 16, 8, 1}, UINT64_MAX - 15},    /* data + byte_offset wraps */
        {{64, 16, 8, 1}, 0},                  /* the extent wraps (offset set below) */
    };
    tt_tensor q, k, v, out, lse;
    alloc4(&q, CF_F32, 2, 4, 2, 8), alloc4(&k, CF_F32, 2, 4, 2, 8), alloc4(&v, CF_F32, 2, 4, 2, 8);
    alloc4(&out, CF_F32, 2, 4, 2, 8);
    const int64_t ls[3] = {2, 2, 4};
    alloc_n(&lse, CF_F32, 3, ls);
    tt_random(&q, 1, -1, 1), tt_random(&k, 2, -1, 1), tt_random(&v, 3, -1, 1);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        DLTensor t = q.dl;
        t.strides = (int64_t*)bad[i].st;
        t.byte_offset = bad[i].byte_offset;
        if (i == sizeof bad / sizeof bad[0] - 1) /* element 0 100 bytes below the top */
            t.byte_offset = UINT64_MAX - (uint64_t)(uintptr_t)q.dl.data - 100;
        uint64_t h = tt_hash(&out) ^ tt_hash(&lse);
        CHECK_ERR(cflash_attn_fwd(NULL, NULL, &t, &k.dl, &v.dl, &out.dl, &lse.dl), INV,
                  "q: the view reaches outside the address space");
        /* the same view as an output */
        CHECK_ERR(cflash_attn_fwd(NULL, NULL, &q.dl, &k.dl, &v.dl, &t, &lse.dl), INV,
                  "out: the view reaches outside the address space");
        CHECK_MSG((tt_hash(&out) ^ tt_hash(&lse)) == h, "case %zu: rejected call wrote memory", i);
    }
    tt_free(&q), tt_free(&k), tt_free(&v), tt_free(&out), tt_free(&lse);
}

/* ---- 8. Found by the fuzzer (tests/fuzz) ------------------------------------------------- */

/* Empty tensors whose other dims are huge: nothing to do, at once (no loop over those dims, no
 * overflow in a derived size). */
static void fuzz_found(void) {
    int64_t m[4] = {INT64_C(1) << 40, INT64_C(1) << 40, 0, 5};
    DLTensor mask = null_tensor(CF_U8, 4, m, NULL);
    mask.dtype.code = kDLUInt, mask.dtype.bits = 8;
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    CHECK_OK(cflash_attn_dropout_mask(&p, &mask));
    /* rotary tables of 0 rows and INT64_MAX columns: rotary_dim = 2 * columns wraps */
    int64_t cs[2] = {0, INT64_MAX};
    DLTensor c0 = null_tensor(CF_F32, 2, cs, NULL);
    CHECK_OK(cflash_rotary_tables(NULL, &c0, &c0));
    /* ... as cos / sin of rotary_apply: rejected (rotary_dim > D), not wrapped */
    tt_tensor x;
    alloc4(&x, CF_F32, 1, 2, 1, 8);
    tt_random(&x, 1, -1, 1);
    CHECK_ERR(cflash_rotary_apply(NULL, NULL, &x.dl, &c0, &c0, NULL), INV, "rotary_dim");
    /* KV cache with B = 2^40 sequences of Sq = 0 queries over a broadcast cache, one length for
     * all: checked once, nothing to do */
    int64_t qs[4] = {INT64_C(1) << 40, 0, 2, 8}, kcs[4] = {INT64_C(1) << 40, 16, 1, 8},
            kst[4] = {0, 8, 8, 1};
    DLTensor q = null_tensor(CF_F32, 4, qs, NULL);
    tt_tensor kc;
    alloc4(&kc, CF_F32, 1, 16, 1, 8);
    tt_random(&kc, 2, -1, 1);
    DLTensor k = kc.dl;
    k.shape = kcs, k.strides = kst;
    cflash_kvcache_params kp;
    cflash_kvcache_params_init(&kp);
    kp.cache_seqlen = 9;
    CHECK_OK(cflash_attn_kvcache_fwd(NULL, NULL, &kp, &q, &k, &k, &q, NULL));
    /* attention with head dim INT64_MAX on empty q and k (D + Dv wrapped in the flop count) */
    int64_t qd[4] = {0, 3, 1, INT64_MAX}, vd[4] = {0, 3, 1, 64};
    int64_t ld[3] = {0, 1, 3};
    DLTensor qh = null_tensor(CF_F32, 4, qd, NULL), vh = null_tensor(CF_F32, 4, vd, NULL);
    DLTensor lh = null_tensor(CF_F32, 3, ld, NULL);
    CHECK_OK(cflash_attn_fwd(NULL, NULL, &qh, &qh, &vh, &vh, NULL));
    CHECK_OK(cflash_attn_bwd(NULL, NULL, &vh, &qh, &qh, &vh, &vh, &lh, &qh, &qh, &vh));
    tt_free(&x), tt_free(&kc);
    /* varlen with max_seqlen_q / _k near INT64_MAX (a valid upper bound): the result of 0 */
    for (int bi = 0; ops_backends[bi]; bi++) {
        attn_case ac;
        attn_case_init(&ac);
        ac.varlen = 1, ac.B = 2, ac.H = 2, ac.Hk = 1, ac.D = 8, ac.Dv = 8, ac.varlen_pass_max = 0;
        ac.seqlens_q[0] = 5, ac.seqlens_q[1] = 3, ac.seqlens_k[0] = 4, ac.seqlens_k[1] = 7;
        attn_problem* ap = attn_problem_new(&ac);
        cflash_context* ctx = ops_context(ops_backends[bi], 2);
        attn_dl t;
        attn_problem_host_dl(ap, &t);
        cflash_status st = cflash_attn_varlen_fwd(ctx, &ap->params, t.q, t.k, t.v, t.cu_q, t.cu_k,
                                                  INT64_MAX - 1, INT64_MAX, t.out, t.lse);
        if (!ops_backend_skips(ops_backends[bi], "attn", st)) {
            char msg[512];
            CHECK_MSG(st == CFLASH_OK, "%s: %s", ops_backends[bi], cflash_last_error());
            CHECK_MSG(attn_problem_check_fwd(ap, msg, sizeof msg), "%s: %s", ops_backends[bi], msg);
        }
        cflash_context_free(ctx);
        attn_problem_free(ap);
    }
}

/* A wild stride on a dim of size 1 (never stepped along; found by the fuzzer: kernels multiplied
 * it by the element size): accepted, and the result that of the dense view. */
static void size1_wild_stride(void) {
    for (int bi = 0; ops_backends[bi]; bi++) {
        attn_case ac;
        attn_case_init(&ac);
        /* varlen, one key in all: k (total_k = 1, Hk = 1, D), both strides wild */
        ac.varlen = 1, ac.B = 1, ac.H = 2, ac.Hk = 1, ac.D = 16, ac.Dv = 8;
        ac.seqlens_q[0] = 5, ac.seqlens_k[0] = 1;
        attn_problem* ap = attn_problem_new(&ac);
        attn_dl t;
        attn_problem_host_dl(ap, &t);
        DLTensor k = *t.k;
        int64_t st[3];
        memcpy(st, ap->k.strides, sizeof st);
        st[0] = INT64_C(-7668058096621991479), st[1] = INT64_MAX;
        k.strides = st;
        t.k = &k;
        cflash_context* ctx = ops_context(ops_backends[bi], 2);
        cflash_status s = attn_problem_call_fwd(ctx, ap, &t);
        if (!ops_backend_skips(ops_backends[bi], "attn", s)) {
            char msg[512];
            CHECK_MSG(s == CFLASH_OK, "%s: %s", ops_backends[bi], cflash_last_error());
            CHECK_MSG(attn_problem_check_fwd(ap, msg, sizeof msg), "%s: %s", ops_backends[bi], msg);
        }
        cflash_context_free(ctx);
        attn_problem_free(ap);
    }
}

/* ---- 10. Outputs whose elements share an address (found by the fuzzer) -------------------- */

/* lse (2, 9, 22) with strides (198, 22, 2): the Sq dim (22 steps of 2) reaches over the next
 * head's row, so elements share addresses; threads wrote them in any order and a rerun gave other
 * bytes. Rejected naming the output, nothing written; a nesting layout (reversed, padded) is
 * still accepted, with the results of the dense call. */
static void output_overlap(void) {
    tt_tensor q, k, v, out, lse, bad, good;
    alloc4(&q, CF_F32, 2, 22, 9, 6), alloc4(&k, CF_F32, 2, 22, 3, 6);
    alloc4(&v, CF_F32, 2, 22, 3, 25), alloc4(&out, CF_F32, 2, 22, 9, 25);
    tt_random(&q, 1, -1, 1), tt_random(&k, 2, -1, 1), tt_random(&v, 3, -1, 1);
    const int64_t ls[3] = {2, 9, 22}, bad_st[3] = {198, 22, 2}, good_st[3] = {-(9 * 23), 23, 1};
    alloc_n(&lse, CF_F32, 3, ls);
    tt_alloc_strided(&bad, CF_F32, 3, ls, bad_st);
    tt_alloc_strided(&good, CF_F32, 3, ls, good_st);
    for (int bi = 0; attn_backends[bi]; bi++) {
        cflash_context* ctx = ops_context(attn_backends[bi], 2);
        uint64_t h = tt_hash(&out) ^ tt_hash(&bad);
        CHECK_ERR(cflash_attn_fwd(ctx, NULL, &q.dl, &k.dl, &v.dl, &out.dl, &bad.dl), INV,
                  "lse: elements share an address");
        CHECK_MSG((tt_hash(&out) ^ tt_hash(&bad)) == h, "%s: rejected call wrote memory",
                  attn_backends[bi]);
        /* the same overlap in out: dim 1 (Sq, stride 25) inside the reach of H x Dv */
        DLTensor o = out.dl;
        const int64_t ost[4] = {22 * 9 * 25, 25, 25, 1};
        o.strides = (int64_t*)ost;
        CHECK_ERR(cflash_attn_fwd(ctx, NULL, &q.dl, &k.dl, &v.dl, &o, NULL), INV,
                  "out: elements share an address");
        cflash_status s = cflash_attn_fwd(ctx, NULL, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl);
        if (!ops_backend_skips(attn_backends[bi], "attn", s)) {
            CHECK_OK(s);
            CHECK_OK(cflash_attn_fwd(ctx, NULL, &q.dl, &k.dl, &v.dl, &out.dl, &good.dl));
            int same = 1;
            for (int64_t i = 0; i < 2 * 9 * 22; i++) {
                const int64_t b = i / 198, hh = i / 22 % 9, sq = i % 22;
                const float* g = (const float*)((char*)good.dl.data + good.dl.byte_offset);
                same &= ((const float*)lse.dl.data)[i] == g[b * good_st[0] + hh * 23 + sq];
            }
            CHECK_MSG(same, "%s: lse in a reversed, padded view differs", attn_backends[bi]);
        }
        cflash_context_free(ctx);
    }
    /* the other ops' outputs go through the same check */
    int64_t xs[4] = {1, 4, 2, 8}, xst[4] = {64, 8, 8, 1};
    tt_tensor x, cs, sn;
    alloc_n(&x, CF_F32, 4, xs);
    const int64_t t[2] = {16, 4};
    alloc_n(&cs, CF_F32, 2, t), alloc_n(&sn, CF_F32, 2, t);
    tt_random(&x, 4, -1, 1), tt_random(&cs, 5, -1, 1), tt_random(&sn, 6, -1, 1);
    tt_tensor ro;
    tt_alloc_strided(&ro, CF_F32, 4, xs, xst);
    CHECK_ERR(cflash_rotary_apply(NULL, NULL, &x.dl, &cs.dl, &sn.dl, &ro.dl), INV,
              "out: elements share an address");
    /* norm rows (4, 8) written 4 elements apart */
    const int64_t ns[2] = {4, 8}, nst[2] = {4, 1};
    tt_tensor nx, no;
    alloc_n(&nx, CF_F32, 2, ns);
    tt_random(&nx, 7, -1, 1);
    tt_alloc_strided(&no, CF_F32, 2, ns, nst);
    cflash_norm_params np;
    cflash_norm_params_init(&np);
    CHECK_ERR(cflash_norm_fwd(NULL, &np, &nx.dl, NULL, NULL, NULL, &no.dl, NULL, NULL, NULL), INV,
              "out: elements share an address");
    tt_free(&x), tt_free(&cs), tt_free(&sn), tt_free(&ro), tt_free(&nx), tt_free(&no);
    tt_free(&q), tt_free(&k), tt_free(&v), tt_free(&out), tt_free(&lse), tt_free(&bad);
    tt_free(&good);
}

/* ---- 12. Outputs sharing memory with inputs or with each other --------------------------- */

/* cf_check_apart against brute force: random views (1-3 dims, sizes 1-5, strides -40..40 elements,
 * 1-, 2- and 4-byte elements) at random places in a 4 KiB arena; the verdict must be the bytes'. */
static void apart_brute(void) {
    static unsigned char arena[4096];
    uint64_t r = 12345;
#define RND(n) (r = r * 6364136223846793005ull + 1442695040888963407ull, (int64_t)((r >> 33) % (n)))
    int agree = 1, overlaps = 0, checked = 0;
    for (int it = 0; it < 20000; it++) {
        cf_view v[2];
        unsigned char mark[4096] = {0};
        int ok = 1;
        for (int w = 0; w < 2; w++) {
            memset(&v[w], 0, sizeof v[w]);
            const cf_dtype dts[3] = {CF_U8, CF_BF16, CF_F32};
            v[w].dtype = dts[RND(3)];
            v[w].ndim = 1 + (int)RND(3);
            int64_t lo = 0, hi = 0;
            for (int i = 0; i < v[w].ndim; i++) {
                v[w].shape[i] = 1 + RND(5);
                v[w].stride[i] = v[w].shape[i] > 1 ? RND(81) - 40 : 0;
                const int64_t reach = v[w].stride[i] * (v[w].shape[i] - 1);
                if (reach < 0)
                    lo += reach;
                else
                    hi += reach;
            }
            const int64_t es = (int64_t)cf_dtype_size(v[w].dtype), span = (hi - lo + 1) * es;
            if (span > 2048) ok = 0;
            const int64_t start = 1024 + RND(1024) - lo * es; /* the first element's byte */
            v[w].data = arena + start;
            v[w].device_type = kDLCPU;
        }
        if (!ok) continue;
        int hit = 0;
        for (int w = 0; w < 2; w++) { /* every byte of every element */
            const int64_t es = (int64_t)cf_dtype_size(v[w].dtype);
            int64_t idx[3] = {0, 0, 0};
            for (;;) {
                int64_t off = 0;
                for (int i = 0; i < v[w].ndim; i++)
                    off += idx[i] * v[w].stride[i];
                for (int64_t e = 0; e < es; e++) {
                    const int64_t at = (unsigned char*)v[w].data - arena + off * es + e;
                    if (w == 0)
                        mark[at] = 1;
                    else
                        hit |= mark[at];
                }
                int i = v[w].ndim - 1;
                while (i >= 0 && ++idx[i] == v[w].shape[i])
                    idx[i--] = 0;
                if (i < 0) break;
            }
        }
        const int apart = cf_check_apart(&v[0], "a", &v[1], "b") == CFLASH_OK;
        agree &= apart == !hit;
        overlaps += hit, checked++;
    }
#undef RND
    CHECK_MSG(agree, "cf_check_apart disagrees with the bytes");
    CHECK_MSG(checked > 10000 && overlaps > 1000 && checked - overlaps > 1000,
              "%d pairs, %d overlapping: both kinds expected", checked, overlaps);
}

/* cflash.h: out and lse "must not overlap the inputs"; a gradient must not share memory with
 * what the backward reads; rotary's out "must not partly overlap x". Each is refused naming both
 * tensors, nothing written; the packed layouts (dq, dk, dv as views of one (B, S, 3, H, D) or
 * (B, S, H + 2 Hk, D) gradient, as flash_attn_qkvpacked_func's backward writes them) pass. */
static void inputs_outputs_apart(void) {
    const int64_t B = 2, S = 9, H = 4, Hk = 2, D = 8;
    tt_tensor q, k, v, out, lse, dout, dq, dk, dv, pk;
    alloc4(&q, CF_F32, B, S, H, D), alloc4(&k, CF_F32, B, S, Hk, D),
        alloc4(&v, CF_F32, B, S, Hk, D);
    alloc4(&out, CF_F32, B, S, H, D), alloc4(&dout, CF_F32, B, S, H, D);
    alloc4(&dq, CF_F32, B, S, H, D), alloc4(&dk, CF_F32, B, S, Hk, D),
        alloc4(&dv, CF_F32, B, S, Hk, D);
    const int64_t ls[3] = {B, H, S};
    alloc_n(&lse, CF_F32, 3, ls);
    tt_random(&q, 1, -1, 1), tt_random(&k, 2, -1, 1), tt_random(&v, 3, -1, 1);
    tt_random(&dout, 4, -1, 1);
    CHECK_OK(cflash_attn_fwd(NULL, NULL, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl));
    uint64_t h = tt_hash(&q) ^ tt_hash(&out) ^ tt_hash(&lse);
    /* forward: out is q; lse inside out's memory */
    CHECK_ERR(cflash_attn_fwd(NULL, NULL, &q.dl, &k.dl, &v.dl, &q.dl, &lse.dl), INV,
              "out: shares memory with q");
    DLTensor lo = tt_view(&out, 3, ls, NULL, 5);
    CHECK_ERR(cflash_attn_fwd(NULL, NULL, &q.dl, &k.dl, &v.dl, &out.dl, &lo), INV,
              "lse: shares memory with out");
    CHECK_MSG((tt_hash(&q) ^ tt_hash(&out) ^ tt_hash(&lse)) == h,
              "a rejected forward wrote memory");
    /* backward: dq is dout; dv one element into dk; dk is v */
    CHECK_ERR(cflash_attn_bwd(NULL, NULL, &dout.dl, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl, &dout.dl,
                              &dk.dl, &dv.dl),
              INV, "dq: shares memory with dout");
    const int64_t kvs[4] = {B, S, Hk, D};
    tt_tensor big; /* dk's memory and one element more, for dv one element in */
    const int64_t bs[1] = {B * S * Hk * D + 1};
    alloc_n(&big, CF_F32, 1, bs);
    DLTensor dk0 = tt_view(&big, 4, kvs, NULL, 0), dv0 = tt_view(&big, 4, kvs, NULL, 1);
    CHECK_ERR(cflash_attn_bwd(NULL, NULL, &dout.dl, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl, &dq.dl,
                              &dk0, &dv0),
              INV, "dv: shares memory with dk");
    CHECK_ERR(cflash_attn_bwd(NULL, NULL, &dout.dl, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl, &dq.dl,
                              &v.dl, &dv.dl),
              INV, "dk: shares memory with v");
    /* the packed gradients pass, with the results of separate ones: (B, S, H + 2 Hk, D) (GQA) */
    CHECK_OK(cflash_attn_bwd(NULL, NULL, &dout.dl, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl, &dq.dl,
                             &dk.dl, &dv.dl));
    const int64_t ps[4] = {B, S, H + 2 * Hk, D};
    alloc_n(&pk, CF_F32, 4, ps);
    const int64_t qs[4] = {B, S, H, D}, pst[4] = {S * (H + 2 * Hk) * D, (H + 2 * Hk) * D, D, 1};
    DLTensor pq = tt_view(&pk, 4, qs, pst, 0), pkk = tt_view(&pk, 4, kvs, pst, H * D),
             pv = tt_view(&pk, 4, kvs, pst, (H + Hk) * D);
    CHECK_OK(cflash_attn_bwd(NULL, NULL, &dout.dl, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl, &pq, &pkk,
                             &pv));
    int same = 1;
    const float* pf = pk.dl.data;
    for (int64_t i = 0; i < B * S * (H + 2 * Hk) * D; i++) {
        const int64_t d = i % D, hh = i / D % (H + 2 * Hk), t = i / (D * (H + 2 * Hk));
        const float want = hh < H        ? ((float*)dq.dl.data)[(t * H + hh) * D + d]
                           : hh < H + Hk ? ((float*)dk.dl.data)[(t * Hk + hh - H) * D + d]
                                         : ((float*)dv.dl.data)[(t * Hk + hh - H - Hk) * D + d];
        same &= pf[i] == want;
    }
    CHECK_MSG(same, "packed dq, dk, dv differ from separate ones");
    /* KV cache: out is q; k_new inside k_cache */
    const int64_t cs[4] = {B, 16, Hk, D}, ns[4] = {B, 1, Hk, D}, q1[4] = {B, 1, H, D};
    tt_tensor kc, vc, o1, qq;
    alloc_n(&kc, CF_F32, 4, cs), alloc_n(&vc, CF_F32, 4, cs), alloc_n(&o1, CF_F32, 4, q1);
    alloc_n(&qq, CF_F32, 4, q1);
    tt_random(&kc, 5, -1, 1), tt_random(&vc, 6, -1, 1), tt_random(&qq, 7, -1, 1);
    cflash_kvcache_params kp;
    cflash_kvcache_params_init(&kp);
    int32_t lens[2] = {4, 7};
    const int64_t lsh[1] = {B};
    DLTensor tl = {lens, {kDLCPU, 0}, 1, {kDLInt, 32, 1}, (int64_t*)lsh, NULL, 0};
    kp.cache_seqlens = &tl;
    h = tt_hash(&kc) ^ tt_hash(&vc) ^ tt_hash(&qq);
    CHECK_ERR(cflash_attn_kvcache_fwd(NULL, NULL, &kp, &qq.dl, &kc.dl, &vc.dl, &qq.dl, NULL), INV,
              "out: shares memory with q");
    DLTensor kn = tt_view(&kc, 4, ns, kc.dl.strides, 3 * Hk * D);
    tt_tensor vn2;
    alloc_n(&vn2, CF_F32, 4, ns);
    kp.k_new = &kn, kp.v_new = &vn2.dl;
    CHECK_ERR(cflash_attn_kvcache_fwd(NULL, NULL, &kp, &qq.dl, &kc.dl, &vc.dl, &o1.dl, NULL), INV,
              "k_cache: shares memory with k_new");
    CHECK_MSG((tt_hash(&kc) ^ tt_hash(&vc) ^ tt_hash(&qq)) == h, "a rejected KV call wrote memory");
    /* rotary out of place: out one row past x in one buffer (a partial overlap) */
    const int64_t xs[4] = {1, 4, 2, 8}, rs[1] = {1 * 5 * 2 * 8}, t2[2] = {16, 4};
    tt_tensor xb, cs2, sn2;
    alloc_n(&xb, CF_F32, 1, rs), alloc_n(&cs2, CF_F32, 2, t2), alloc_n(&sn2, CF_F32, 2, t2);
    tt_random(&xb, 8, -1, 1), tt_random(&cs2, 9, -1, 1), tt_random(&sn2, 10, -1, 1);
    DLTensor x = tt_view(&xb, 4, xs, NULL, 0), xo = tt_view(&xb, 4, xs, NULL, 2 * 8);
    h = tt_hash(&xb);
    CHECK_ERR(cflash_rotary_apply(NULL, NULL, &x, &cs2.dl, &sn2.dl, &xo), INV,
              "out: shares memory with x");
    CHECK_MSG(tt_hash(&xb) == h, "a rejected rotary wrote memory");
    CHECK_OK(cflash_rotary_apply(NULL, NULL, &x, &cs2.dl, &sn2.dl, &x)); /* in place */
    tt_free(&xb), tt_free(&cs2), tt_free(&sn2), tt_free(&kc), tt_free(&vc), tt_free(&o1);
    tt_free(&qq), tt_free(&vn2), tt_free(&big), tt_free(&pk);
    tt_free(&q), tt_free(&k), tt_free(&v), tt_free(&out), tt_free(&lse), tt_free(&dout);
    tt_free(&dq), tt_free(&dk), tt_free(&dv);
}

int main(void) {
    isolated("1 kvcache Sq = 0, num_splits = 0", kv_sq0);
    isolated("2a kvcache cache_seqlen near INT64_MAX + new rows", kv_seqlen_overflow);
    isolated("2b kvcache cache_seqlens + INT64_MAX - 50 new rows", kv_seqlens_overflow);
    isolated("3 rotary seqlen_offset near INT64_MAX", rotary_offset_overflow);
    isolated("4 norm with negative leading strides", norm_negative_stride);
    isolated("5 windows near INT64_MAX", window_huge);
    isolated("6a empty tensors with data NULL", empty_null_data);
    isolated("6b empty tensors with huge dims", empty_huge_dims);
    isolated("6c kvcache D 33 / Dv 32 scratch", kv_odd_dims);
    isolated("6d kvcache exp over NaN", kv_nan_exp);
    isolated("7 extents past the address space", extent_overflow);
    isolated("8 empty tensors with huge dims (found by the fuzzer)", fuzz_found);
    isolated("9 a wild stride on a dim of size 1 (found by the fuzzer)", size1_wild_stride);
    isolated("10 outputs whose elements share an address (found by the fuzzer)", output_overlap);
    isolated("11 q_offset / k_offset with windows near INT64_MAX", offsets_huge_windows);
    isolated("12 outputs sharing memory with inputs or each other", inputs_outputs_apart);
    isolated("12b the overlap test against brute force", apart_brute);
    return tt_summary();
}
