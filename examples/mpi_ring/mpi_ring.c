/* Ring attention over MPI with cflash, for C users: each rank holds its slice of the sequence,
 * passes its K/V block around the ring with MPI_Sendrecv, attends its queries to each block at the
 * block's global positions (cflash_attn_params q_offset / k_offset) and merges the partial results
 * by their LSE (cflash_attn_merge). Rank 0 then checks the gathered output against cflash on the
 * whole sequence in one process. The Python package does the same, with the backward, on
 * torch.distributed (cflash.distributed).
 *
 *   mpiexec -n 4 ./mpi_ring [--batch 2] [--seqlen 120] [--heads 4] [--heads-kv 2] [--head-dim 32]
 *                           [--causal] [--window L,R] [--alibi]
 * Exit status 0 when the ring matches the single-process call, 1 otherwise, 2 on bad usage. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cflash.h"

typedef struct problem {
    int64_t B, S, H, Hk, D; /* S: the whole sequence; each of P ranks holds S / P rows */
    int causal, alibi;
    int64_t wl, wr;
} problem;

static const DLDataType f32 = {kDLFloat, 32, 1};

static DLTensor tensor(void* data, int ndim, int64_t* shape) {
    DLTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.device.device_type = kDLCPU;
    t.ndim = ndim;
    t.dtype = f32;
    t.shape = shape; /* strides NULL: compact row-major */
    return t;
}

/* Input value of element (b, s, h, d) of tensor `which`: a hash of the global index, so every
 * rank makes its slice of the same whole tensors without communication. */
