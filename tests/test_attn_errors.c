/* Every error path of the attention entry points (src/core/attn_api.c, tensor views, dispatch) and
 * of the context: each bad argument returns its status with a message naming the argument, and
 * leaves every output byte untouched. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"

#define INV CFLASH_ERR_INVALID_ARGUMENT
#define UNS CFLASH_ERR_UNSUPPORTED

/* ---- Fixture: valid batch and varlen arguments; each test edits a copy ---------------------- */

typedef struct arg {
    DLTensor t;
    int64_t shape[TT_MAX_DIMS], strides[TT_MAX_DIMS];
} arg;

enum { Q, K, V, OUT, LSE, DOUT, DQ, DK, DV, ALIBI, CUQ, CUK, NT };
static const char* const tnames[NT] = {"q",  "k",  "v",  "out",   "lse",  "dout",
                                       "dq", "dk", "dv", "alibi", "cu_q", "cu_k"};

typedef struct args {
    arg a[NT];
    DLTensor* t[NT]; /* what is passed: &a[i].t, or NULL */
    cflash_attn_params p;
    int varlen;
    int64_t max_q, max_k;
} args;

static tt_tensor batch[NT], var[NT];
static int32_t cu_q_vals[4] = {0, 5, 5, 11}, cu_k_vals[4] = {0, 7, 9, 9};

static void setup(void) {
    /* batch: B 2, Sq 5, Sk 7, H 4, Hk 2, D 8, Dv 6, fp32, padded strides */
    int64_t q[4] = {2, 5, 4, 8}, k[4] = {2, 7, 2, 8}, v[4] = {2, 7, 2, 6}, o[4] = {2, 5, 4, 6};
    int64_t l[3] = {2, 4, 5}, al[1] = {4}, cu[1] = {4};
    const int64_t* shapes[NT] = {q, k, v, o, l, o, q, k, v, al, cu, cu};
    int nd[NT] = {4, 4, 4, 4, 3, 4, 4, 4, 4, 1, 1, 1};
    for (int i = 0; i < NT; i++) {
        cf_dtype dt = i == LSE || i == ALIBI ? CF_F32 : i >= CUQ ? CF_I32 : CF_F32;
        tt_alloc(&batch[i], dt, nd[i], shapes[i], i >= ALIBI ? TT_DENSE : TT_PADDED);
        tt_random(&batch[i], 100 + (uint64_t)i, 0.1, 1.0);
    }
    /* varlen: 3 sequences, q lengths 5, 0, 6 (total 11), k lengths 7, 2, 0 (total 9) */
    int64_t vq[3] = {11, 4, 8}, vk[3] = {9, 2, 8}, vv[3] = {9, 2, 6}, vo[3] = {11, 4, 6};
    int64_t vl[2] = {4, 11};
    const int64_t* vshapes[NT] = {vq, vk, vv, vo, vl, vo, vq, vk, vv, al, cu, cu};
    int vnd[NT] = {3, 3, 3, 3, 2, 3, 3, 3, 3, 1, 1, 1};
    for (int i = 0; i < NT; i++) {
        cf_dtype dt = i >= CUQ ? CF_I32 : CF_F32;
        tt_alloc(&var[i], dt, vnd[i], vshapes[i], i >= ALIBI ? TT_DENSE : TT_PADDED);
        tt_random(&var[i], 200 + (uint64_t)i, 0.1, 1.0);
    }
    memcpy(var[CUQ].base, cu_q_vals, sizeof cu_q_vals);
    memcpy(var[CUK].base, cu_k_vals, sizeof cu_k_vals);
}

static void reset(args* A, int varlen) {
    tt_tensor* src = varlen ? var : batch;
    memset(A, 0, sizeof *A);
    for (int i = 0; i < NT; i++) {
        A->a[i].t = src[i].dl;
        memcpy(A->a[i].shape, src[i].shape, sizeof src[i].shape);
        memcpy(A->a[i].strides, src[i].strides, sizeof src[i].strides);
        A->a[i].t.shape = A->a[i].shape;
        A->a[i].t.strides = A->a[i].strides;
        A->t[i] = &A->a[i].t;
    }
    cflash_attn_params_init(&A->p);
    A->varlen = varlen;
}

/* Issue 13's tensors for the batch fixture (B 2, H 4, Sq 5, Sk 7): sinks, dsinks [4]; bias,
 * dbias (1, 4, 5, 7) fp32; mask (2, 1, 5, 7) uint8; block-sparse num (1, 1, 2), idx (1, 1, 2, 3)
 * with block_q = block_k = 4 (2 query blocks). Included in out_hash. */
enum { SINKS, DSINKS, BIAS, DBIAS, MASK, BNUM, BIDX, NX };
static tt_tensor xt[NX];

static void setup_features(void) {
    int64_t h[1] = {4}, b[4] = {1, 4, 5, 7}, m[4] = {2, 1, 5, 7}, n[3] = {1, 1, 2},
            x[4] = {1, 1, 2, 3};
    tt_alloc(&xt[SINKS], CF_F32, 1, h, TT_DENSE);
    tt_alloc(&xt[DSINKS], CF_F32, 1, h, TT_DENSE);
    tt_alloc(&xt[BIAS], CF_F32, 4, b, TT_PADDED);
    tt_alloc(&xt[DBIAS], CF_F32, 4, b, TT_PADDED);
    tt_alloc(&xt[MASK], CF_U8, 4, m, TT_DENSE);
    tt_alloc(&xt[BNUM], CF_I32, 3, n, TT_DENSE);
    tt_alloc(&xt[BIDX], CF_I32, 4, x, TT_DENSE);
    tt_random(&xt[SINKS], 300, -1.0, 1.0);
    tt_random(&xt[BIAS], 301, -1.0, 1.0);
    tt_fill(&xt[MASK], 1);
    const int32_t nv[2] = {2, 1}, iv[6] = {0, 1, -7, 1, 99, 99}; /* past num: never read */
    memcpy(xt[BNUM].base, nv, sizeof nv);
    memcpy(xt[BIDX].base, iv, sizeof iv);
}

static uint64_t out_hash(void) {
    uint64_t h = 0;
    for (int i = 0; i < NT; i++)
        h = h * 31 + tt_hash(&batch[i]) + 7 * tt_hash(&var[i]);
    for (int i = 0; i < NX; i++)
        if (xt[i].base) h = h * 31 + tt_hash(&xt[i]);
    return h;
}

static cflash_status fwd(args* A) {
    DLTensor** t = A->t;
    if (A->varlen)
        return cflash_attn_varlen_fwd(NULL, &A->p, t[Q], t[K], t[V], t[CUQ], t[CUK], A->max_q,
                                      A->max_k, t[OUT], t[LSE]);
    return cflash_attn_fwd(NULL, &A->p, t[Q], t[K], t[V], t[OUT], t[LSE]);
}

static cflash_status bwd(args* A) {
    DLTensor** t = A->t;
    if (A->varlen)
        return cflash_attn_varlen_bwd(NULL, &A->p, t[DOUT], t[Q], t[K], t[V], t[OUT], t[LSE],
                                      t[CUQ], t[CUK], A->max_q, A->max_k, t[DQ], t[DK], t[DV]);
    return cflash_attn_bwd(NULL, &A->p, t[DOUT], t[Q], t[K], t[V], t[OUT], t[LSE], t[DQ], t[DK],
                           t[DV]);
}

