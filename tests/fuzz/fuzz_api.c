/* libFuzzer target over every public entry point of cflash.h: the input bytes choose the call
 * (attention fwd / bwd / varlen, KV cache, rotary, rotary tables, norm fwd / bwd, merge, dropout
 * mask, each in explain mode too; issue 13's sinks, bias, masks, block lists, chunks, pages,
 * used lengths, varlen KV-cache queries and quantized caches; the context calls, report, names and
 * versions, library directories (invalid ones only: a valid one stays for the process)), its
 * shapes, dtypes, strides (negative, zero, huge), offsets, devices, parameters and index tensors.
 * Every tensor lives in a buffer of exactly the bytes its view reaches, so ASan sees any access
 * outside a view; the oracle checks that the status is a valid code with a message, that a failing
 * call wrote nothing, that a successful one wrote nothing outside its output views and no input,
 * and that a rerun gives the same bytes. Built by `make fuzz` / `make test` (stage test-fuzz) with
 * clang; see README "Fuzzing". */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cflash.h"

/* ---- Input bytes ------------------------------------------------------------------------- */

typedef struct src {
    const uint8_t* p;
    size_t n;
} src;

/* The next `bytes` bytes as an unsigned value (0 once the input is exhausted). */
static uint64_t take(src* s, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes && s->n; i++, s->p++, s->n--)
        v |= (uint64_t)*s->p << (8 * i);
    return v;
}
/* lo + (next byte(s) mod range): inclusive. */
static int64_t pick(src* s, int64_t lo, int64_t hi) {
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(take(s, span > 256 ? 2 : 1) % span);
}
static int one_in(src* s, int n) {
    return take(s, 1) % (unsigned)n == 0;
}

/* A caller int64 that is usually `usual`, sometimes one of the values that break arithmetic. */
static int64_t hostile_i64(src* s, int64_t usual) {
    static const int64_t bad[] = {0,
                                  -1,
                                  1,
                                  INT64_MAX,
                                  INT64_MAX - 1,
                                  INT64_MIN,
                                  INT64_C(1) << 62,
                                  -(INT64_C(1) << 62),
                                  INT64_C(1) << 40,
                                  INT64_C(1) << 31,
                                  (INT64_C(1) << 32) + 1,
                                  INT32_MAX,
                                  1000};
    if (!one_in(s, 12)) return usual;
    return bad[take(s, 1) % (sizeof bad / sizeof bad[0])];
}
static float hostile_f32(src* s, float usual) {
    static const float bad[] = {0.0f, -1.0f, NAN, INFINITY, -INFINITY, 1e30f, 1e-30f, 0.5f, 2.0f};
    if (!one_in(s, 10)) return usual;
    return bad[take(s, 1) % (sizeof bad / sizeof bad[0])];
}

/* ---- Tensors ------------------------------------------------------------------------------ */

enum {
    DT_F32,
    DT_F16,
    DT_BF16,
    DT_I32,
    DT_U8,
    DT_F64,
    DT_BF16X2,
    DT_I64,
    DT_I8,
    DT_BOOL,
    DT_COUNT
};
static DLDataType dl_dtype(int d) {
    DLDataType t = {kDLFloat, 32, 1};
    switch (d) {
    case DT_F16: t.bits = 16; break;
    case DT_BF16: t.code = kDLBfloat, t.bits = 16; break;
    case DT_I32: t.code = kDLInt; break;
    case DT_U8: t.code = kDLUInt, t.bits = 8; break;
    case DT_F64: t.bits = 64; break;
    case DT_BF16X2: t.code = kDLBfloat, t.bits = 16, t.lanes = 2; break;
    case DT_I64: t.code = kDLInt, t.bits = 64; break;
    case DT_I8: t.code = kDLInt, t.bits = 8; break;
    case DT_BOOL: t.code = 6, t.bits = 8; break; /* kDLBool in newer headers */
    default: break;
    }
    return t;
}
static int elem_size(DLDataType t) {
    int b = t.bits * t.lanes / 8;
    return b > 0 ? b : 1;
}

#define CAP_BYTES ((int64_t)1 << 20) /* largest buffer allocated for one tensor */
#define MAX_NUMEL ((int64_t)1 << 18) /* most elements of one (non-empty) tensor */
#define MAX_T 24                     /* tensors of one call */

enum { IN = 0, OUT = 1, INOUT = 2 };

typedef struct ft {
    DLTensor dl;
    int64_t shape[8], strides[8];
    unsigned char* base; /* the allocation (exactly `bytes`); NULL for a data-NULL tensor */
    size_t bytes;
    unsigned char* before; /* the allocation's bytes before the call */
    unsigned char* after;  /* after the first call (for the rerun) */
    int role, present;
} ft;

typedef struct call {
    ft t[MAX_T];
    int n;
} call;

/* Element offsets [*lo, *hi] a view reaches; 0 on overflow or a bad shape. */
static int view_span(const ft* t, int64_t* lo, int64_t* hi, int64_t* numel) {
    *lo = *hi = 0;
    *numel = 1;
    if (t->dl.ndim < 1 || t->dl.ndim > 6) return 0;
    for (int i = 0; i < t->dl.ndim; i++) {
        if (t->shape[i] < 0) return 0;
        if (t->shape[i] == 0) *numel = 0;
    }
    for (int i = 0; i < t->dl.ndim && *numel; i++)
        if (__builtin_mul_overflow(*numel, t->shape[i], numel)) return 0;
    if (*numel == 0) return 1;
    for (int i = 0; i < t->dl.ndim; i++) {
        int64_t span;
        if (__builtin_mul_overflow(t->strides[i], t->shape[i] - 1, &span)) return 0;
        if (__builtin_add_overflow(span < 0 ? *lo : *hi, span, span < 0 ? lo : hi)) return 0;
    }
    return 1;
}

