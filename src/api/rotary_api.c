/* Rotary embedding entry points: validate every argument before any work, build the
 * cf_rotary_call, dispatch. Also the cos/sin table builder (a plain CPU computation). */
#include <math.h>
#include <string.h>

#include "api/context.h"
#include "api/ops_api.h"
#include "core/checked.h"
#include "core/status.h"
#include "core/threads.h"

#define INVALID CFLASH_ERR_INVALID_ARGUMENT

void cflash_rotary_params_init(cflash_rotary_params* p) {
    if (p) memset(p, 0, sizeof *p);
}

void cflash_rotary_table_params_init(cflash_rotary_table_params* p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->base = 10000.0;
    p->interpolation_factor = 1.0;
}

/* cu_seqlens: int32 [B + 1], starts at 0, non-decreasing, ends at most at total. */
static cflash_status check_cu(const DLTensor* t, int64_t total, int64_t* B, const int32_t** cu,
                              int64_t* maxlen) {
    cf_view c;
    CFLASH_FORWARD_IF_ERROR(cf_ops_index(&c, t, "cu_seqlens", -1));
    CFLASH_RETURN_IF(c.shape[0] < 1, INVALID, "cu_seqlens: length 0, expected B + 1 >= 1");
    const int32_t* v = c.data;
    CFLASH_RETURN_IF(v[0] != 0, INVALID, "cu_seqlens[0]: %d, expected 0", v[0]);
    int64_t mx = 0;
    for (int64_t b = 0; b + 1 < c.shape[0]; b++) {
        CFLASH_RETURN_IF(v[b + 1] < v[b], INVALID,
                         "cu_seqlens[%lld]: %d is less than cu_seqlens[%lld] = %d, expected "
                         "non-decreasing",
                         (long long)(b + 1), v[b + 1], (long long)b, v[b]);
        if (v[b + 1] - v[b] > mx) mx = v[b + 1] - v[b];
    }
    CFLASH_RETURN_IF(v[c.shape[0] - 1] > total, INVALID,
                     "cu_seqlens[%lld]: %d, expected at most total = %lld (rows of x)",
                     (long long)(c.shape[0] - 1), v[c.shape[0] - 1], (long long)total);
    *B = c.shape[0] - 1;
    *cu = v;
    *maxlen = mx;
    return CFLASH_OK;
}

static void lift(cf_view* v) { /* (total, h, d) -> (1, total, h, d) */
    for (int i = 3; i > 0; i--)
        v->shape[i] = v->shape[i - 1], v->stride[i] = v->stride[i - 1];
    v->shape[0] = 1;
    v->stride[0] = 0;
    v->ndim = 4;
}