/* The call must fail with status and message substring, and change no byte of any tensor. */
#define EXPECT(call, status, sub)                                                                  \
    do {                                                                                           \
        uint64_t h0_ = out_hash();                                                                 \
        CHECK_ERR(call, status, sub);                                                              \
        CHECK_MSG(out_hash() == h0_, "%s wrote caller memory on error", #call);                    \
    } while (0)

/* Forward and backward both reject A (the backward validates the same inputs). */
#define EXPECT_BOTH(A, status, sub)                                                                \
    do {                                                                                           \
        EXPECT(fwd(A), status, sub);                                                               \
        EXPECT(bwd(A), status, sub);                                                               \
    } while (0)

static const DLDevice cuda0 = {kDLCUDA, 0};

/* ---- Valid calls first (so that the failures below are the edits' doing) ------------------- */

static void test_valid(void) {
    args A;
    reset(&A, 0);
    CHECK_OK(fwd(&A));
    CHECK_OK(bwd(&A));
    reset(&A, 1);
    CHECK_OK(fwd(&A));
    CHECK_OK(bwd(&A));
    /* Refill: the valid calls wrote outputs; the error tests compare hashes only, so any content
     * will do from here on. */
}

/* ---- Parameters --------------------------------------------------------------------------- */

static void test_params(void) {
    args A;
    for (int vl = 0; vl < 2; vl++) {
        reset(&A, vl), A.p.softmax_scale = NAN;
        EXPECT_BOTH(&A, INV, "softmax_scale: nan, expected a finite value");
        reset(&A, vl), A.p.softmax_scale = INFINITY;
        EXPECT_BOTH(&A, INV, "softmax_scale: inf");
        reset(&A, vl), A.p.dropout_p = 1.0f;
        EXPECT_BOTH(&A, INV, "dropout_p: 1, expected a value in [0, 1)");
        reset(&A, vl), A.p.dropout_p = -0.25f;
        EXPECT_BOTH(&A, INV, "dropout_p: -0.25");
        reset(&A, vl), A.p.dropout_p = NAN;
        EXPECT_BOTH(&A, INV, "dropout_p: nan");
        reset(&A, vl), A.p.window_left = -2;
        EXPECT_BOTH(&A, INV, "window_left: -2, expected -1 (unbounded) or >= 0");
        reset(&A, vl), A.p.window_right = -7;
        EXPECT_BOTH(&A, INV, "window_right: -7");
        reset(&A, vl), A.p.softcap = -1.0f;
        EXPECT_BOTH(&A, INV, "softcap: -1, expected a finite value >= 0");
        reset(&A, vl), A.p.softcap = INFINITY;
        EXPECT_BOTH(&A, INV, "softcap: inf");
        reset(&A, vl), A.p.softcap = NAN;
        EXPECT_BOTH(&A, INV, "softcap: nan");
        /* Block offsets: >= 0 and positions below 2^32 (batch Sq 5, Sk 7; varlen max 6, 7). */
        const int64_t sq = vl ? 6 : 5, lim = (int64_t)1 << 32;
        char want[128];
        reset(&A, vl), A.p.q_offset = -1;
        snprintf(want, sizeof want, "q_offset: -1, expected 0 <= q_offset <= 2^32 - Sq = %lld",
                 (long long)(lim - sq));
        EXPECT_BOTH(&A, INV, want);
        reset(&A, vl), A.p.q_offset = lim - sq + 1;
        EXPECT_BOTH(&A, INV, "q_offset: ");
        reset(&A, vl), A.p.k_offset = INT64_MAX; /* k_offset + Sk overflows int64 */
        EXPECT_BOTH(&A, INV, "k_offset: 9223372036854775807, expected 0 <= k_offset <= 2^32 - Sk");
        reset(&A, vl), A.p.k_offset = INT64_MIN;
        EXPECT_BOTH(&A, INV, "k_offset: -9223372036854775808");
        reset(&A, vl), A.p.q_offset = lim - sq, A.p.k_offset = lim - 7; /* the last positions */
        CHECK_OK(fwd(&A));
        CHECK_OK(bwd(&A));
    }
}

/* ---- Tensor views: NULL, data, ndim, shape ------------------------------------------------ */

static void test_views(void) {
    args A;
    char want[128];
    for (int vl = 0; vl < 2; vl++) {
        int bwd_only[NT] = {[DOUT] = 1, [DQ] = 1, [DK] = 1, [DV] = 1};
        for (int i = Q; i <= DV; i++) {
            if (i == LSE) continue; /* optional in the forward: tested below */
            reset(&A, vl), A.t[i] = NULL;
            snprintf(want, sizeof want, "%s: is NULL, expected a tensor", tnames[i]);
            if (!bwd_only[i]) EXPECT(fwd(&A), INV, want);
            EXPECT(bwd(&A), INV, want);
            reset(&A, vl), A.a[i].t.data = NULL;
            snprintf(want, sizeof want, "%s: data is NULL", tnames[i]);
            if (!bwd_only[i]) EXPECT(fwd(&A), INV, want);
            EXPECT(bwd(&A), INV, want);
        }
        reset(&A, vl), A.a[Q].t.ndim = 0;
        EXPECT_BOTH(&A, INV, "q: ndim is 0, expected 1..6");
        reset(&A, vl), A.a[K].t.ndim = 7;
        EXPECT_BOTH(&A, INV, "k: ndim is 7, expected 1..6");
        reset(&A, vl), A.a[V].t.shape = NULL;
        EXPECT_BOTH(&A, INV, "v: shape is NULL");
        reset(&A, vl), A.a[OUT].shape[1] = -3;
        EXPECT_BOTH(&A, INV, "out: shape[1] is -3, expected >= 0");
    }
    /* Wrong number of dims for the mode. */
    reset(&A, 0), A.a[Q].t.ndim = 3;
    EXPECT_BOTH(&A, INV, "q: expected 4 dims (B, Sq, H, D), got 3");
    reset(&A, 1), A.a[Q].t.ndim = 4, A.a[Q].shape[3] = 8, A.a[Q].strides[3] = 1;
    EXPECT_BOTH(&A, INV, "q: expected 3 dims (total_q, H, D), got 4");
    reset(&A, 0), A.a[K].t.ndim = 3;
    EXPECT_BOTH(&A, INV, "k: expected 4 dims (B, Sk, Hk, D), got 3");
    reset(&A, 1), A.a[V].t.ndim = 2;
    EXPECT_BOTH(&A, INV, "v: expected 3 dims (total_k, Hk, Dv), got 2");
    reset(&A, 0), A.a[OUT].t.ndim = 3;
    EXPECT_BOTH(&A, INV, "out: expected 4 dims (B, Sq, H, Dv), got 3");
    reset(&A, 0), A.a[LSE].t.ndim = 2;
    EXPECT_BOTH(&A, INV, "lse: expected 3 dims (B, H, Sq), got 2");
    reset(&A, 1), A.a[LSE].t.ndim = 3, A.a[LSE].shape[2] = 1;
    EXPECT_BOTH(&A, INV, "lse: expected 2 dims (H, total_q), got 3");
}

/* ---- Dtypes, devices, strides ------------------------------------------------------------- */

static void test_dtypes_devices(void) {
    args A;
    for (int vl = 0; vl < 2; vl++) {
        reset(&A, vl), A.a[Q].t.dtype = tt_dl_dtype(CF_I32);
        EXPECT_BOTH(&A, INV, "q: dtype int32, expected float32, float16 or bfloat16");
        reset(&A, vl), A.a[Q].t.dtype.bits = 64;
        EXPECT_BOTH(&A, INV, "q: dtype float64, expected float32");
        reset(&A, vl), A.a[Q].t.dtype.lanes = 2;
        EXPECT_BOTH(&A, INV, "q: dtype float32x2");
        for (int i = K; i <= DV; i++) {
            if (i == LSE) continue;
            char want[160];
            reset(&A, vl), A.a[i].t.dtype = tt_dl_dtype(CF_F16);
            snprintf(want, sizeof want, "%s: dtype float16, expected float32 (the dtype of q)",
                     tnames[i]);
            if (i < DOUT) EXPECT(fwd(&A), INV, want);
            EXPECT(bwd(&A), INV, want);
            reset(&A, vl), A.a[i].t.device = cuda0;
            snprintf(want, sizeof want, "%s: on cuda:0, expected cpu:0 (the device of q)",
                     tnames[i]);
            if (i < DOUT) EXPECT(fwd(&A), INV, want);
            EXPECT(bwd(&A), INV, want);
            reset(&A, vl), A.a[i].t.device.device_id = 1;
            snprintf(want, sizeof want, "%s: on cpu:1, expected cpu:0", tnames[i]);
            if (i < DOUT) EXPECT(fwd(&A), INV, want);
            EXPECT(bwd(&A), INV, want);
            int last = A.a[i].t.ndim - 1;
            reset(&A, vl), A.a[i].strides[last] = 2;
            snprintf(want, sizeof want, "%s: last dimension has stride 2, expected 1", tnames[i]);
            if (i < DOUT) EXPECT(fwd(&A), INV, want);
            EXPECT(bwd(&A), INV, want);
        }
        reset(&A, vl), A.a[Q].strides[A.a[Q].t.ndim - 1] = 0;
        EXPECT_BOTH(&A, INV, "q: last dimension has stride 0, expected 1");
        reset(&A, vl), A.a[LSE].t.dtype = tt_dl_dtype(CF_F16);
        EXPECT_BOTH(&A, INV, "lse: dtype float16, expected float32");
        reset(&A, vl), A.a[LSE].t.device = cuda0;
        EXPECT_BOTH(&A, INV, "lse: on cuda:0, expected cpu:0 (the device of q)");
    }
    /* bf16 q with fp16 k: the message names both. */
    reset(&A, 0), A.a[Q].t.dtype = tt_dl_dtype(CF_BF16), A.a[K].t.dtype = tt_dl_dtype(CF_F16);
    EXPECT(fwd(&A), INV, "k: dtype float16, expected bfloat16 (the dtype of q)");
}

/* ---- Shapes that disagree ----------------------------------------------------------------- */

static void test_shapes(void) {
    args A;
    /* batch: B 2, Sq 5, Sk 7, H 4, Hk 2, D 8, Dv 6 */
    reset(&A, 0), A.a[Q].shape[3] = 0;
    EXPECT_BOTH(&A, INV, "q: head dim D = 0, expected >= 1");
    reset(&A, 0), A.a[Q].shape[2] = 0;
    EXPECT_BOTH(&A, INV, "q: heads H = 0, expected >= 1");
    reset(&A, 0), A.a[K].shape[0] = 3;
    EXPECT_BOTH(&A, INV, "k: shape (3, 7, 2, 8), expected (B, Sk, Hk, D) with dim 0 = 2");
    reset(&A, 0), A.a[K].shape[3] = 9;
    EXPECT_BOTH(&A, INV, "k: shape (2, 7, 2, 9), expected (B, Sk, Hk, D) with dim 3 = 8");
    reset(&A, 0), A.a[K].shape[2] = 3;
    EXPECT_BOTH(&A, INV, "k: 3 heads, expected a divisor of the 4 heads of q (GQA/MQA)");
    reset(&A, 0), A.a[K].shape[2] = 0;
    EXPECT_BOTH(&A, INV, "k: 0 heads, expected a divisor of the 4 heads of q");
    reset(&A, 0), A.a[K].shape[2] = 8;
    EXPECT_BOTH(&A, INV, "k: 8 heads, expected a divisor");
    reset(&A, 0), A.a[V].shape[1] = 6;
    EXPECT_BOTH(&A, INV, "v: shape (2, 6, 2, 6), expected (B, Sk, Hk, Dv) with dim 1 = 7");
    reset(&A, 0), A.a[V].shape[2] = 1;
    EXPECT_BOTH(&A, INV, "v: shape (2, 7, 1, 6), expected (B, Sk, Hk, Dv) with dim 2 = 2");
    reset(&A, 0), A.a[V].shape[0] = 1;
    EXPECT_BOTH(&A, INV, "with dim 0 = 2");
    reset(&A, 0), A.a[V].shape[3] = 0;
    EXPECT_BOTH(&A, INV, "v: head dim Dv = 0, expected >= 1");
    reset(&A, 0), A.a[OUT].shape[3] = 8;
    EXPECT_BOTH(&A, INV, "out: shape (2, 5, 4, 8), expected (B, Sq, H, Dv) with dim 3 = 6");
    reset(&A, 0), A.a[OUT].shape[1] = 7;
    EXPECT_BOTH(&A, INV, "out: shape (2, 7, 4, 6), expected (B, Sq, H, Dv) with dim 1 = 5");
    reset(&A, 0), A.a[LSE].shape[2] = 6;
    EXPECT_BOTH(&A, INV, "lse: shape (2, 4, 6), expected (B, H, Sq) with dim 2 = 5");
    reset(&A, 0), A.a[LSE].shape[1] = 2;
    EXPECT_BOTH(&A, INV, "lse: shape (2, 2, 5), expected (B, H, Sq) with dim 1 = 4");
    reset(&A, 0), A.a[DOUT].shape[3] = 8;
    EXPECT(bwd(&A), INV, "dout: shape (2, 5, 4, 8), expected (B, Sq, H, Dv) with dim 3 = 6");
    reset(&A, 0), A.a[DQ].shape[3] = 6;
    EXPECT(bwd(&A), INV, "dq: shape (2, 5, 4, 6), expected (B, Sq, H, D) with dim 3 = 8");
    reset(&A, 0), A.a[DK].shape[2] = 4;
    EXPECT(bwd(&A), INV, "dk: shape (2, 7, 4, 8), expected (B, Sk, Hk, D) with dim 2 = 2");
    reset(&A, 0), A.a[DV].shape[3] = 8;
    EXPECT(bwd(&A), INV, "dv: shape (2, 7, 2, 8), expected (B, Sk, Hk, Dv) with dim 3 = 6");
    reset(&A, 0), A.t[LSE] = NULL;
    EXPECT(bwd(&A), INV, "lse: is NULL, expected the forward's lse");
    /* Outputs that are broadcast views (stride 0 over a dim > 1) would be written racily. */
    reset(&A, 0), A.a[OUT].strides[1] = 0;
    EXPECT(fwd(&A), INV, "out: stride 0 in dim 1 of size 5, expected an output whose elements");
    reset(&A, 0), A.a[LSE].strides[2] = 0;
    EXPECT(fwd(&A), INV, "lse: stride 0 in dim 2 of size 5");
    reset(&A, 1), A.a[LSE].strides[0] = 0;
    EXPECT(fwd(&A), INV, "lse: stride 0 in dim 0 of size 4");
    reset(&A, 0), A.a[DQ].strides[0] = 0;
    EXPECT(bwd(&A), INV, "dq: stride 0 in dim 0 of size 2");
    reset(&A, 1), A.a[DK].strides[1] = 0;
    EXPECT(bwd(&A), INV, "dk: stride 0 in dim 1 of size 2");
    reset(&A, 0), A.a[DV].strides[2] = 0;
    EXPECT(bwd(&A), INV, "dv: stride 0 in dim 2 of size 2");
    /* An empty output may have any strides (NumPy gives 0 for zero-size arrays). */
    reset(&A, 0), A.a[OUT].strides[0] = 0, A.a[OUT].strides[1] = 0, A.a[OUT].shape[1] = 0;
    A.a[Q].shape[1] = 0, A.a[LSE].shape[2] = 0;
    CHECK_OK(fwd(&A));
    /* Inputs may be broadcast views: the same call with k's batch stride 0 is valid. */
    reset(&A, 0), A.a[K].strides[0] = 0, A.a[V].strides[0] = 0;
    CHECK_OK(fwd(&A));
    /* varlen: total_q 11, total_k 9 */
    reset(&A, 1), A.a[K].shape[1] = 3;
    EXPECT_BOTH(&A, INV, "k: 3 heads, expected a divisor of the 4 heads of q");
    reset(&A, 1), A.a[V].shape[0] = 8;
    EXPECT_BOTH(&A, INV, "v: shape (8, 2, 6), expected (total_k, Hk, Dv) with dim 0 = 9");
    reset(&A, 1), A.a[OUT].shape[0] = 10;
    EXPECT_BOTH(&A, INV, "out: shape (10, 4, 6), expected (total_q, H, Dv) with dim 0 = 11");
    reset(&A, 1), A.a[LSE].shape[1] = 12;
    EXPECT_BOTH(&A, INV, "lse: shape (4, 12), expected (H, total_q) with dim 1 = 11");
    reset(&A, 1), A.a[DK].shape[0] = 11;
    EXPECT(bwd(&A), INV, "dk: shape (11, 2, 8), expected (total_k, Hk, D) with dim 0 = 9");
    reset(&A, 1), A.t[LSE] = NULL;
    EXPECT(bwd(&A), INV, "lse: is NULL");
}

/* ---- ALiBi -------------------------------------------------------------------------------- */

static void test_alibi(void) {
    args A;
    int64_t s5[1] = {5}, s2x4[2] = {2, 4}, s3x4[2] = {3, 4};
    for (int vl = 0; vl < 2; vl++) {
        reset(&A, vl);
        A.p.alibi_slopes = A.t[ALIBI];
        CHECK_OK(fwd(&A));
        reset(&A, vl), A.p.alibi_slopes = A.t[ALIBI], A.a[ALIBI].t.dtype = tt_dl_dtype(CF_F16);
        EXPECT_BOTH(&A, INV, "alibi_slopes: dtype float16, expected float32");
        reset(&A, vl), A.p.alibi_slopes = A.t[ALIBI], A.a[ALIBI].t.shape = s5;
        EXPECT_BOTH(&A, INV, "alibi_slopes: shape (5), expected [H] = [4] or [B, H]");
        reset(&A, vl), A.p.alibi_slopes = A.t[ALIBI];
        A.a[ALIBI].t.ndim = 2, A.a[ALIBI].t.shape = vl ? s2x4 : s3x4;
        EXPECT_BOTH(&A, INV, vl ? "or [B, H] = [3, 4]" : "or [B, H] = [2, 4]");
        reset(&A, vl), A.p.alibi_slopes = A.t[ALIBI], A.a[ALIBI].strides[0] = 2;
        EXPECT_BOTH(&A, INV, "alibi_slopes: last dimension has stride 2, expected 1");
        reset(&A, vl), A.p.alibi_slopes = A.t[ALIBI], A.a[ALIBI].t.device = cuda0;
        EXPECT_BOTH(&A, INV, "alibi_slopes: on cuda");
        reset(&A, vl), A.p.alibi_slopes = A.t[ALIBI], A.a[ALIBI].t.device.device_id = 1;
        EXPECT_BOTH(&A, INV, "alibi_slopes: on cpu:1, expected cpu:0");
        reset(&A, vl), A.p.alibi_slopes = A.t[ALIBI], A.a[ALIBI].t.data = NULL;
        EXPECT_BOTH(&A, INV, "alibi_slopes: data is NULL");
    }
}

/* ---- Issue 13: sinks, bias / mask, block-sparse, chunk --------------------------------------- */

/* A copy of one of the feature tensors that a test may edit (shape, strides, dtype, device). */
typedef struct xarg {
    DLTensor t;
    int64_t shape[TT_MAX_DIMS], strides[TT_MAX_DIMS];
} xarg;

static DLTensor* xcopy(xarg* a, int i) {
    a->t = xt[i].dl;
    memcpy(a->shape, xt[i].shape, sizeof a->shape);
    memcpy(a->strides, xt[i].strides, sizeof a->strides);
    a->t.shape = a->shape;
    a->t.strides = a->strides;
    return &a->t;
}

static void test_features(void) {
    args A;
    xarg s, d, b, m, n, x;
    char want[200];
    /* Valid first: every feature at once, forward and backward, batch; sinks and blocks varlen. */
    reset(&A, 0);
    A.p.sinks = xcopy(&s, SINKS), A.p.dsinks = xcopy(&d, DSINKS);
    A.p.attn_bias = xcopy(&b, BIAS), A.p.dbias = xcopy(&x, DBIAS), A.p.attn_mask = xcopy(&m, MASK);
    A.p.block_kv_num = &xt[BNUM].dl, A.p.block_kv_indices = &xt[BIDX].dl;
    A.p.block_q = A.p.block_k = 4, A.p.attention_chunk = 3;
    CHECK_OK(fwd(&A));
    CHECK_OK(bwd(&A));
    reset(&A, 1);
    A.p.sinks = &xt[SINKS].dl, A.p.dsinks = &xt[DSINKS].dl, A.p.attention_chunk = 2;
    A.p.block_kv_num = &xt[BNUM].dl, A.p.block_kv_indices = &xt[BIDX].dl;
    A.p.block_q = A.p.block_k = 4; /* varlen max_seqlen_q 6: 2 query blocks */
    CHECK_OK(fwd(&A));
    CHECK_OK(bwd(&A));
    /* A bool mask (DLPack code 6, 8 bits) is a uint8 mask. */
    reset(&A, 0), A.p.attn_mask = xcopy(&m, MASK), m.t.dtype.code = 6;
    CHECK_OK(fwd(&A));

    for (int vl = 0; vl < 2; vl++) {
        /* sinks */
        reset(&A, vl), A.p.sinks = xcopy(&s, SINKS), s.t.dtype = tt_dl_dtype(CF_F16);
        EXPECT_BOTH(&A, INV, "sinks: dtype float16, expected float32");
        reset(&A, vl), A.p.sinks = xcopy(&s, SINKS), s.shape[0] = 5;
        EXPECT_BOTH(&A, INV, "sinks: shape (5), expected [H] = [4]");
        reset(&A, vl), A.p.sinks = xcopy(&s, SINKS), s.t.ndim = 2, s.shape[1] = 1;
        EXPECT_BOTH(&A, INV, "sinks: shape (4, 1), expected [H] = [4]");
        reset(&A, vl), A.p.sinks = xcopy(&s, SINKS), s.strides[0] = 2;
        EXPECT_BOTH(&A, INV, "sinks: stride 2, expected 1 (contiguous)");
        reset(&A, vl), A.p.sinks = xcopy(&s, SINKS), s.t.device = cuda0;
        EXPECT_BOTH(&A, INV, "sinks: on cuda:0, expected cpu:0 (the device of q)");
        reset(&A, vl), A.p.sinks = xcopy(&s, SINKS), s.t.data = NULL;
        EXPECT_BOTH(&A, INV, "sinks: data is NULL");
        /* dsinks: backward only (the forward ignores it) */
        reset(&A, vl), A.p.dsinks = xcopy(&d, DSINKS);
        CHECK_OK(fwd(&A));
        EXPECT(bwd(&A), INV, "dsinks: given without sinks, expected NULL");
        reset(&A, vl), A.p.sinks = &xt[SINKS].dl, A.p.dsinks = xcopy(&d, DSINKS), d.shape[0] = 3;
        EXPECT(bwd(&A), INV, "dsinks: shape (3), expected [H] = [4]");
        reset(&A, vl), A.p.sinks = &xt[SINKS].dl, A.p.dsinks = xcopy(&d, DSINKS);
        d.t.dtype = tt_dl_dtype(CF_BF16);
        EXPECT(bwd(&A), INV, "dsinks: dtype bfloat16, expected float32");
        /* attention_chunk */
        reset(&A, vl), A.p.attention_chunk = -1;
        EXPECT_BOTH(&A, INV, "attention_chunk: -1, expected 0 (off) or a chunk length > 0");
        reset(&A, vl), A.p.attention_chunk = INT64_MAX; /* one chunk: no effect */
        CHECK_OK(fwd(&A));
    }
    /* bias / mask / dbias: batch calls only */
    reset(&A, 1), A.p.attn_bias = xcopy(&b, BIAS);
    EXPECT_BOTH(&A, INV, "attn_bias: given to a varlen call, expected NULL (batch calls only");
    reset(&A, 1), A.p.attn_mask = xcopy(&m, MASK);
    EXPECT_BOTH(&A, INV, "attn_mask: given to a varlen call, expected NULL");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.t.ndim = 3;
    EXPECT_BOTH(&A, INV, "attn_bias: expected 4 dims (B|1, H|1, Sq, Sk), got 3");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.shape[0] = 3;
    EXPECT_BOTH(&A, INV,
                "attn_bias: shape (3, 4, 5, 7), expected (B|1, H|1, Sq, Sk) = (2|1, 4|1, 5, 7)");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.shape[1] = 2;
    EXPECT_BOTH(&A, INV, "attn_bias: shape (1, 2, 5, 7), expected");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.shape[2] = 7, b.shape[3] = 5;
    EXPECT_BOTH(&A, INV, "attn_bias: shape (1, 4, 7, 5), expected");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.strides[3] = 2;
    EXPECT_BOTH(&A, INV, "attn_bias: last dimension has stride 2, expected 1 (contiguous)");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.t.device = cuda0;
    EXPECT_BOTH(&A, INV, "attn_bias: on cuda:0, expected cpu:0 (the device of q)");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.t.dtype = tt_dl_dtype(CF_BF16);
    EXPECT_BOTH(&A, INV, "attn_bias: dtype bfloat16, expected float32 or the dtype of q (float32)");
    reset(&A, 0), A.p.attn_bias = xcopy(&b, BIAS), b.shape[0] = 2, b.strides[0] = 0;
    CHECK_OK(fwd(&A)); /* an expanded (stride 0) batch dim is an input like any other */
    reset(&A, 0), A.p.attn_mask = xcopy(&m, MASK), m.t.dtype = tt_dl_dtype(CF_F32);
    EXPECT_BOTH(&A, INV, "attn_mask: dtype float32, expected uint8 or bool (8 bits)");
    reset(&A, 0), A.p.attn_mask = xcopy(&m, MASK), m.t.dtype.code = 6, m.t.dtype.bits = 32;
    EXPECT_BOTH(&A, INV, "attn_mask: dtype code?32, expected uint8 or bool (8 bits)");
    reset(&A, 0), A.p.attn_mask = xcopy(&m, MASK), m.shape[1] = 3;
    EXPECT_BOTH(&A, INV, "attn_mask: shape (2, 3, 5, 7), expected (B|1, H|1, Sq, Sk)");
    reset(&A, 0), A.p.attn_mask = xcopy(&m, MASK), m.t.device.device_id = 1;
    EXPECT_BOTH(&A, INV, "attn_mask: on cpu:1, expected cpu:0");
    reset(&A, 0), A.p.dbias = xcopy(&x, DBIAS);
    CHECK_OK(fwd(&A));
    EXPECT(bwd(&A), INV, "dbias: given without attn_bias, expected NULL");
    reset(&A, 0), A.p.attn_bias = &xt[BIAS].dl, A.p.dbias = xcopy(&x, DBIAS), x.shape[0] = 2;
    x.strides[0] = 0;
    EXPECT(bwd(&A), INV, "dbias: stride 0 in dim 0 of size 2, expected an output whose elements");
    reset(&A, 0), A.p.attn_bias = &xt[BIAS].dl, A.p.dbias = xcopy(&x, DBIAS), x.shape[1] = 1;
    EXPECT(bwd(&A), INV,
           "dbias: shape (1, 1, 5, 7), expected (1, 4, 5, 7) (the shape of attn_bias)");
    reset(&A, 0), A.p.attn_bias = &xt[BIAS].dl, A.p.dbias = xcopy(&x, DBIAS);
    x.t.dtype = tt_dl_dtype(CF_F16);
    EXPECT(bwd(&A), INV, "dbias: dtype float16, expected float32 or the dtype of q (float32)");
    reset(&A, 0), A.p.attn_bias = &xt[BIAS].dl, A.p.dbias = xcopy(&x, DBIAS), x.shape[3] = 6;
    EXPECT(bwd(&A), INV, "dbias: shape (1, 4, 5, 6), expected (B|1, H|1, Sq, Sk)");
    /* block-sparse */
    int32_t* nv = xt[BNUM].base;
    int32_t* iv = xt[BIDX].base;
    for (int vl = 0; vl < 2; vl++) {
#define BS(A)                                                                                      \
    (reset(&(A), vl), (A).p.block_kv_num = xcopy(&n, BNUM),                                        \
     (A).p.block_kv_indices = xcopy(&x, BIDX), (A).p.block_q = (A).p.block_k = 4)
        BS(A), A.p.block_kv_indices = NULL;
        EXPECT_BOTH(&A, INV,
                    "block_kv_indices: is NULL, expected a tensor (block_kv_num is given)");
        BS(A), A.p.block_kv_num = NULL;
        EXPECT_BOTH(&A, INV,
                    "block_kv_num: is NULL, expected a tensor (block_kv_indices is given)");
        BS(A), A.p.block_q = 0;
        EXPECT_BOTH(&A, INV, "block_q: 0, expected 1 <= block_q <= 2^32");
        BS(A), A.p.block_k = ((int64_t)1 << 32) + 1;
        EXPECT_BOTH(&A, INV, "block_k: 4294967297, expected 1 <= block_k <= 2^32");
        BS(A), n.t.dtype = tt_dl_dtype(CF_F32);
        EXPECT_BOTH(&A, INV, "block_kv_num: float32 with 3 dims, expected int32 with 3 dims");
        BS(A), x.t.ndim = 3;
        EXPECT_BOTH(&A, INV, "block_kv_indices: int32 with 3 dims, expected int32 with 4 dims");
        BS(A), n.shape[2] = 1, x.shape[2] = 1;
        snprintf(want, sizeof want,
                 "block_kv_num: shape (1, 1, 1), expected (B|1, H|1, >= ceil((q_offset + Sq) / "
                 "block_q)) = (%d|1, 4|1, >= 2)",
                 vl ? 3 : 2);
        EXPECT_BOTH(&A, INV, want);
        BS(A), A.p.block_q = 2; /* 3 query blocks needed */
        EXPECT_BOTH(&A, INV, ">= 3)");
        BS(A), n.shape[0] = 5;
        EXPECT_BOTH(&A, INV, "block_kv_num: shape (5, 1, 2), expected");
        BS(A), x.shape[1] = 4;
        EXPECT_BOTH(&A, INV,
                    "block_kv_indices: shape (1, 4, 2, 3), expected the first 3 dims of "
                    "block_kv_num (1, 1, 2)");
        BS(A), x.t.device.device_id = 2;
        EXPECT_BOTH(&A, INV,
                    "block_kv_indices: on cpu:2, expected cpu:0 (the device of block_kv_num)");
        BS(A), n.t.device = cuda0, x.t.device = cuda0;
        EXPECT_BOTH(&A, INV,
                    "block_kv_num: on cuda:0, expected host memory or the device of q (cpu:0)");
        /* Values (in host memory), edited in place and restored. */
        nv[1] = 4;
        BS(A);
        EXPECT_BOTH(&A, INV, "block_kv_num[0, 0, 1]: 4, expected 0..K = 0..3");
        nv[1] = -1;
        BS(A);
        EXPECT_BOTH(&A, INV, "block_kv_num[0, 0, 1]: -1, expected 0..K = 0..3");
        nv[1] = 2; /* now reads iv[4] = 99 (a block past the keys: fine) */
        BS(A);
        CHECK_OK(fwd(&A));
        nv[1] = 1, iv[1] = -3;
        BS(A);
        EXPECT_BOTH(&A, INV, "block_kv_indices[0, 0, 0, 1]: -3, expected a key block >= 0");
        iv[1] = 1;
#undef BS
    }
}

/* The KV-cache call takes sinks but not dsinks, masks, block lists or chunks (see
 * cf_attn_kvcache_features). */
static void test_kvcache_refuses(void) {
    cflash_kvcache_params kp;
    cflash_kvcache_params_init(&kp);
    args A;
    struct {
        const char* want;
        int f;
    } cases[] = {
        {"dsinks: given to the KV-cache call, expected NULL (a backward output)", 0},
        {"attn_bias: given to the KV-cache call, expected NULL", 1},
        {"attn_mask: given to the KV-cache call, expected NULL", 2},
        {"block_kv_num: given to the KV-cache call, expected NULL", 3},
        {"attention_chunk: 4, expected 0 (the KV-cache call does not take it yet)", 4},
    };
    reset(&A, 0);
    DLTensor** t = A.t;
    CHECK_OK(cflash_attn_kvcache_fwd(NULL, &A.p, &kp, t[Q], t[K], t[V], t[OUT], t[LSE]));
    for (int i = 0; i < 5; i++) {
        reset(&A, 0);
        if (cases[i].f == 0) A.p.dsinks = &xt[DSINKS].dl;
        if (cases[i].f == 1) A.p.attn_bias = &xt[BIAS].dl;
        if (cases[i].f == 2) A.p.attn_mask = &xt[MASK].dl;
        if (cases[i].f == 3) A.p.block_kv_num = &xt[BNUM].dl;
        if (cases[i].f == 4) A.p.attention_chunk = 4;
        EXPECT(cflash_attn_kvcache_fwd(NULL, &A.p, &kp, t[Q], t[K], t[V], t[OUT], t[LSE]), INV,
               cases[i].want);
    }
}

/* ---- cu_seqlens and max_seqlen ------------------------------------------------------------ */

static void test_varlen(void) {
    args A;
    int32_t* cq = var[CUQ].base;
    int32_t* ck = var[CUK].base;
    reset(&A, 1), A.t[CUQ] = NULL;
    EXPECT_BOTH(&A, INV, "cu_seqlens_q: is NULL, expected a tensor");
    reset(&A, 1), A.t[CUK] = NULL;
    EXPECT_BOTH(&A, INV, "cu_seqlens_k: is NULL");
    reset(&A, 1), A.a[CUQ].t.dtype.bits = 64;
    EXPECT_BOTH(&A, INV,
                "cu_seqlens_q: unsupported with 1 dims, expected int32 with 1 dim [B + 1]");
    reset(&A, 1), A.a[CUK].t.dtype = tt_dl_dtype(CF_F32);
    EXPECT_BOTH(&A, INV, "cu_seqlens_k: float32 with 1 dims, expected int32");
    reset(&A, 1), A.a[CUQ].t.ndim = 2, A.a[CUQ].shape[1] = 1;
    EXPECT_BOTH(&A, INV, "cu_seqlens_q: int32 with 2 dims, expected int32 with 1 dim");
    reset(&A, 1), A.a[CUQ].shape[0] = 0;
    EXPECT_BOTH(&A, INV, "cu_seqlens_q: length 0, expected B + 1 >= 1");
    reset(&A, 1), A.a[CUQ].strides[0] = 2;
    EXPECT_BOTH(&A, INV, "cu_seqlens_q: stride 2, expected 1 (contiguous)");
    reset(&A, 1), A.a[CUK].t.device.device_type = kDLVulkan;
    EXPECT_BOTH(&A, INV, "cu_seqlens_k: on other, expected cpu, cuda_host or cuda memory");
    /* Device cu_seqlens are accepted only with q on that device (rejected before any copy). */
    reset(&A, 1), A.a[CUQ].t.device = cuda0;
    EXPECT_BOTH(&A, INV,
                "cu_seqlens_q: on cuda:0, expected host memory or the device of q (cpu:0)");
    reset(&A, 1), A.a[CUK].shape[0] = 3;
    EXPECT_BOTH(&A, INV, "cu_seqlens_k: length 3, expected B + 1 = 4 (the length of cu_seqlens_q)");
    /* Contents: edited in place and restored (they are inputs; hashes are taken after the edit). */
    cq[0] = 1;
    reset(&A, 1);
    EXPECT_BOTH(&A, INV, "cu_seqlens_q[0]: 1, expected 0");
    cq[0] = 0, ck[2] = 3;
    reset(&A, 1);
    EXPECT_BOTH(&A, INV,
                "cu_seqlens_k[2]: 3 is less than cu_seqlens_k[1] = 7, expected non-decreasing");
    ck[2] = 9, cq[3] = 12;
    reset(&A, 1);
    EXPECT_BOTH(&A, INV, "cu_seqlens_q[3]: 12, expected at most total_q = 11");
    cq[3] = 11, ck[3] = 10;
    reset(&A, 1);
    EXPECT_BOTH(&A, INV, "cu_seqlens_k[3]: 10, expected at most total_k = 9");
    ck[3] = 9;
    reset(&A, 1), A.max_q = -1;
    EXPECT_BOTH(&A, INV, "max_seqlen_q: -1, expected >= 0 (0 = from cu_seqlens)");
    reset(&A, 1), A.max_k = 6;
    EXPECT_BOTH(&A, INV, "max_seqlen_k: 6, but a sequence has 7 rows; expected >= 7 or 0");
    reset(&A, 1), A.max_q = 6, A.max_k = 100;
    CHECK_OK(fwd(&A)); /* a larger bound is fine */
}

/* ---- Serving: paged K/V (varlen), seqused_q / seqused_k ------------------------------------ */

static void test_serving(void) {
    /* The varlen fixture's keys (lengths 7, 2, 0) in pages of 3 rows: k (4, 3, 2, 8). */
    tt_tensor kp, vp, dkp, dvp, bt, su, su2, bad;
    int64_t sk[4] = {4, 3, 2, 8}, sv[4] = {4, 3, 2, 6}, sb[2] = {3, 3}, ss[1] = {3};
    tt_alloc(&kp, CF_F32, 4, sk, TT_PADDED), tt_random(&kp, 301, 0.1, 1.0);
    tt_alloc(&vp, CF_F32, 4, sv, TT_PADDED), tt_random(&vp, 302, 0.1, 1.0);
    tt_alloc(&dkp, CF_F32, 4, sk, TT_PADDED), tt_alloc(&dvp, CF_F32, 4, sv, TT_PADDED);
    tt_alloc(&bt, CF_I32, 2, sb, TT_DENSE), tt_alloc(&su, CF_I32, 1, ss, TT_DENSE);
    tt_alloc(&su2, CF_I32, 1, ss, TT_DENSE);
    int32_t* b = bt.base;
    const int32_t table[9] = {2, 0, 3, 1, 99, -5, 77, 77, 77}; /* unused entries: never read */
    memcpy(b, table, sizeof table);
    int32_t* u = su.base;
    u[0] = 5, u[1] = 2, u[2] = 0;
    ((int32_t*)su2.base)[0] = 1, ((int32_t*)su2.base)[1] = 0, ((int32_t*)su2.base)[2] = 6;
    args A;
#define PAGED(A)                                                                                   \
    (reset(A, 1), (A)->t[K] = &kp.dl, (A)->t[V] = &vp.dl, (A)->t[DK] = &dkp.dl,                    \
     (A)->t[DV] = &dvp.dl, (A)->p.block_table = &bt.dl)
#define EXPECT_PAGED(A, status, sub)                                                               \
    do {                                                                                           \
        uint64_t hp_ = tt_hash(&dkp) ^ tt_hash(&dvp) * 3;                                          \
        EXPECT_BOTH(A, status, sub);                                                               \
        CHECK_MSG((tt_hash(&dkp) ^ tt_hash(&dvp) * 3) == hp_, "dk / dv pages written on error");   \
    } while (0)
    PAGED(&A);
    CHECK_OK(fwd(&A));
    CHECK_OK(bwd(&A));
    PAGED(&A), A.p.seqused_k = &su.dl, A.p.seqused_q = &su2.dl, A.t[CUK] = NULL;
    CHECK_OK(fwd(&A));
    CHECK_OK(bwd(&A));
    reset(&A, 0), A.p.block_table = &bt.dl;
    EXPECT_BOTH(&A, INV, "block_table: given to a batch-mode call, expected NULL");
    PAGED(&A), A.t[K] = &var[K].dl;
    EXPECT_PAGED(&A, INV, "k: expected 4 dims (num_pages, page_size, Hk, D), got 3");
    int64_t sv5[4] = {5, 3, 2, 6};
    tt_alloc(&bad, CF_F32, 4, sv5, TT_DENSE);
    PAGED(&A), A.t[V] = &bad.dl;
    EXPECT_PAGED(&A, INV,
                 "v: shape (5, 3, 2, 6), expected (num_pages, page_size, Hk, Dv) with dim 0 = 4");
    tt_free(&bad);
    PAGED(&A), A.p.block_table = &su.dl;
    EXPECT_PAGED(&A, INV, "block_table: expected 2 dims (B, max_pages), got 1");
    int64_t s23[2] = {2, 3};
    tt_alloc(&bad, CF_I32, 2, s23, TT_DENSE);
    PAGED(&A), A.p.block_table = &bad.dl;
    EXPECT_PAGED(&A, INV, "block_table: shape (2, 3), expected (B, max_pages) with dim 0 = 3");
    tt_free(&bad);
    int64_t sf[2] = {3, 3};
    tt_alloc(&bad, CF_F32, 2, sf, TT_DENSE);
    PAGED(&A), A.p.block_table = &bad.dl;
    EXPECT_PAGED(&A, INV, "block_table: dtype float32, expected int32");
    tt_free(&bad);
    DLTensor btd = bt.dl;
    btd.device = cuda0;
    PAGED(&A), A.p.block_table = &btd;
    EXPECT_PAGED(&A, INV, "block_table: on cuda, expected host memory (cpu or cuda_host)");
    int64_t bs[2] = {3, 2};
    DLTensor bts = bt.dl;
    bts.shape = sb, bts.strides = bs;
    PAGED(&A), A.p.block_table = &bts;
    EXPECT_PAGED(&A, INV, "block_table: last dimension has stride 2, expected 1");
    b[1] = 4;
    PAGED(&A);
    EXPECT_PAGED(&A, INV, "block_table[0, 1]: 4, expected a page index in [0, 4)");
    b[1] = 0, b[3] = -1;
    PAGED(&A);
    EXPECT_PAGED(&A, INV, "block_table[1, 0]: -1, expected a page index in [0, 4)");
    b[3] = 1;
    cu_k_vals[1] = 10, cu_k_vals[2] = 12, cu_k_vals[3] = 12; /* sequence 0: 10 keys > 3 pages */
    memcpy(var[CUK].base, cu_k_vals, sizeof cu_k_vals);
    PAGED(&A);
    EXPECT_PAGED(&A, INV,
                 "cu_seqlens_k: sequence 0 has 10 keys, more than its 3 pages x page_size 3 hold");
    cu_k_vals[1] = 7, cu_k_vals[2] = 9, cu_k_vals[3] = 9;
    memcpy(var[CUK].base, cu_k_vals, sizeof cu_k_vals);
    PAGED(&A), A.t[CUK] = NULL;
    EXPECT_PAGED(&A, INV, "cu_seqlens_k: is NULL");
    /* used lengths */
    u[0] = 8;
    PAGED(&A), A.p.seqused_k = &su.dl;
    EXPECT_PAGED(&A, INV,
                 "seqused_k[0]: 8, expected 0 <= seqused_k <= 7 (the keys sequence 0 has)");
    PAGED(&A), A.p.seqused_k = &su.dl, A.t[CUK] = NULL; /* bounded by the pages: 3 x 3 */
    u[0] = 10;
    EXPECT_PAGED(&A, INV, "seqused_k[0]: 10, expected 0 <= seqused_k <= 9 (the key positions");
    u[0] = 9; /* page 3 of sequence 0's table entries is in range: valid */
    CHECK_OK(fwd(&A));
    u[0] = 5, u[2] = -1;
    reset(&A, 1), A.p.seqused_k = &su.dl;
    EXPECT_BOTH(&A, INV, "seqused_k[2]: -1, expected 0 <= seqused_k <= 0");
    u[2] = 0;
    reset(&A, 1), A.p.seqused_q = &su.dl; /* q lengths 5, 0, 6: 2 > 0 */
    EXPECT_BOTH(&A, INV,
                "seqused_q[1]: 2, expected 0 <= seqused_q <= 0 (the query rows sequence 1 has)");
    reset(&A, 0), A.p.seqused_q = &su.dl;
    EXPECT_BOTH(&A, INV, "seqused_q: length 3, expected 2");
    int64_t s2[1] = {2};
    tt_alloc(&bad, CF_F32, 1, s2, TT_DENSE);
    reset(&A, 0), A.p.seqused_k = &bad.dl;
    EXPECT_BOTH(&A, INV, "seqused_k: float32 with 1 dims, expected int32 with 1 dim");
    tt_free(&bad);
    tt_alloc(&bad, CF_I32, 1, s2, TT_DENSE);
    ((int32_t*)bad.base)[0] = 8, ((int32_t*)bad.base)[1] = 1; /* batch Sk = 7 */
    reset(&A, 0), A.p.seqused_k = &bad.dl;
    EXPECT_BOTH(&A, INV, "seqused_k[0]: 8, expected 0 <= seqused_k <= 7");
    ((int32_t*)bad.base)[0] = 7;
    CHECK_OK(fwd(&A));
    CHECK_OK(bwd(&A));
    DLTensor sud = bad.dl;
    sud.device = cuda0;
    reset(&A, 0), A.p.seqused_q = &sud;
    EXPECT_BOTH(&A, INV, "seqused_q: on cuda, expected host memory (cpu or cuda_host)");
    tt_free(&bad);
    /* the backward: dk / dv like the pages, each page in one place */
    PAGED(&A), A.t[DK] = &var[DK].dl;
    EXPECT(bwd(&A), INV, "dk: expected 4 dims (num_pages, page_size, Hk, D), like k");
    PAGED(&A), A.t[DV] = &dkp.dl;
    EXPECT(bwd(&A), INV, "dv: shape (4, 3, 2, 8), expected (num_pages, page_size, Hk, Dv)");
    b[3] = 2; /* sequence 1's page is sequence 0's first */
    PAGED(&A);
    CHECK_OK(fwd(&A)); /* the forward may share pages (a common prefix) */
    EXPECT(bwd(&A), INV,
           "block_table[1, 0]: page 2 is also block_table[0, 0]; expected each page in one place");
    b[3] = 1;
#undef PAGED
#undef EXPECT_PAGED
    tt_free(&kp), tt_free(&vp), tt_free(&dkp), tt_free(&dvp), tt_free(&bt), tt_free(&su);
    tt_free(&su2);
}

/* ---- Dropout mask ------------------------------------------------------------------------- */

static void test_dropout_mask(void) {
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    p.dropout_p = 0.5f;
    tt_tensor m, m3, mf;
    int64_t s4[4] = {1, 2, 3, 4}, s3[3] = {2, 3, 4};
    tt_alloc(&m, CF_U8, 4, s4, TT_DENSE);
    tt_alloc(&m3, CF_U8, 3, s3, TT_DENSE);
    tt_alloc(&mf, CF_F32, 4, s4, TT_DENSE);
    uint64_t h = tt_hash(&m) ^ tt_hash(&m3) * 3 ^ tt_hash(&mf) * 5;
    CHECK_ERR(cflash_attn_dropout_mask(NULL, &m.dl), INV, "p: is NULL");
    CHECK_ERR(cflash_attn_dropout_mask(&p, NULL), INV, "mask: is NULL");
    CHECK_ERR(cflash_attn_dropout_mask(&p, &m3.dl), INV,
              "mask: expected 4 dims (B, H, Sq, Sk), got 3");
    CHECK_ERR(cflash_attn_dropout_mask(&p, &mf.dl), INV, "mask: dtype float32, expected uint8");
    DLTensor md = m.dl;
    md.device = cuda0;
    CHECK_ERR(cflash_attn_dropout_mask(&p, &md), INV, "mask: on cuda, expected cpu");
    p.dropout_p = 1.5f;
    CHECK_ERR(cflash_attn_dropout_mask(&p, &m.dl), INV, "dropout_p: 1.5");
    p.dropout_p = 0.5f, p.q_offset = -2;
    CHECK_ERR(cflash_attn_dropout_mask(&p, &m.dl), INV, "q_offset: -2, expected 0 <= q_offset");
    p.q_offset = 0, p.k_offset = ((int64_t)1 << 32) - 3; /* Sk = 4 */
    CHECK_ERR(cflash_attn_dropout_mask(&p, &m.dl), INV,
              "k_offset: 4294967293, expected 0 <= k_offset <= 2^32 - Sk = 4294967292");
    CHECK_MSG((tt_hash(&m) ^ tt_hash(&m3) * 3 ^ tt_hash(&mf) * 5) == h, "mask written on error");
    tt_free(&m), tt_free(&m3), tt_free(&mf);
}

/* ---- Context, backends, explain ----------------------------------------------------------- */

static void test_context_and_dispatch(void) {
    cflash_context* ctx = NULL;
    CHECK_ERR(cflash_context_create(NULL), INV, "ctx: is NULL");
    CHECK_ERR(cflash_context_set_threads(NULL, 1), INV, "ctx: is NULL");
    CHECK_ERR(cflash_context_set_backend(NULL, "cpu-ref"), INV, "ctx: is NULL");
    CHECK_ERR(cflash_context_set_cuda_stream(NULL, NULL), INV, "ctx: is NULL");
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_ERR(cflash_context_set_threads(ctx, -1), INV,
              "threads: -1, expected >= 0 (0 = all cores)");
    CHECK_ERR(cflash_context_set_backend(ctx, "cpu-fast"), INV,
              "backend: unknown name 'cpu-fast', expected auto or one of: cpu-amx");
    CHECK_ERR(cflash_context_set_backend(ctx, "cpu-fast"), INV, "cpu-ref");

    /* A backend forced on a call it cannot serve: UNSUPPORTED, naming it. */
    args A;
    reset(&A, 0);
    CHECK_OK(cflash_context_set_backend(ctx, "cuda-simt"));
    uint64_t h0 = out_hash();
    DLTensor** t = A.t;
    CHECK_ERR(cflash_attn_fwd(ctx, &A.p, t[Q], t[K], t[V], t[OUT], t[LSE]), UNS, "cuda-simt");
    CHECK_ERR(cflash_attn_fwd(ctx, &A.p, t[Q], t[K], t[V], t[OUT], t[LSE]), UNS, "attn_fwd: ");
    CHECK_ERR(
        cflash_attn_bwd(ctx, &A.p, t[DOUT], t[Q], t[K], t[V], t[OUT], t[LSE], t[DQ], t[DK], t[DV]),
        UNS, "attn_bwd: ");
    CHECK_MSG(out_hash() == h0, "an unsupported call wrote caller memory");

    /* CFLASH_BACKEND with a name that is not a backend. */
    setenv("CFLASH_BACKEND", "bogus", 1);
    EXPECT(fwd(&A), INV,
           "backend: 'bogus' (from the context or CFLASH_BACKEND) is not a backend name");
    setenv("CFLASH_BACKEND", "auto", 1);
    CHECK_OK(fwd(&A));
    unsetenv("CFLASH_BACKEND");

    /* explain mode: needs a context; a bad call explained gives the call's error */
    char buf[512];
    CHECK_ERR(cflash_context_set_explain(NULL, buf, sizeof buf), INV,
              "ctx: is NULL, expected a context");
    CHECK_OK(cflash_context_set_backend(ctx, NULL));
    A.p.dropout_p = 2.0f;
    h0 = out_hash();
    CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
    CHECK_ERR(cflash_attn_fwd(ctx, &A.p, t[Q], t[K], t[V], t[OUT], t[LSE]), INV, "dropout_p: 2");
    CHECK_MSG(strstr(buf, "not dispatched: CFLASH_ERR_INVALID_ARGUMENT: dropout_p: 2"),
              "explain: %s", buf);
    CHECK_MSG(out_hash() == h0, "explain wrote caller memory");
    cflash_context_free(ctx);
}

/* ---- Status strings ---------------------------------------------------------------------------
 */

static void test_status(void) {
    CHECK(!strcmp(cflash_status_string(CFLASH_OK), "CFLASH_OK"));
    CHECK(!strcmp(cflash_status_string(INV), "CFLASH_ERR_INVALID_ARGUMENT"));
    CHECK(!strcmp(cflash_status_string(UNS), "CFLASH_ERR_UNSUPPORTED"));
    CHECK(!strcmp(cflash_status_string(CFLASH_ERR_OUT_OF_MEMORY), "CFLASH_ERR_OUT_OF_MEMORY"));
    CHECK(!strcmp(cflash_status_string(CFLASH_ERR_BACKEND), "CFLASH_ERR_BACKEND"));
    CHECK(!strcmp(cflash_status_string(CFLASH_ERR_IO), "CFLASH_ERR_IO"));
    CHECK(!strcmp(cflash_status_string((cflash_status)-77), "CFLASH_ERR_UNKNOWN"));
    /* A success does not clear the last message. */
    args A;
    reset(&A, 0), A.p.window_left = -3;
    CHECK(fwd(&A) == INV);
    reset(&A, 0);
    CHECK_OK(fwd(&A));
    CHECK(strstr(cflash_last_error(), "window_left: -3") != NULL);
}

int main(void) {
    setup();
    setup_features();
    test_valid();
    test_params();
    test_views();
    test_dtypes_devices();
    test_shapes();
    test_alibi();
    test_varlen();
    test_features();
    test_kvcache_refuses();
    test_serving();
    test_dropout_mask();
    test_context_and_dispatch();
    test_status();
    for (int i = 0; i < NT; i++)
        tt_free(&batch[i]), tt_free(&var[i]);
    for (int i = 0; i < NX; i++)
        tt_free(&xt[i]);
    return tt_summary();
}
