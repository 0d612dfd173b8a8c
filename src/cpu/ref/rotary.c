/* Reference rotary embedding (backend cpu-ref): one (row, head) at a time, each pair rotated in
 * fp32 and rounded once. The last fallback and the C twin of the tests' fp64 oracle; every
 * feature, every dtype, any strides; no intrinsics. */
#include "core/backend.h"
#include "core/ops_call.h"
#include "core/status.h"

static inline int64_t at4(const cf_view* v, int64_t b, int64_t s, int64_t h, int64_t d) {
    return b * v->stride[0] + s * v->stride[1] + h * v->stride[2] + d * v->stride[3];
}

/* Rotates (or copies) head h of row s (view row vs) of sequence b at position pos. */
static void rotate_row(const cf_rotary_call* c, int64_t b, int64_t vs, int64_t h, int64_t pos) {
    const int64_t half = c->rd / 2;
    const float sgn = c->conjugate ? -1.0f : 1.0f;
    int64_t d0 = 0;
    if (h < c->nrot) {
        for (int64_t i = 0; i < half; i++) {
            int64_t ia = c->interleaved ? 2 * i : i, ib = c->interleaved ? 2 * i + 1 : i + half;
            float co = cf_load(c->cos.data, c->cos.dtype, pos * c->cos.stride[0] + i);
            float si = sgn * cf_load(c->sin.data, c->sin.dtype, pos * c->sin.stride[0] + i);
            float a = cf_load(c->x.data, c->dtype, at4(&c->x, b, vs, h, ia));
            float bb = cf_load(c->x.data, c->dtype, at4(&c->x, b, vs, h, ib));
            cf_store(c->out.data, c->dtype, at4(&c->out, b, vs, h, ia), a * co - bb * si);
            cf_store(c->out.data, c->dtype, at4(&c->out, b, vs, h, ib), a * si + bb * co);
        }
        d0 = c->rd;
    }
    if (c->inplace) return;
    for (int64_t d = d0; d < c->D; d++)
        cf_store(c->out.data, c->dtype, at4(&c->out, b, vs, h, d),
                 cf_load(c->x.data, c->dtype, at4(&c->x, b, vs, h, d)));
}

static cflash_status ref_rotary_run(const void* call) {
    const cf_rotary_call* c = call;
    const int64_t rows = c->B * c->S;
#pragma omp parallel for num_threads(c->threads) schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; r++) {
        int64_t b = r / c->S, s = r % c->S, s0, len, off;
        cf_rotary_seq(c, b, &s0, &len, &off);
        if (s >= len) continue;
        for (int64_t h = 0; h < c->H; h++)
            rotate_row(c, b, s0 + s, h, off + s);
    }
    return CFLASH_OK;
}

const cf_impl cf_impl_ref_rotary = {
    .backend = "cpu-ref",
    .op = CFLASH_OP_ROTARY,
    .device_type = kDLCPU,
    .supports = NULL,
    .run = ref_rotary_run,
};