static cflash_status rotary_apply(cflash_context* ctx, const cflash_rotary_params* p,
                                  const DLTensor* x, const DLTensor* cos, const DLTensor* sin,
                                  DLTensor* out) {
    cflash_rotary_params defaults;
    if (!p) {
        cflash_rotary_params_init(&defaults);
        p = &defaults;
    }
    cf_rotary_call c;
    memset(&c, 0, sizeof c);
    int varlen = p->cu_seqlens != NULL;
    const char* xl = varlen ? "(total, H, D)" : "(B, S, H, D)";
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.x, x, "x", varlen ? 3 : 4, NULL, xl));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.x, "x", NULL, NULL));
    int o = varlen ? 1 : 0;
    c.H = c.x.shape[2 - o];
    c.D = c.x.shape[3 - o];
    c.dtype = c.x.dtype;
    c.device_type = c.x.device_type;
    c.device_id = c.x.device_id;

    const int64_t any2[2] = {-1, -1};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.cos, cos, "cos", 2, any2, "(S_ro, rotary_dim / 2)"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.cos, "cos", &c.x, "x"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_dtype_in(&c.cos, "cos", c.dtype, "float32 or the dtype of x"));
    const int64_t want_sin[2] = {c.cos.shape[0], c.cos.shape[1]};
    CFLASH_FORWARD_IF_ERROR(
        cf_ops_shape(&c.sin, sin, "sin", 2, want_sin, "(S_ro, rotary_dim / 2), the shape of cos"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.sin, "sin", &c.x, "x"));
    CFLASH_RETURN_IF(c.sin.dtype != c.cos.dtype, INVALID,
                     "sin: dtype %s, expected %s (that of cos)", cf_dtype_name(c.sin.dtype),
                     cf_dtype_name(c.cos.dtype));
    if (cf_mul_i64(2, c.cos.shape[1], &c.rd)) c.rd = INT64_MAX; /* (fails the check below) */
    CFLASH_RETURN_IF(c.rd < 2 || c.rd > c.D, INVALID,
                     "cos: rotary_dim = 2 * %lld = %lld, expected 2 <= rotary_dim <= head dim %lld",
                     (long long)c.cos.shape[1], (long long)c.rd, (long long)c.D);

    CFLASH_RETURN_IF(p->num_heads < 0 || p->num_heads > c.H, INVALID,
                     "num_heads: %lld, expected 0 (all) .. %lld (the heads of x)",
                     (long long)p->num_heads, (long long)c.H);
    c.nrot = p->num_heads ? p->num_heads : c.H;
    c.interleaved = p->interleaved != 0;
    c.conjugate = p->conjugate != 0;

    int64_t maxlen = 0;
    if (varlen) {
        CFLASH_FORWARD_IF_ERROR(check_cu(p->cu_seqlens, c.x.shape[0], &c.B, &c.cu, &maxlen));
        CFLASH_RETURN_IF(p->max_seqlen < 0 || (p->max_seqlen > 0 && p->max_seqlen < maxlen),
                         INVALID,
                         "max_seqlen: %lld, expected 0 (from cu_seqlens) or >= %lld (the longest "
                         "sequence)",
                         (long long)p->max_seqlen, (long long)maxlen);
        c.S = maxlen;
        c.varlen = 1;
        lift(&c.x);
    } else {
        c.B = c.x.shape[0];
        c.S = c.x.shape[1];
    }

    CFLASH_RETURN_IF(p->seqlen_offset < 0, INVALID, "seqlen_offset: %lld, expected >= 0",
                     (long long)p->seqlen_offset);
    c.offset = p->seqlen_offset;
    if (p->seqlen_offsets) {
        cf_view ov;
        CFLASH_FORWARD_IF_ERROR(cf_ops_index(&ov, p->seqlen_offsets, "seqlen_offsets", c.B));
        c.offsets = ov.data;
        for (int64_t b = 0; b < c.B; b++)
            CFLASH_RETURN_IF(c.offsets[b] < 0, INVALID, "seqlen_offsets[%lld]: %d, expected >= 0",
                             (long long)b, c.offsets[b]);
    }
    /* Every position used, offset + row, must have a cos/sin row: offset + len <= S_ro (the
     * sum checked: an offset near INT64_MAX would wrap it). One check covers every batch when the
     * offset and length are the same for all. */
    const int64_t nchk = c.offsets || c.varlen ? c.B : c.B > 0;
    for (int64_t b = 0; b < nchk; b++) {
        int64_t s0, len, off, end;
        cf_rotary_seq(&c, b, &s0, &len, &off);
        if (len == 0) continue;
        CFLASH_RETURN_IF(cf_add_i64(off, len, &end), INVALID,
                         "cos: %lld rows, but sequence %lld needs positions from offset %lld "
                         "over %lld rows, past INT64_MAX; expected offset + length <= S_ro",
                         (long long)c.cos.shape[0], (long long)b, (long long)off, (long long)len);
        CFLASH_RETURN_IF(end > c.cos.shape[0], INVALID,
                         "cos: %lld rows, but sequence %lld needs positions up to %lld "
                         "(offset %lld + length %lld - 1); expected S_ro > %lld",
                         (long long)c.cos.shape[0], (long long)b, (long long)(end - 1),
                         (long long)off, (long long)len, (long long)(end - 1));
    }

    if (!out || (out->data == x->data && out->byte_offset == x->byte_offset)) {
        c.out = c.x;
        c.inplace = 1;
        CFLASH_FORWARD_IF_ERROR(cf_check_output(x, "x (rotated in place)"));
        if (out) { /* same memory: it must be the same view */
            cf_view ov;
            CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&ov, out, "out", x->ndim, x->shape, xl));
            CFLASH_RETURN_IF(ov.dtype != c.dtype, INVALID,
                             "out: dtype %s, expected %s (the dtype of x)", cf_dtype_name(ov.dtype),
                             cf_dtype_name(c.dtype));
            for (int i = 0; i < x->ndim; i++)
                CFLASH_RETURN_IF(x->shape[i] > 1 && ov.stride[i] != c.x.stride[i + o], INVALID,
                                 "out: shares x's memory with stride[%d] = %lld != %lld; expected "
                                 "the same view (in place) or separate memory",
                                 i, (long long)ov.stride[i], (long long)c.x.stride[i + o]);
        }
    } else {
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.out, out, "out", x->ndim, x->shape, xl));
        CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.out, "out", &c.x, "x"));
        CFLASH_RETURN_IF(c.out.dtype != c.dtype, INVALID,
                         "out: dtype %s, expected %s (the dtype of x)", cf_dtype_name(c.out.dtype),
                         cf_dtype_name(c.dtype));
        CFLASH_FORWARD_IF_ERROR(cf_check_output(out, "out"));
        if (varlen) lift(&c.out);
        /* out of place: out must not partly overlap x (in place is the same view, above) */
        CFLASH_FORWARD_IF_ERROR(cf_check_apart(&c.out, "out", &c.x, "x"));
        CFLASH_FORWARD_IF_ERROR(cf_check_apart(&c.out, "out", &c.cos, "cos"));
        CFLASH_FORWARD_IF_ERROR(cf_check_apart(&c.out, "out", &c.sin, "sin"));
    }
    /* x read and out written, row by row (x's view: (B or 1, rows, H, D)). */
    c.threads = cf_threads_resolve("rotary", cf_context_threads(ctx),
                                   2.0 * (double)c.x.shape[0] * (double)c.x.shape[1] * (double)c.H *
                                       (double)c.D * (double)cf_dtype_size(c.dtype),
                                   0);
    c.stream = ctx ? ctx->cuda_stream : NULL;
    return cf_context_dispatch(ctx, CFLASH_OP_ROTARY, c.device_type, &c,
                               c.B == 0 || c.S == 0 || c.H == 0 || c.D == 0);
}