/* Fills n float values (or int32 / uint8) at data with values from seed, a few special. */
static void fill_values(void* data, DLDataType dt, int64_t n, uint64_t seed, int special) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        float f = (float)((int64_t)(x % 4001) - 2000) / 1000.0f;
        if (special && x % 97 == 0) {
            static const float sp[] = {NAN, INFINITY, -INFINITY, 6e4f, -6e4f, 1e30f, 1e-40f};
            f = sp[(x >> 8) % 7];
        }
        if (dt.code == kDLFloat && dt.bits == 32)
            memcpy((char*)data + 4 * i, &f, 4);
        else if (dt.code == kDLFloat && dt.bits == 16 && dt.lanes == 1) {
            uint16_t h = (uint16_t)(((x >> 16) & 0x3fff) | ((x >> 40) & 1) << 15); /* |h| < 2 */
            if (special && x % 97 == 0) h = (uint16_t)((x >> 24) | 0x7c00);
            memcpy((char*)data + 2 * i, &h, 2);
        } else if (dt.code == kDLBfloat && dt.lanes == 1) {
            uint32_t u;
            memcpy(&u, &f, 4);
            uint16_t h = (uint16_t)(u >> 16);
            memcpy((char*)data + 2 * i, &h, 2);
        } else {
            unsigned char* b = (unsigned char*)data + (size_t)i * (size_t)elem_size(dt);
            for (int k = 0; k < elem_size(dt); k++)
                b[k] = (unsigned char)(x >> (8 * k));
        }
    }
}

/* With strides NULL: the dense strides the library assumes, in t->strides (for the checks). */
static void implicit_strides(ft* t) {
    if (t->dl.strides) return;
    int64_t d = 1;
    for (int i = t->dl.ndim - 1; i >= 0 && i < 8; i--) {
        t->strides[i] = d;
        if (__builtin_mul_overflow(d, t->shape[i] > 0 ? t->shape[i] : 1, &d)) d = 1;
    }
}

/* A tensor for argument role, meant to have `ndim` dims `want` and dtype `dt` (a DT_*); the
 * input may change any of that, and the layout. Returns the DLTensor (NULL when absent). */
static DLTensor* mk(call* c, src* s, int role, int ndim, const int64_t* want, int dt) {
    if (c->n >= MAX_T) return NULL;
    ft* t = &c->t[c->n++];
    memset(t, 0, sizeof *t);
    t->role = role;
    t->present = 1;
    const int want_n = ndim;
    if (one_in(s, 24)) ndim = (int)pick(s, 0, 7); /* wrong rank, 0 and 7 included */
    if (one_in(s, 24)) dt = (int)pick(s, 0, DT_COUNT - 1);
    t->dl.ndim = ndim;
    t->dl.dtype = dl_dtype(dt);
    t->dl.device.device_type = kDLCPU;
    if (one_in(s, 48)) t->dl.device.device_type = one_in(s, 2) ? kDLCUDA : (int)pick(s, 0, 16);
    if (one_in(s, 48)) t->dl.device.device_id = (int)pick(s, 0, 3);
    for (int i = 0; i < ndim && i < 8; i++)
        t->shape[i] = hostile_i64(s, one_in(s, 20) || i >= want_n ? pick(s, 0, 9) : want[i]);
    t->dl.shape = t->shape;
    /* strides: dense (implicit or explicit), padded, permuted (two dims swapped in memory),
     * negative, zero, huge or arbitrary in one dim, a non-contiguous last dim */
    const int layout = (int)pick(s, 0, 9);
    const int k = ndim > 0 ? (int)pick(s, 0, ndim - 1) : 0;
    int order[8]; /* memory order, outermost first */
    for (int i = 0; i < 8; i++)
        order[i] = i;
    if (layout == 3 && k + 1 < ndim) order[k] = k + 1, order[k + 1] = k;
    int64_t dense = 1;
    for (int r = ndim - 1; r >= 0 && r < 8; r--) {
        const int d = order[r];
        t->strides[d] = dense;
        int64_t n = t->shape[d] > 0 ? t->shape[d] : 1, pad = layout == 2 ? pick(s, 0, 3) : 0;
        if (__builtin_mul_overflow(dense, n, &dense) || __builtin_add_overflow(dense, pad, &dense))
            dense = 1;
    }
    if (layout == 4 && ndim > 0) t->strides[k] = -t->strides[k];
    if (layout == 5 && ndim > 0) t->strides[k] = 0;
    if (layout == 6 && ndim > 0) t->strides[k] = hostile_i64(s, t->strides[k]);
    if (layout == 7 && ndim > 0) t->strides[ndim - 1] = 2;
    if (layout == 8 && ndim > 0) t->strides[k] = (int64_t)take(s, 8);
    t->dl.strides = (layout == 0 && !one_in(s, 4)) ? NULL : t->strides;
    implicit_strides(t);
    int64_t lo, hi, numel;
    const int es = elem_size(t->dl.dtype);
    /* A valid view larger than a buffer here (MAX_NUMEL elements, CAP_BYTES bytes) would pass
     * the library's checks and be written: its largest dims shrink until it fits (huge dims
     * stay on empty views and on views whose extent wraps, which the library must reject). */
    while (view_span(t, &lo, &hi, &numel) && numel > 0) {
        int64_t reach, big = -1, most = 0;
        if (numel <= MAX_NUMEL && !__builtin_sub_overflow(hi, lo, &reach) && reach < CAP_BYTES / es)
            break;
        for (int i = 0; i < ndim; i++)
            if (t->shape[i] > most) most = t->shape[i], big = i;
        t->shape[big] = t->shape[big] / 2 + t->shape[big] % 2; /* halved, rounded up */
        implicit_strides(t);
    }
    int64_t bytes = 0;
    int64_t reach = 0;
    int ok = view_span(t, &lo, &hi, &numel) && !__builtin_sub_overflow(hi, lo, &reach) &&
             reach < CAP_BYTES && !__builtin_mul_overflow(reach + 1, es, &bytes) &&
             bytes <= CAP_BYTES;
    if (ok && numel == 0 && one_in(s, 2)) { /* empty with no data */
        t->dl.data = NULL;
        t->base = NULL;
        return &t->dl;
    }
    if (!ok) { /* a view no buffer can hold: a small one; the call must reject it */
        t->bytes = 16;
        t->base = malloc(16);
        memset(t->base, 0x5a, 16);
        t->dl.data = t->base;
        t->dl.byte_offset = one_in(s, 2) ? (uint64_t)take(s, 8) : 0;
        return &t->dl;
    }
    if (numel == 0) lo = hi = 0, bytes = es;
    t->bytes = (size_t)bytes;
    t->base = malloc(t->bytes);
    /* element 0 at -lo elements from the start; split between data and byte_offset */
    const uint64_t off = (uint64_t)(-lo) * (uint64_t)es;
    if (one_in(s, 2)) {
        t->dl.data = t->base;
        t->dl.byte_offset = off;
    } else {
        t->dl.data = t->base + off;
        t->dl.byte_offset = 0;
    }
    /* an offset past the top of the address space (one that stays inside it would be a valid
     * view of memory this buffer does not own: the library cannot know) */
    if (one_in(s, 64)) t->dl.byte_offset = UINT64_MAX - (uint64_t)pick(s, 0, 255);
    if (role == OUT)
        memset(t->base, 0xa5, t->bytes); /* poison */
    else
        fill_values(t->base, t->dl.dtype, (int64_t)(t->bytes / (size_t)es), take(s, 4),
                    one_in(s, 8));
    return &t->dl;
}