static float input(int which, int64_t b, int64_t s, int64_t h, int64_t d) {
    uint64_t x = ((((uint64_t)which * 1000003u + (uint64_t)b) * 1000003u + (uint64_t)s) * 1000003u +
                  (uint64_t)h) *
                     1000003u +
                 (uint64_t)d;
    x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33, x *= 0xc4ceb9fe1a85ec53ull,
        x ^= x >> 33;
    return (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Rows [s0, s0 + n) of input `which`, (B, n, heads, D). */
static float* make(const problem* p, int which, int64_t s0, int64_t n, int64_t heads) {
    float* x = malloc(sizeof(float) * (size_t)(p->B * n * heads * p->D));
    if (!x) return NULL;
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t s = 0; s < n; s++)
            for (int64_t h = 0; h < heads; h++)
                for (int64_t d = 0; d < p->D; d++)
                    x[((b * n + s) * heads + h) * p->D + d] = input(which, b, s0 + s, h, d);
    return x;
}

static void params(const problem* p, cflash_attn_params* a, const DLTensor* slopes) {
    cflash_attn_params_init(a);
    a->causal = p->causal;
    a->window_left = p->wl;
    a->window_right = p->wr;
    a->alibi_slopes = slopes;
}

/* Some query of rows [qpos, qpos + n) sees some key of [kpos, kpos + n) (equal blocks). */
static int block_visible(const problem* p, int64_t qpos, int64_t kpos, int64_t n) {
    int64_t lo = kpos - (qpos + n - 1), hi = kpos + n - 1 - qpos; /* key - query position */
    int64_t wr = p->causal ? 0 : p->wr;
    if (p->wl >= 0 && lo < -p->wl) lo = -p->wl;
    if (wr >= 0 && hi > wr) hi = wr;
    return lo <= hi;
}

#define CHECK_CF(call)                                                                             \
    do {                                                                                           \
        cflash_status st_ = (call);                                                                \
        if (st_ != CFLASH_OK) {                                                                    \
            fprintf(stderr, "rank %d: %s: %s\n", rank, #call, cflash_last_error());                \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                          \
        }                                                                                          \
    } while (0)

/* ---- The ring ---------------------------------------------------------------------------------
 * Step t: this rank holds the K/V block of rank src = rank - t; it attends its queries to that
 * block (skipped when every key is masked), merges into the running result, and passes the block
 * on to rank + 1 while receiving the next from rank - 1. */
static void ring_forward(const problem* p, cflash_context* ctx, int rank, int P, const float* q,
                         const float* k, const float* v, const DLTensor* slopes, float* out,
                         float* lse) {
    const int64_t n = p->S / P, B = p->B, H = p->H, Hk = p->Hk, D = p->D;
    const size_t nq = (size_t)(B * n * H * D), nk = (size_t)(B * n * Hk * D),
                 nl = (size_t)(B * H * n);
    float* cur = malloc(sizeof(float) * 2 * nk);   /* the K/V block held now: k then v */
    float* nxt = malloc(sizeof(float) * 2 * nk);   /* the one arriving */
    float* parts = malloc(sizeof(float) * 2 * nq); /* [0] the running result, [1] this block's */
    float* lparts = malloc(sizeof(float) * 2 * nl);
    float* mo = malloc(sizeof(float) * nq); /* merge output */
    float* ml = malloc(sizeof(float) * nl);
    if (!cur || !nxt || !parts || !lparts || !mo || !ml) {
        fprintf(stderr, "rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    memcpy(cur, k, sizeof(float) * nk);
    memcpy(cur + nk, v, sizeof(float) * nk);
    for (size_t i = 0; i < nq; i++)
        parts[i] = 0.0f;
    for (size_t i = 0; i < nl; i++)
        lparts[i] = -INFINITY; /* nothing seen yet: merges as an empty part */

    int64_t sq[4] = {B, n, H, D}, sk[4] = {B, n, Hk, D}, sl[3] = {B, H, n};
    int64_t sp[5] = {2, B, n, H, D}, slp[4] = {2, B, H, n};
    DLTensor tq = tensor((void*)q, 4, sq), tpo = tensor(parts + nq, 4, sq);
    DLTensor tpl = tensor(lparts + nl, 3, sl), tparts = tensor(parts, 5, sp);
    DLTensor tlparts = tensor(lparts, 4, slp), tmo = tensor(mo, 4, sq), tml = tensor(ml, 3, sl);
    const int next = (rank + 1) % P, prev = (rank + P - 1) % P;
    for (int t = 0; t < P; t++) {
        const int src = (rank - t + P) % P;
        if (block_visible(p, rank * n, src * n, n)) {
            DLTensor tk = tensor(cur, 4, sk), tv = tensor(cur + nk, 4, sk);
            cflash_attn_params a;
            params(p, &a, slopes);
            a.q_offset = rank * n; /* global positions of this block's first query and key */
            a.k_offset = src * n;
            CHECK_CF(cflash_attn_fwd(ctx, &a, &tq, &tk, &tv, &tpo, &tpl));
            CHECK_CF(cflash_attn_merge(ctx, &tparts, &tlparts, &tmo, &tml));
            memcpy(parts, mo, sizeof(float) * nq);
            memcpy(lparts, ml, sizeof(float) * nl);
        }
        if (t < P - 1) {
            MPI_Sendrecv(cur, (int)(2 * nk), MPI_FLOAT, next, t, nxt, (int)(2 * nk), MPI_FLOAT,
                         prev, t, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            float* s = cur;
            cur = nxt, nxt = s;
        }
    }
    memcpy(out, parts, sizeof(float) * nq);
    memcpy(lse, lparts, sizeof(float) * nl);
    free(cur), free(nxt), free(parts), free(lparts), free(mo), free(ml);
}

/* ---- Usage and the check -----------------------------------------------------------------------
 */

static int parse(int argc, char** argv, problem* p) {
    p->B = 2, p->S = 120, p->H = 4, p->Hk = 2, p->D = 32, p->causal = 0, p->alibi = 0;
    p->wl = p->wr = -1;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        const char* val = i + 1 < argc ? argv[i + 1] : NULL;
        long long x = 0, y = 0;
        if (!strcmp(a, "--causal")) {
            p->causal = 1;
        } else if (!strcmp(a, "--alibi")) {
            p->alibi = 1;
        } else if (!strcmp(a, "--window") && val && sscanf(val, "%lld,%lld", &x, &y) == 2) {
            p->wl = x, p->wr = y, i++;
        } else if (val && sscanf(val, "%lld", &x) == 1 && x > 0 &&
                   (!strcmp(a, "--batch") || !strcmp(a, "--seqlen") || !strcmp(a, "--heads") ||
                    !strcmp(a, "--heads-kv") || !strcmp(a, "--head-dim"))) {
            int64_t* f = !strcmp(a, "--batch")      ? &p->B
                         : !strcmp(a, "--seqlen")   ? &p->S
                         : !strcmp(a, "--heads")    ? &p->H
                         : !strcmp(a, "--heads-kv") ? &p->Hk
                                                    : &p->D;
            *f = x, i++;
        } else {
            return -1;
        }
    }
    return 0;
}

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, P = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    problem p;
    if (parse(argc, argv, &p) || p.S % P || p.H % p.Hk) {
        if (rank == 0)
            fprintf(stderr,
                    "usage: mpiexec -n P %s [--batch B] [--seqlen S] [--heads H] [--heads-kv Hk] "
                    "[--head-dim D] [--causal] [--window L,R] [--alibi]\n"
                    "  S must be a multiple of P and H of Hk (defaults: 2, 120, 4, 2, 32)\n",
                    argv[0]);
        MPI_Finalize();
        return 2;
    }
    cflash_context* ctx = NULL;
    if (cflash_context_create(&ctx) != CFLASH_OK ||
        cflash_context_set_threads(ctx, 1) != CFLASH_OK) {
        fprintf(stderr, "rank %d: cflash context: %s\n", rank, cflash_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const int64_t n = p.S / P, B = p.B, H = p.H, D = p.D;
    float slope_v[64];
    int64_t shape_h[1] = {H};
    DLTensor slopes = tensor(slope_v, 1, shape_h);
    for (int64_t h = 0; h < H && h < 64; h++)
        slope_v[h] = powf(2.0f, -8.0f * (float)(h + 1) / (float)H);
    if (p.alibi && H > 64) p.alibi = 0;
    const DLTensor* sl = p.alibi ? &slopes : NULL;

    float *q = make(&p, 0, rank * n, n, H), *k = make(&p, 1, rank * n, n, p.Hk);
    float* v = make(&p, 2, rank * n, n, p.Hk);
    float* out = malloc(sizeof(float) * (size_t)(B * n * H * D));
    float* lse = malloc(sizeof(float) * (size_t)(B * H * n));
    if (!q || !k || !v || !out || !lse) {
        fprintf(stderr, "rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    ring_forward(&p, ctx, rank, P, q, k, v, sl, out, lse);

    /* Rank 0: gather every rank's rows and compare with one call on the whole sequence. */
    const int cnt = (int)(B * n * H * D), lcnt = (int)(B * H * n);
    float* all = rank == 0 ? malloc(sizeof(float) * (size_t)cnt * (size_t)P) : NULL;
    float* lall = rank == 0 ? malloc(sizeof(float) * (size_t)lcnt * (size_t)P) : NULL;
    MPI_Gather(out, cnt, MPI_FLOAT, all, cnt, MPI_FLOAT, 0, MPI_COMM_WORLD);
    MPI_Gather(lse, lcnt, MPI_FLOAT, lall, lcnt, MPI_FLOAT, 0, MPI_COMM_WORLD);
    int ok = 1;
    if (rank == 0) {
        float *Q = make(&p, 0, 0, p.S, H), *K = make(&p, 1, 0, p.S, p.Hk),
              *V = make(&p, 2, 0, p.S, p.Hk);
        float* O = malloc(sizeof(float) * (size_t)(B * p.S * H * D));
        float* L = malloc(sizeof(float) * (size_t)(B * H * p.S));
        if (!Q || !K || !V || !O || !L || !all || !lall) {
            fprintf(stderr, "rank 0: out of memory\n");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        int64_t sq[4] = {B, p.S, H, D}, sk[4] = {B, p.S, p.Hk, D}, sl3[3] = {B, H, p.S};
        DLTensor tq = tensor(Q, 4, sq), tk = tensor(K, 4, sk), tv = tensor(V, 4, sk);
        DLTensor to = tensor(O, 4, sq), tl = tensor(L, 3, sl3);
        cflash_attn_params a;
        params(&p, &a, sl);
        CHECK_CF(cflash_attn_fwd(ctx, &a, &tq, &tk, &tv, &to, &tl));
        /* The two are fp32 computations of the same sums in other orders, plus the merge's
         * rounding: a few fp32 units of the largest magnitude. */
        double err = 0, lerr = 0, big = 1, lbig = 1;
        for (int r = 0; r < P; r++)
            for (int64_t b = 0; b < B; b++)
                for (int64_t s = 0; s < n; s++)
                    for (int64_t hd = 0; hd < H * D; hd++) {
                        double x =
                            all[(size_t)r * (size_t)cnt + (size_t)((b * n + s) * H * D + hd)];
                        double y = O[(b * p.S + r * n + s) * H * D + hd];
                        err = fmax(err, fabs(x - y)), big = fmax(big, fabs(y));
                    }
        for (int r = 0; r < P; r++)
            for (int64_t b = 0; b < B; b++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t s = 0; s < n; s++) {
                        double x = lall[(size_t)r * (size_t)lcnt + (size_t)((b * H + h) * n + s)];
                        double y = L[(b * H + h) * p.S + r * n + s];
                        if (isinf(x) && x == y) continue; /* a row that sees no key, in both */
                        lerr = fmax(lerr, fabs(x - y)), lbig = fmax(lbig, fabs(y));
                    }
        const double tol = 64 * 0x1p-24 * big, ltol = 64 * 0x1p-24 * lbig;
        ok = err <= tol && lerr <= ltol;
        printf(
            "mpi_ring: %d ranks, B %lld S %lld H %lld/%lld D %lld%s%s%s: max |ring - single| out "
            "%.3g, lse %.3g (tolerances %.3g, %.3g): %s\n",
            P, (long long)B, (long long)p.S, (long long)H, (long long)p.Hk, (long long)D,
            p.causal ? " causal" : "", p.wl >= 0 || p.wr >= 0 ? " window" : "",
            p.alibi ? " alibi" : "", err, lerr, tol, ltol, ok ? "OK" : "FAILED");
        free(Q), free(K), free(V), free(O), free(L);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    free(q), free(k), free(v), free(out), free(lse), free(all), free(lall);
    cflash_context_free(ctx);
    MPI_Finalize();
    return ok ? 0 : 1;
}