cflash_status cflash_rotary_apply(cflash_context* ctx, const cflash_rotary_params* p,
                                  const DLTensor* x, const DLTensor* cos, const DLTensor* sin,
                                  DLTensor* out) {
    return cf_context_end_call(ctx, rotary_apply(ctx, p, x, cos, sin, out));
}

/* ---- cos/sin tables ----------------------------------------------------------------------- */

cflash_status cflash_rotary_tables(const cflash_rotary_table_params* p, DLTensor* cos_t,
                                   DLTensor* sin_t) {
    cflash_rotary_table_params defaults;
    if (!p) {
        cflash_rotary_table_params_init(&defaults);
        p = &defaults;
    }
    CFLASH_RETURN_IF(!(p->base > 0.0) || !isfinite(p->base), INVALID,
                     "base: %g, expected a finite value > 0 (10000 is usual)", p->base);
    CFLASH_RETURN_IF(!(p->interpolation_factor > 0.0) || !isfinite(p->interpolation_factor),
                     INVALID, "interpolation_factor: %g, expected a finite value > 0 (1 = none)",
                     p->interpolation_factor);
    cf_view cv, sv;
    const int64_t any2[2] = {-1, -1};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&cv, cos_t, "cos", 2, any2, "(S_ro, rotary_dim / 2)"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&cv, "cos", NULL, NULL));
    CFLASH_RETURN_IF(cv.device_type != kDLCPU, INVALID, "cos: on %s, expected cpu",
                     cf_device_name(cv.device_type));
    const int64_t want[2] = {cv.shape[0], cv.shape[1]};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&sv, sin_t, "sin", 2, want, "(S_ro, rotary_dim / 2)"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&sv, "sin", &cv, "cos"));
    CFLASH_RETURN_IF(sv.dtype != cv.dtype, INVALID, "sin: dtype %s, expected %s (that of cos)",
                     cf_dtype_name(sv.dtype), cf_dtype_name(cv.dtype));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(cos_t, "cos"));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(sin_t, "sin"));
    const int32_t* pos = NULL;
    if (p->positions) {
        cf_view pv;
        CFLASH_FORWARD_IF_ERROR(cf_ops_index(&pv, p->positions, "positions", cv.shape[0]));
        pos = pv.data;
    }
    const int64_t half = cv.shape[1];
    /* an empty table writes nothing, and its other dim may be huge: a row loop over S_ro = 2^62
     * rows of no element never ended (found by the fuzzer) */
    if (half == 0 || cv.shape[0] == 0) return CFLASH_OK;
    const double rd = 2.0 * (double)half;
    for (int64_t r = 0; r < cv.shape[0]; r++) {
        /* (in double: position_start + r may pass INT64_MAX) */
        double t = (pos ? (double)pos[r] : (double)p->position_start + (double)r) /
                   p->interpolation_factor;
        for (int64_t i = 0; i < half; i++) {
            double a = t * pow(p->base, -2.0 * (double)i / rd);
            cf_store(cv.data, cv.dtype, r * cv.stride[0] + i, (float)cos(a));
            cf_store(sv.data, sv.dtype, r * sv.stride[0] + i, (float)sin(a));
        }
    }
    return CFLASH_OK;
}