/* An optional tensor: absent (NULL) unless the input says otherwise. */
static DLTensor* opt(call* c, src* s, int role, int ndim, const int64_t* want, int dt, int odds) {
    return one_in(s, odds) ? mk(c, s, role, ndim, want, dt) : NULL;
}

/* int32 index tensor [n] with values: valid cumulative lengths up to total (kind 0), values in
 * [lo, hi] (kind 1), or raw bytes (kind 2). */
static DLTensor* idx(call* c, src* s, int64_t n, int64_t total, int64_t lo, int64_t hi,
                     int cumulative) {
    const int64_t want[1] = {n};
    DLTensor* d = mk(c, s, IN, 1, want, DT_I32);
    ft* t = &c->t[c->n - 1];
    if (!d || !t->base || !(d->dtype.code == kDLInt && d->dtype.bits == 32) || d->ndim != 1 ||
        t->bytes < 4)
        return d;
    int32_t* v = (int32_t*)t->base;
    const size_t cnt = t->bytes / 4;
    const int kind = (int)pick(s, 0, 5);
    for (size_t i = 0; i < cnt; i++) {
        if (kind <= 2 && cumulative) {
            int64_t x = i == 0 ? 0 : v[i - 1] + pick(s, 0, total > 0 ? total : 1);
            if (x > total) x = total;
            v[i] = (int32_t)x;
        } else if (kind <= 4) {
            v[i] = (int32_t)pick(s, lo, hi);
        } else {
            v[i] = (int32_t)take(s, 4);
        }
    }
    return d;
}

/* int32 tensor of ndim dims `want` with values in [lo, hi] (now and then raw bytes). */
static DLTensor* idx_nd(call* c, src* s, int ndim, const int64_t* want, int64_t lo, int64_t hi) {
    DLTensor* d = mk(c, s, IN, ndim, want, DT_I32);
    ft* t = &c->t[c->n - 1];
    if (!d || !t->base || !(d->dtype.code == kDLInt && d->dtype.bits == 32) || t->bytes < 4)
        return d;
    const int raw = one_in(s, 8);
    for (size_t i = 0; i < t->bytes / 4; i++)
        ((int32_t*)t->base)[i] = raw ? (int32_t)take(s, 4) : (int32_t)pick(s, lo, hi);
    return d;
}

/* Copies every buffer into before (after = 0) or after (after = 1). */
static void snapshot(call* c, int after) {
    for (int i = 0; i < c->n; i++) {
        ft* t = &c->t[i];
        if (!t->base) continue;
        unsigned char** dst = after ? &t->after : &t->before;
        *dst = malloc(t->bytes);
        memcpy(*dst, t->base, t->bytes);
    }
}

static void free_call(call* c) {
    for (int i = 0; i < c->n; i++)
        free(c->t[i].base), free(c->t[i].before), free(c->t[i].after);
}

/* CFLASH_FUZZ_VERBOSE=1: each call's op and tensors on stderr (to read a finding). */
static void describe(const call* c, int op, int explain) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("CFLASH_FUZZ_VERBOSE") != NULL;
    if (!verbose) return;
    fprintf(stderr, "op %d%s, %d tensors\n", op, explain ? " (explain)" : "", c->n);
    for (int i = 0; i < c->n; i++) {
        const ft* t = &c->t[i];
        fprintf(stderr, "  [%d] role %d dtype %d/%d/%d dev %d ndim %d shape", i, t->role,
                t->dl.dtype.code, t->dl.dtype.bits, t->dl.dtype.lanes, t->dl.device.device_type,
                t->dl.ndim);
        for (int d = 0; d < t->dl.ndim && d < 8; d++)
            fprintf(stderr, " %lld", (long long)t->shape[d]);
        fprintf(stderr, " strides%s", t->dl.strides ? "" : " (NULL)");
        for (int d = 0; d < t->dl.ndim && d < 8; d++)
            fprintf(stderr, " %lld", (long long)t->strides[d]);
        fprintf(stderr, " offset %llu bytes %zu data %s\n", (unsigned long long)t->dl.byte_offset,
                t->bytes, t->dl.data ? "yes" : "NULL");
    }
}

/* ---- The oracle ------------------------------------------------------------------------- */

static void finding(const char* what, const char* detail) {
    fprintf(stderr, "cflash_fuzz: %s: %s\n", what, detail);
    abort(); /* libFuzzer records the input */
}

/* Marks the bytes of every element of t's view in mark (t->bytes long). 0 when too many. */
static int mark_elements(const ft* t, unsigned char* mark) {
    int64_t lo, hi, numel;
    if (!view_span(t, &lo, &hi, &numel) || numel > ((int64_t)1 << 22)) return 0;
    /* addresses as integers: a hostile view the call accepted must not make this undefined */
    const int es = elem_size(t->dl.dtype);
    const uintptr_t e0 = (uintptr_t)t->dl.data + (uintptr_t)t->dl.byte_offset;
    const uintptr_t b0 = (uintptr_t)t->base, b1 = b0 + t->bytes;
    int64_t idx[8] = {0};
    for (int64_t n = 0; n < numel; n++) {
        int64_t off = 0;
        for (int i = 0; i < t->dl.ndim; i++)
            off += idx[i] * t->strides[i];
        const uintptr_t p = e0 + (uintptr_t)off * (uintptr_t)es;
        if (p < b0 || p + (uintptr_t)es > b1) return 0; /* not this buffer's */
        memset(mark + (p - b0), 1, (size_t)es);
        for (int i = t->dl.ndim - 1; i >= 0 && ++idx[i] == t->shape[i]; i--)
            idx[i] = 0;
    }
    return 1;
}

static void check_status(cflash_status s) {
    if (s != CFLASH_OK && s != CFLASH_ERR_INVALID_ARGUMENT && s != CFLASH_ERR_UNSUPPORTED &&
        s != CFLASH_ERR_OUT_OF_MEMORY && s != CFLASH_ERR_BACKEND && s != CFLASH_ERR_IO)
        finding("status", "not a cflash_status code");
    const char* e = cflash_last_error();
    if (!e) finding("cflash_last_error", "NULL");
    if (s != CFLASH_OK && !e[0]) finding("error", "a failing call left no message");
    if (!cflash_status_string(s)) finding("cflash_status_string", "NULL");
}

