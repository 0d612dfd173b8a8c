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

static uint64_t out_hash(void) {
    uint64_t h = 0;
    for (int i = 0; i < NT; i++)
        h = h * 31 + tt_hash(&batch[i]) + 7 * tt_hash(&var[i]);
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
    test_valid();
    test_params();
    test_views();
    test_dtypes_devices();
    test_shapes();
    test_alibi();
    test_varlen();
    test_dropout_mask();
    test_context_and_dispatch();
    test_status();
    for (int i = 0; i < NT; i++)
        tt_free(&batch[i]), tt_free(&var[i]);
    return tt_summary();
}