/* After the first call: inputs unchanged; on error (or explain) every buffer unchanged; on
 * success nothing outside the output views changed. */
static void check_writes(call* c, cflash_status s, int writes) {
    for (int i = 0; i < c->n; i++) {
        ft* t = &c->t[i];
        if (!t->base || !memcmp(t->base, t->before, t->bytes)) continue;
        char msg[160];
        snprintf(msg, sizeof msg, "tensor %d (role %d, ndim %d): %s", i, t->role, t->dl.ndim,
                 t->role == IN               ? "an input was modified"
                 : s != CFLASH_OK || !writes ? "modified by a call that failed or only explains"
                                             : "bytes outside the view modified");
        if (t->role == IN || s != CFLASH_OK || !writes) finding("write", msg);
        unsigned char* mark = calloc(t->bytes, 1);
        if (mark_elements(t, mark))
            for (size_t b = 0; b < t->bytes; b++)
                if (!mark[b] && t->base[b] != t->before[b]) finding("write", msg);
        free(mark);
    }
}

/* Before the rerun: every buffer back to its state before the first call. */
static void restore(call* c) {
    for (int i = 0; i < c->n; i++)
        if (c->t[i].base) memcpy(c->t[i].base, c->t[i].before, c->t[i].bytes);
}

static void check_rerun(call* c, cflash_status s1, cflash_status s2) {
    if (s1 != s2) finding("rerun", "a different status");
    for (int i = 0; i < c->n; i++) {
        ft* t = &c->t[i];
        if (t->base && memcmp(t->base, t->after, t->bytes)) {
            char msg[96];
            snprintf(msg, sizeof msg, "tensor %d (role %d): different bytes", i, t->role);
            finding("rerun", msg);
        }
    }
}

/* ---- The calls ------------------------------------------------------------------------- */

enum {
    OP_FWD,
    OP_BWD,
    OP_VFWD,
    OP_VBWD,
    OP_KV,
    OP_ROT,
    OP_TABLES,
    OP_NFWD,
    OP_NBWD,
    OP_MERGE,
    OP_MASK,
    OP_FAR,
    OP_CTX,
    OP_COUNT
};

typedef struct args {
    int op, explain;
    cflash_attn_params ap;
    cflash_kvcache_params kp;
    cflash_rotary_params rp;
    cflash_rotary_table_params tp;
    cflash_norm_params np;
    DLTensor* a[16];
    int64_t mq, mk;
    double margin; /* OP_FAR */
    int no_flags;
} args;

static cflash_status invoke(cflash_context* ctx, args* x, char* buf, size_t len) {
    DLTensor** a = x->a;
    /* explain mode for the one call that follows (on a context: ctx NULL is an error; len 0
     * clears the mode, and the call runs for real) */
    if (x->explain && x->op < OP_MASK && x->op != OP_TABLES) {
        const cflash_status e = cflash_context_set_explain(ctx, buf, len);
        check_status(e);
        if (!ctx && e == CFLASH_OK) finding("cflash_context_set_explain", "accepted ctx NULL");
    }
    switch (x->op) {
    case OP_FWD: return cflash_attn_fwd(ctx, &x->ap, a[0], a[1], a[2], a[3], a[4]);
    case OP_BWD:
        return cflash_attn_bwd(ctx, &x->ap, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    case OP_VFWD:
        return cflash_attn_varlen_fwd(ctx, &x->ap, a[0], a[1], a[2], a[5], a[6], x->mq, x->mk, a[3],
                                      a[4]);
    case OP_VBWD:
        return cflash_attn_varlen_bwd(ctx, &x->ap, a[0], a[1], a[2], a[3], a[4], a[5], a[9], a[10],
                                      x->mq, x->mk, a[6], a[7], a[8]);
    case OP_KV: return cflash_attn_kvcache_fwd(ctx, &x->ap, &x->kp, a[0], a[1], a[2], a[3], a[4]);
    case OP_ROT: return cflash_rotary_apply(ctx, &x->rp, a[0], a[1], a[2], a[3]);
    case OP_TABLES: return cflash_rotary_tables(&x->tp, a[0], a[1]);
    case OP_NFWD:
        return cflash_norm_fwd(ctx, &x->np, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    case OP_NBWD:
        return cflash_norm_bwd(ctx, &x->np, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8],
                               a[9], a[10]);
    case OP_MERGE: return cflash_attn_merge(ctx, a[0], a[1], a[2], a[3]);
    case OP_MASK: return cflash_attn_dropout_mask(&x->ap, a[0]);
    case OP_FAR: {
        int flags;
        return cflash_attn_mask_far_keys(a[0], x->margin, a[1], x->no_flags ? NULL : &flags);
    }
    }
    return CFLASH_OK;
}

static void attn_params(src* s, cflash_attn_params* p, call* c, int64_t B, int64_t H) {
    cflash_attn_params_init(p);
    p->softmax_scale = hostile_f32(s, one_in(s, 3) ? 0.0f : 0.7f);
    p->causal = one_in(s, 2);
    p->window_left = one_in(s, 3) ? hostile_i64(s, pick(s, -1, 20)) : -1;
    p->window_right = one_in(s, 3) ? hostile_i64(s, pick(s, -1, 20)) : -1;
    p->softcap = one_in(s, 4) ? hostile_f32(s, 2.0f) : 0.0f;
    p->dropout_p = one_in(s, 4) ? hostile_f32(s, 0.3f) : 0.0f;
    p->seed = take(s, 8);
    p->offset = take(s, 2);
    p->deterministic = one_in(s, 2);
    /* block positions (ring attention): small, near 2^32, or hostile */
    p->q_offset = one_in(s, 4) ? hostile_i64(s, pick(s, 0, 40)) : 0;
    p->k_offset = one_in(s, 4) ? hostile_i64(s, pick(s, 0, 40)) : 0;
    if (one_in(s, 4)) {
        const int64_t h1[1] = {H}, bh[2] = {B, H};
        p->alibi_slopes = one_in(s, 2) ? mk(c, s, IN, 1, h1, DT_F32) : mk(c, s, IN, 2, bh, DT_F32);
    }
}

/* Issue 13's attention features, each now and then: sinks (dsinks in a backward), a bias and a
 * boolean mask broadcast over B and / or H (dbias in a backward; batch calls only), block-sparse
 * lists, chunks, and the varlen call's used lengths. Sq, Sk: the rows per sequence. */
static void attn_features(src* s, cflash_attn_params* p, call* c, int64_t B, int64_t H, int64_t Sq,
                          int64_t Sk, int dt, int batch, int bwd) {
    const int64_t h1[1] = {H};
    if (one_in(s, 4)) {
        p->sinks = mk(c, s, IN, 1, h1, DT_F32);
        if (bwd && one_in(s, 2)) p->dsinks = mk(c, s, OUT, 1, h1, DT_F32);
    }
    if (batch && one_in(s, 5)) {
        const int64_t bs[4] = {one_in(s, 2) ? 1 : B, one_in(s, 2) ? 1 : H, Sq, Sk};
        const int bdt = one_in(s, 2) ? DT_F32 : dt;
        p->attn_bias = mk(c, s, IN, 4, bs, bdt);
        if (bwd && one_in(s, 2)) p->dbias = mk(c, s, OUT, 4, bs, one_in(s, 4) ? DT_F32 : bdt);
    }
    if (batch && one_in(s, 5)) {
        const int64_t ms[4] = {one_in(s, 2) ? 1 : B, one_in(s, 2) ? 1 : H, Sq, Sk};
        p->attn_mask = mk(c, s, IN, 4, ms, one_in(s, 2) ? DT_U8 : DT_BOOL);
    }
    if (one_in(s,
               5)) { /* lists of key blocks per query block: entries valid, out of range or raw */
        p->block_q = hostile_i64(s, pick(s, 1, 9)), p->block_k = hostile_i64(s, pick(s, 1, 9));
        const int64_t bq = p->block_q > 0 && p->block_q < 64 ? p->block_q : 1;
        const int64_t bk = p->block_k > 0 && p->block_k < 64 ? p->block_k : 1;
        const int64_t nqb = (Sq + bq - 1) / bq + pick(s, 0, 1), nkb = (Sk + bk - 1) / bk;
        const int64_t K = pick(s, 0, nkb + 1), b0 = one_in(s, 2) ? 1 : B, h0 = one_in(s, 2) ? 1 : H;
        const int64_t ns[3] = {b0, h0, nqb}, is[4] = {b0, h0, nqb, K};
        p->block_kv_num = idx_nd(c, s, 3, ns, -1, K + 1);
        p->block_kv_indices = one_in(s, 16) ? NULL : idx_nd(c, s, 4, is, -1, nkb);
    }
    if (one_in(s, 6)) p->attention_chunk = hostile_i64(s, pick(s, 0, 20));
}

/* Decodes one call into x (tensors in c) from s. */
static void decode(src* s, call* c, args* x) {
    x->op = (int)pick(s, 0, OP_COUNT - 1);
    x->explain = one_in(s, 8);
    /* the problem: small (an input should cost milliseconds), now and then past one 128-key
     * block */
    const int big = one_in(s, 16);
    int64_t B = pick(s, 0, 3), Sq = pick(s, 0, big ? 150 : 24), Sk = pick(s, 0, big ? 150 : 24);
    int64_t Hk = pick(s, 1, 3), G = pick(s, 1, 3), H = Hk * G;
    int64_t D = pick(s, 1, big ? 16 : 40), Dv = one_in(s, 3) ? pick(s, 1, 40) : D;
    if (one_in(s, 8)) D = 64, Dv = 64;
    if (big) B = B > 1 ? 1 : B, H = Hk = 1;
    const int dt = (int)pick(s, 0, 2); /* f32, f16, bf16 */
    DLTensor** a = x->a;
    memset(a, 0, sizeof x->a);
    switch (x->op) {
    case OP_FWD:
    case OP_BWD:
    case OP_VFWD:
    case OP_VBWD: {
        const int varlen = x->op == OP_VFWD || x->op == OP_VBWD;
        const int bwd = x->op == OP_BWD || x->op == OP_VBWD;
        attn_params(s, &x->ap, c, B, H);
        attn_features(s, &x->ap, c, B, H, Sq, Sk, dt, !varlen, bwd);
        /* varlen: pages (k / v as (pages, page_size, Hk, D)), used lengths */
        const int paged = varlen && one_in(s, 4);
        const int64_t page = pick(s, 1, 8), pages = pick(s, 0, 12);
        if (paged) {
            const int64_t bt[2] = {B, pick(s, 1, 6)};
            x->ap.block_table = idx_nd(c, s, 2, bt, -1, pages);
        }
        if (varlen && one_in(s, 4)) x->ap.seqused_q = idx(c, s, B, 0, -1, Sq + 1, 0);
        if (varlen && (paged || one_in(s, 4))) x->ap.seqused_k = idx(c, s, B, 0, -1, Sk + 1, 0);
        int64_t tq = B * Sq, tk = B * Sk;
        int64_t q4[4] = {B, Sq, H, D}, k4[4] = {B, Sk, Hk, D}, v4[4] = {B, Sk, Hk, Dv},
                o4[4] = {B, Sq, H, Dv}, l3[3] = {B, H, Sq};
        int64_t q3[3] = {tq, H, D}, k3[3] = {tk, Hk, D}, v3[3] = {tk, Hk, Dv}, o3[3] = {tq, H, Dv},
                l2[2] = {H, tq};
        int64_t kp[4] = {pages, page, Hk, D}, vp[4] = {pages, page, Hk, Dv};
        const int nd = varlen ? 3 : 4;
        const int64_t *qs = varlen ? q3 : q4,
                      *ks = paged    ? kp
                            : varlen ? k3
                                     : k4,
                      *vs = paged    ? vp
                            : varlen ? v3
                                     : v4,
                      *os = varlen ? o3 : o4;
        const int kd = paged ? 4 : nd;
        if (!bwd) {
            a[0] = mk(c, s, IN, nd, qs, dt), a[1] = mk(c, s, IN, kd, ks, dt);
            a[2] = mk(c, s, IN, kd, vs, dt), a[3] = mk(c, s, OUT, nd, os, dt);
            a[4] = opt(c, s, OUT, varlen ? 2 : 3, varlen ? l2 : l3, DT_F32, 2);
        } else { /* dout, q, k, v, out, lse, dq, dk, dv (out / lse: any values) */
            a[0] = mk(c, s, IN, nd, os, dt), a[1] = mk(c, s, IN, nd, qs, dt);
            a[2] = mk(c, s, IN, kd, ks, dt), a[3] = mk(c, s, IN, kd, vs, dt);
            a[4] = mk(c, s, IN, nd, os, dt);
            a[5] = one_in(s, 16) ? NULL : mk(c, s, IN, varlen ? 2 : 3, varlen ? l2 : l3, DT_F32);
            a[6] = mk(c, s, OUT, nd, qs, dt);
            a[7] = mk(c, s, OUT, kd, ks, dt), a[8] = mk(c, s, OUT, kd, vs, dt);
        }
        if (varlen) { /* cu_seqlens (and the bwd's copies in a[9], a[10]) */
            DLTensor* cq = idx(c, s, B + 1, tq, -2, tq + 2, 1);
            DLTensor* ck = paged && one_in(s, 2) ? NULL : idx(c, s, B + 1, tk, -2, tk + 2, 1);
            x->mq = hostile_i64(s, one_in(s, 2) ? 0 : Sq);
            x->mk = hostile_i64(s, one_in(s, 2) ? 0 : Sk);
            if (bwd)
                a[9] = cq, a[10] = ck;
            else
                a[5] = cq, a[6] = ck;
        }
        break;
    }
    case OP_KV: {
        attn_params(s, &x->ap, c, B, H);
        if (!one_in(s, 8)) x->ap.dropout_p = 0.0f;
        if (one_in(s, 5)) x->ap.sinks = mk(c, s, IN, 1, (const int64_t[1]){H}, DT_F32);
        cflash_kvcache_params_init(&x->kp);
        const int paged = one_in(s, 3);
        const int64_t Sc = pick(s, 0, big ? 150 : 32), page = pick(s, 1, 8), pages = pick(s, 0, 12);
        const int64_t Sn = one_in(s, 2) ? pick(s, 0, 4) : 0;
        /* FA3's varlen queries / new rows: q (total_q, H, D), k_new (total_new, Hk, D) */
        const int vq = one_in(s, 5), vn_ = one_in(s, 5);
        /* (a few rows, but 17-24 with G 3: 51-72 rows a KV head, the x86 builds' GEMM path) */
        const int64_t Sq1 = Sq > 8 && !(G == 3 && Sq > 16) ? Sq % 8 : Sq;
        const int64_t tq = B * Sq1, tn = B * Sn;
        int64_t q4[4] = {B, Sq1, H, D}, o4[4] = {B, Sq1, H, Dv}, l3[3] = {B, H, Sq1};
        int64_t q3[3] = {tq, H, D}, o3[3] = {tq, H, Dv}, l2[2] = {H, tq};
        int64_t kc[4] = {paged ? pages : B + pick(s, 0, 1), paged ? page : Sc, Hk, D};
        int64_t vc[4] = {kc[0], kc[1], Hk, Dv}, kn[4] = {B, Sn, Hk, D}, vn[4] = {B, Sn, Hk, Dv};
        int64_t kn3[3] = {tn, Hk, D}, vn3[3] = {tn, Hk, Dv};
        /* quantized caches: fp8 codes in uint8, int8 codes with scales per (token, head) */
        x->kp.cache_quant = one_in(s, 4) ? (int)pick(s, 0, 3) : 0;
        if (one_in(s, 32)) x->kp.cache_quant = (int)hostile_i64(s, 7);
        const int cdt = x->kp.cache_quant == CFLASH_KV_QUANT_INT8 ? DT_I8
                        : x->kp.cache_quant                       ? DT_U8
                                                                  : dt;
        a[0] = vq ? mk(c, s, IN, 3, q3, dt) : mk(c, s, IN, 4, q4, dt);
        a[1] = mk(c, s, Sn ? INOUT : IN, 4, kc, cdt), a[2] = mk(c, s, Sn ? INOUT : IN, 4, vc, cdt);
        a[3] = vq ? mk(c, s, OUT, 3, o3, dt) : mk(c, s, OUT, 4, o4, dt);
        a[4] = vq ? opt(c, s, OUT, 2, l2, DT_F32, 2) : opt(c, s, OUT, 3, l3, DT_F32, 2);
        if (vq) {
            x->kp.cu_seqlens_q = idx(c, s, B + 1, tq, -2, tq + 2, 1);
            x->kp.max_seqlen_q = one_in(s, 2) ? 0 : hostile_i64(s, Sq1);
        }
        if (Sn || one_in(s, 16)) {
            x->kp.k_new = vn_ ? mk(c, s, IN, 3, kn3, dt) : mk(c, s, IN, 4, kn, dt);
            x->kp.v_new = one_in(s, 16) ? NULL
                          : vn_         ? mk(c, s, IN, 3, vn3, dt)
                                        : mk(c, s, IN, 4, vn, dt);
            if (x->kp.k_new) c->t[1].role = c->t[2].role = INOUT;
            if (vn_) x->kp.cu_seqlens_k_new = idx(c, s, B + 1, tn, -2, tn + 2, 1);
        }
        if (x->kp.cache_quant == CFLASH_KV_QUANT_INT8 || (x->kp.cache_quant && one_in(s, 16))) {
            const int64_t sc[3] = {kc[0], kc[1], Hk};
            const int role = x->kp.k_new ? INOUT : IN;
            x->kp.k_scales = one_in(s, 16) ? NULL : mk(c, s, role, 3, sc, DT_F32);
            x->kp.v_scales = one_in(s, 16) ? NULL : mk(c, s, role, 3, sc, DT_F32);
        } else if (x->kp.cache_quant && one_in(s, 2)) { /* fp8 descales: [1], [Hk] or [B, Hk] */
            const int64_t d1[1] = {one_in(s, 2) ? 1 : Hk}, d2[2] = {B, Hk};
            x->kp.k_descale =
                one_in(s, 3) ? mk(c, s, IN, 2, d2, DT_F32) : mk(c, s, IN, 1, d1, DT_F32);
            x->kp.v_descale = one_in(s, 4) ? NULL : mk(c, s, IN, 1, d1, DT_F32);
        }
        const int64_t cap = paged ? page * (pages > 0 ? pages : 1) : Sc;
        if (one_in(s, 2)) {
            x->kp.cache_seqlens = idx(c, s, B, cap, -1, cap, 0);
        } else {
            x->kp.cache_seqlen = hostile_i64(s, pick(s, -1, cap));
        }
        if (one_in(s, 4)) x->kp.cache_leftpad = idx(c, s, B, cap, -1, 4, 0);
        if (paged) {
            const int64_t bt[2] = {B, pick(s, 1, 6)};
            x->kp.block_table = mk(c, s, IN, 2, bt, DT_I32);
            ft* t = &c->t[c->n - 1];
            if (t->base && t->bytes >= 4 && !one_in(s, 8))
                for (size_t i = 0; i < t->bytes / 4; i++)
                    ((int32_t*)t->base)[i] = (int32_t)pick(s, 0, pages > 0 ? pages - 1 : 0);
        } else if (one_in(s, 4)) {
            x->kp.cache_batch_idx = idx(c, s, B, 0, -1, kc[0], 0);
        }
        if (one_in(s, 3)) {
            const int64_t cs[2] = {pick(s, 0, 40), pick(s, 1, (D + 1) / 2)};
            x->kp.rotary_cos = mk(c, s, IN, 2, cs, one_in(s, 2) ? DT_F32 : dt);
            x->kp.rotary_sin = one_in(s, 16) ? NULL
                                             : mk(c, s, IN, 2, cs,
                                                  c->t[c->n - 1].dl.dtype.bits == 32 ? DT_F32 : dt);
            x->kp.rotary_interleaved = one_in(s, 2);
        }
        x->kp.num_splits = (int)(one_in(s, 2) ? 0 : one_in(s, 8) ? (int)take(s, 4) : pick(s, 1, 5));
        break;
    }
    case OP_ROT: {
        cflash_rotary_params_init(&x->rp);
        const int varlen = one_in(s, 3);
        const int64_t rd2 = pick(s, 1, (D + 1) / 2 > 0 ? (D + 1) / 2 : 1);
        int64_t x4[4] = {B, Sq, H, D}, x3[3] = {B * Sq, H, D}, cs[2] = {pick(s, 0, 48), rd2};
        a[0] = mk(c, s, IN, varlen ? 3 : 4, varlen ? x3 : x4, dt);
        const int csdt = one_in(s, 2) ? DT_F32 : dt;
        a[1] = mk(c, s, IN, 2, cs, csdt), a[2] = mk(c, s, IN, 2, cs, csdt);
        if (one_in(s, 3)) { /* in place: out NULL or x itself */
            c->t[0].role = INOUT;
            a[3] = one_in(s, 2) ? NULL : a[0];
        } else {
            a[3] = mk(c, s, OUT, varlen ? 3 : 4, varlen ? x3 : x4, dt);
        }
        x->rp.interleaved = one_in(s, 2);
        x->rp.conjugate = one_in(s, 2);
        x->rp.seqlen_offset = hostile_i64(s, pick(s, 0, 8));
        if (one_in(s, 4)) x->rp.seqlen_offsets = idx(c, s, B, 0, -2, 20, 0);
        if (varlen) {
            x->rp.cu_seqlens = idx(c, s, B + 1, B * Sq, -1, B * Sq + 1, 1);
            x->rp.max_seqlen = hostile_i64(s, one_in(s, 2) ? 0 : Sq);
        }
        x->rp.num_heads = one_in(s, 3) ? hostile_i64(s, pick(s, 0, H)) : 0;
        break;
    }
    case OP_TABLES: {
        cflash_rotary_table_params_init(&x->tp);
        if (one_in(s, 4)) x->tp.base = one_in(s, 2) ? -1.0 : (double)hostile_f32(s, 500.0f);
        if (one_in(s, 4)) x->tp.interpolation_factor = (double)hostile_f32(s, 2.0f);
        x->tp.position_start = hostile_i64(s, pick(s, 0, 100));
        const int64_t cs[2] = {Sq, pick(s, 0, 20)};
        a[0] = mk(c, s, OUT, 2, cs, dt), a[1] = mk(c, s, OUT, 2, cs, dt);
        if (one_in(s, 4)) x->tp.positions = idx(c, s, Sq, 0, -5, 1000, 0);
        break;
    }
    case OP_NFWD:
    case OP_NBWD: {
        cflash_norm_params_init(&x->np);
        x->np.type = one_in(s, 2)    ? CFLASH_NORM_LAYER
                     : one_in(s, 16) ? (cflash_norm_type)pick(s, 2, 9)
                                     : CFLASH_NORM_RMS;
        if (one_in(s, 8)) x->np.eps = hostile_f32(s, 1e-5f);
        if (one_in(s, 4)) x->np.dropout_p = hostile_f32(s, 0.25f);
        x->np.seed = take(s, 8);
        const int nd = (int)pick(s, 1, 4);
        int64_t xs[4] = {B, Sq, H, D}, n1[1] = {xs[nd - 1]}, m1[1] = {1};
        for (int i = 0; i < nd - 1; i++)
            m1[0] *= xs[i];
        const int odt = one_in(s, 3) ? DT_F32 : dt;
        if (x->op == OP_NFWD) { /* x, residual, weight, bias, out, residual_out, mean, rstd */
            a[0] = mk(c, s, IN, nd, xs, dt), a[1] = opt(c, s, IN, nd, xs, odt, 3);
            a[2] = opt(c, s, IN, 1, n1, odt, 2), a[3] = opt(c, s, IN, 1, n1, odt, 3);
            a[4] = mk(c, s, OUT, nd, xs, (int)pick(s, 0, 2));
            a[5] = opt(c, s, OUT, nd, xs, odt, 3);
            a[6] = x->np.type == CFLASH_NORM_LAYER || one_in(s, 16)
                       ? opt(c, s, OUT, 1, m1, DT_F32, 2)
                       : NULL;
            a[7] = opt(c, s, OUT, 1, m1, DT_F32, 2);
        } else { /* dy, x, weight, bias, mean, rstd, dresidual_out, dx, dweight, dbias, dresidual */
            a[0] = mk(c, s, IN, nd, xs, (int)pick(s, 0, 2)), a[1] = mk(c, s, IN, nd, xs, dt);
            a[2] = opt(c, s, IN, 1, n1, odt, 2), a[3] = opt(c, s, IN, 1, n1, odt, 3);
            a[4] = x->np.type == CFLASH_NORM_LAYER ? opt(c, s, IN, 1, m1, DT_F32, 3) : NULL;
            a[5] = opt(c, s, IN, 1, m1, DT_F32, 3);
            a[6] = opt(c, s, IN, nd, xs, (int)pick(s, 0, 2), 3);
            a[7] = mk(c, s, OUT, nd, xs, dt);
            a[8] = a[2] || one_in(s, 16) ? opt(c, s, OUT, 1, n1, (int)pick(s, 0, 2), 2) : NULL;
            a[9] = a[3] || one_in(s, 16) ? opt(c, s, OUT, 1, n1, (int)pick(s, 0, 2), 2) : NULL;
            a[10] = opt(c, s, OUT, nd, xs, dt, 3);
        }
        break;
    }
    case OP_MERGE: {
        const int64_t NS = pick(s, 0, 4);
        int64_t op5[5] = {NS, B, Sq, H, Dv}, lp4[4] = {NS, B, H, Sq}, o4[4] = {B, Sq, H, Dv},
                l3[3] = {B, H, Sq};
        a[0] = mk(c, s, IN, 5, op5, dt), a[1] = mk(c, s, IN, 4, lp4, DT_F32);
        a[2] = mk(c, s, OUT, 4, o4, (int)pick(s, 0, 2)), a[3] = opt(c, s, OUT, 3, l3, DT_F32, 2);
        break;
    }
    case OP_MASK: {
        attn_params(s, &x->ap, c, B, H);
        int64_t m4[4] = {B, H, Sq, Sk};
        a[0] = mk(c, s, OUT, 4, m4, DT_U8);
        break;
    }
    case OP_FAR: {
        int64_t m4[4] = {B, H, Sq, Sk};
        a[0] = mk(c, s, IN, 4, m4, dt);
        a[1] = mk(c, s, OUT, 4, m4, one_in(s, 2) ? DT_U8 : DT_BOOL);
        x->margin = hostile_f32(s, 300.0f);
        x->no_flags = one_in(s, 16);
        break;
    }
    }
}

/* The context calls, with hostile arguments; returns a context for the op (or NULL). */
static cflash_context* context(src* s) {
    if (one_in(s, 8)) return NULL;
    cflash_context* ctx = NULL;
    if (cflash_context_create(one_in(s, 64) ? NULL : &ctx) != CFLASH_OK || !ctx) return NULL;
    static const char* const names[] = {"auto",       "cpu-ref", "cpu-generic", "cpu-avx2",
                                        "cpu-avx512", "cpu-amx", "cuda-simt",   "cuda-mma",
                                        "",           "bogus",   NULL};
    const int threads = one_in(s, 8) ? (int)hostile_i64(s, -1) : (int)pick(s, 0, 3);
    check_status(cflash_context_set_threads(ctx, threads));
    if (!one_in(s, 3)) {
        const char* name = names[take(s, 1) % (sizeof names / sizeof names[0])];
        char longname[300];
        if (one_in(s, 32)) {
            memset(longname, 'x', sizeof longname - 1);
            longname[sizeof longname - 1] = 0;
            name = longname;
        }
        check_status(cflash_context_set_backend(ctx, name));
    }
    if (one_in(s, 16))
        check_status(cflash_context_set_cuda_stream(ctx, (void*)(uintptr_t)take(s, 8)));
    return ctx;
}

/* The calls without tensors: names, versions, statuses, NULL arguments. */
static void small_calls(src* s) {
    if (!cflash_version()) finding("cflash_version", "NULL");
    if (!cflash_status_string((cflash_status)(int)take(s, 4))) finding("status_string", "NULL");
    const char* n = cflash_op_name((cflash_op)(int)pick(s, -2, CFLASH_OP_COUNT + 2));
    (void)n;
    cflash_attn_params_init(NULL), cflash_kvcache_params_init(NULL);
    cflash_rotary_params_init(NULL), cflash_rotary_table_params_init(NULL);
    cflash_norm_params_init(NULL), cflash_context_free(NULL);
    check_status(cflash_context_set_threads(NULL, 1));
    check_status(cflash_context_set_backend(NULL, "auto"));
    /* the report into a buffer of exactly len bytes: NUL-terminated, the length it needs */
    if (one_in(s, 16)) {
        const size_t len = (size_t)pick(s, 0, 9000);
        char* r = len ? malloc(len) : NULL;
        const size_t need = cflash_report(r, len, one_in(s, 2));
        if (len && (!memchr(r, 0, len) || (need < len && strlen(r) != need)))
            finding("cflash_report", "not NUL-terminated or not the length it returns");
        free(r);
    }
    /* invalid library directories only (a valid one is kept for the process) */
    char dir[600];
    memset(dir, 'd', sizeof dir - 1), dir[sizeof dir - 1] = 0;
    const char* dirs[3] = {NULL, "", dir};
    if (cflash_add_library_dir(dirs[take(s, 1) % 3]) == CFLASH_OK)
        finding("cflash_add_library_dir", "accepted NULL, empty or 599 characters");
    /* explain mode without a context, and attention with NULL params and tensors */
    char buf[64];
    if (cflash_context_set_explain(NULL, buf, sizeof buf) == CFLASH_OK)
        finding("cflash_context_set_explain", "accepted ctx NULL");
    check_status(cflash_attn_fwd(NULL, NULL, NULL, NULL, NULL, NULL, NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    src s = {data, size};
    cflash_context* ctx = context(&s);
    static call c; /* large: not on the stack */
    args x;
    memset(&c, 0, sizeof c);
    memset(&x, 0, sizeof x);
    decode(&s, &c, &x);
    if (x.op == OP_CTX) {
        small_calls(&s);
        cflash_context_free(ctx);
        free_call(&c);
        return 0;
    }
    /* explain writes at most len bytes of buf, NUL-terminated: buf is exactly len bytes */
    const size_t len = x.explain ? (size_t)pick(&s, 0, 600) : 0;
    char* buf = len ? malloc(len) : NULL;
    snapshot(&c, 0);
    describe(&c, x.op, x.explain);
    cflash_status s1 = invoke(ctx, &x, buf, len);
    check_status(s1);
    if (getenv("CFLASH_FUZZ_VERBOSE"))
        fprintf(stderr, "  -> %s%s%s%s%s%s%s%s%s: %s\n", cflash_status_string(s1),
                x.ap.sinks ? " sinks" : "", x.ap.attn_bias ? " bias" : "",
                x.ap.attn_mask ? " mask" : "", x.ap.block_kv_num ? " blocks" : "",
                x.ap.attention_chunk ? " chunk" : "", x.ap.block_table ? " pages" : "",
                x.kp.cache_quant ? " quant" : "", x.kp.cu_seqlens_q ? " varlen-q" : "",
                s1 ? cflash_last_error() : "");
    const int explains = x.explain && ctx && len && x.op < OP_MASK && x.op != OP_TABLES;
    if (explains && len && !memchr(buf, 0, len)) finding("explain", "buf not NUL-terminated");
    check_writes(&c, s1, !explains);
    snapshot(&c, 1); /* the first call's results */
    restore(&c);
    cflash_status s2 = invoke(ctx, &x, buf, len);
    check_rerun(&c, s1, s2);
    free(buf);
    cflash_context_free(ctx);
    free_call(&c);
    return 0;
}
