/* Shared by every cflash CUDA kernel and also compiled as plain C by the tests: the kernel argument
 * struct (the launch code in src/cuda/cuda_attn.c fills the same struct, so the layouts cannot
 * drift), dtype loads/stores, and the dropout mask (Philox-4x32-10, the same function as
 * src/core/philox.h; test_cuda_nvrtc compares the two word for word on the host). */
#ifndef CF_COMMON_CUH
#define CF_COMMON_CUH

#ifdef __CUDACC__
#define CF_DEV __device__ __forceinline__
#else
#define CF_DEV static inline
#endif

typedef long long cf_i64;
typedef unsigned long long cf_u64;
typedef unsigned int cf_u32;
typedef unsigned short cf_u16;

/* ---- Attention arguments (one struct passed by value; strides in elements) ---------------- */
typedef struct cf_attn_args {
    const void* q;      /* (B, Sq, H, D)   varlen: (1, total_q, H, D) with batch stride 0 */
    const void* k;      /* (B, Sk, Hk, D) */
    const void* v;      /* (B, Sk, Hk, Dv) */
    void* out;          /* (B, Sq, H, Dv) */
    float* lse;         /* (B, H, Sq) or NULL */
    const void* dout;   /* backward: (B, Sq, H, Dv) */
    void* dq;           /* (B, Sq, H, D) */
    void* dk;           /* (B, Sk, Hk, D) */
    void* dv;           /* (B, Sk, Hk, Dv) */
    float* delta;       /* backward workspace: rowsum(dout * out), [B][H][Sq] dense */
    const float* alibi; /* fp32 slopes, slope(b, h) = alibi[b * alibi_bstride + h], or NULL */
    const int* cu_q;    /* varlen: [B + 1] device pointers; NULL in batch mode */
    const int* cu_k;
    cf_i64 q_sb, q_ss, q_sh, k_sb, k_ss, k_sh, v_sb, v_ss, v_sh, o_sb, o_ss, o_sh;
    cf_i64 lse_sb, lse_sh, lse_ss;
    cf_i64 do_sb, do_ss, do_sh, dq_sb, dq_ss, dq_sh, dk_sb, dk_ss, dk_sh, dv_sb, dv_ss, dv_sh;
    cf_i64 alibi_bstride;
    cf_i64 B, H, Hk, D, Dv, Sq, Sk;   /* Sq, Sk: the lengths, or the varlen maxima */
    cf_i64 window_left, window_right; /* -1 = unbounded; causal folded in (right = 0) */
    cf_i64 q_offset, k_offset;        /* positions of q's / k's row 0 (cflash_attn_params) */
    cf_u64 seed, offset;
    cf_u64 keep_threshold; /* dropout: keep iff Philox word < this; 2^32 = keep all */
    float scale, softcap, dropout_p, keep_scale; /* keep_scale = 1 / (1 - dropout_p) */
    int tile; /* rows per shared-memory tile (<= 32), chosen by the launcher */
    int pad_;
    float* dq_acc; /* backward workspace of the atomic dQ variant: [B][Sq][H][D] fp32, or NULL */
} cf_attn_args;

/* ---- KV-cache attention arguments (the attention part in `a`; a.k / a.v unused) ----------- */
typedef struct cf_kv_args {
    cf_attn_args a;
    void* kc;         /* (B_cache, S_cache, Hk, D) or (pages, page_size, Hk, D) */
    void* vc;         /* same with Dv */
    const void* knew; /* (B, Sn, Hk, D) or NULL */
    const void* vnew;
    const void* cos; /* (S_ro, rd / 2) or NULL: no rotary */
    const void* sin;
    const int* seqlens;     /* [B] device, or NULL: every batch has `seqlen` */
    const int* batch_idx;   /* [B] or NULL */
    const int* leftpad;     /* [B] or NULL */
    const int* block_table; /* (B, max_pages), row stride bt_stride, or NULL */
    float* opart;           /* split-KV partial outputs [splits][B][Sq][H][Dv] (splits > 1) */
    float* lpart;           /* partial LSEs [splits][B][H][Sq] */
    cf_i64 kc_s0, kc_s1, kc_s2, vc_s0, vc_s1, vc_s2;
    cf_i64 kn_sb, kn_ss, kn_sh, vn_sb, vn_ss, vn_sh, cos_s0, sin_s0;
    cf_i64 seqlen, Sn, bt_stride, page_size, rd, splits, chunk;
    int cs_dt, interleaved, qpos_shift, pad_;
} cf_kv_args;

/* ---- Sequences, masks, score transform (same rules as src/core/attn_call.h) ---------------- */

CF_DEV void cf_seq(const cf_attn_args* a, cf_i64 b, cf_i64* q0, cf_i64* sq, cf_i64* k0,
                   cf_i64* sk) {
    if (a->cu_q) {
        *q0 = a->cu_q[b];
        *sq = a->cu_q[b + 1] - a->cu_q[b];
        *k0 = a->cu_k[b];
        *sk = a->cu_k[b + 1] - a->cu_k[b];
    } else {
        *q0 = 0;
        *sq = a->Sq;
        *k0 = 0;
        *sk = a->Sk;
    }
}

/* The key on the diagonal of query row i (src/core/attn_call.h: cf_attn_diag; |offsets| <= 2^32
 * is checked, so this does not overflow). */
CF_DEV cf_i64 cf_diag(const cf_attn_args* a, cf_i64 i, cf_i64 sq, cf_i64 sk) {
    return i + sk - sq + a->q_offset - a->k_offset;
}

/* Visible keys [*lo, *hi) of query row i. Windows may be near INT64_MAX: each is compared with
 * the distance it would move a bound, never added unchecked (as src/core/attn_call.h). */
CF_DEV void cf_key_range(const cf_attn_args* a, cf_i64 i, cf_i64 sq, cf_i64 sk, cf_i64* lo,
                         cf_i64* hi) {
    cf_i64 diag = cf_diag(a, i, sq, sk), l = 0, h = sk;
    if (a->window_left >= 0 && a->window_left < diag) l = diag - a->window_left;
    /* diag + window_right + 1 < sk  <=>  window_right < sk - 1 - diag */
    if (a->window_right >= 0 && a->window_right < sk - 1 - diag) h = diag + a->window_right + 1;
    if (l > sk) l = sk; /* a block's rows can lie wholly past its keys */
    *lo = l;
    *hi = h > l ? h : l;
}

/* Query rows [*lo, *hi) that see key j (the inverse of cf_key_range). */
CF_DEV void cf_query_range(const cf_attn_args* a, cf_i64 j, cf_i64 sq, cf_i64 sk, cf_i64* lo,
                           cf_i64* hi) {
    cf_i64 l = 0, h = sq, r = j - cf_diag(a, 0, sq, sk); /* the row whose diagonal is j */
    if (a->window_right >= 0 && a->window_right < r) l = r - a->window_right;
    /* r + window_left + 1 < sq  <=>  window_left < sq - 1 - r */
    if (a->window_left >= 0 && a->window_left < sq - 1 - r) h = r + a->window_left + 1;
    if (l > sq) l = sq;
    *lo = l;
    *hi = h > l ? h : l;
}

/* ---- Dropout: Philox-4x32-10, identical to src/core/philox.h ------------------------------ */
typedef struct cf_u32x4 {
    cf_u32 x[4];
} cf_u32x4;

CF_DEV cf_u32x4 cf_philox10(cf_u32 c0, cf_u32 c1, cf_u32 c2, cf_u32 c3, cf_u64 seed) {
    cf_u32 k0 = (cf_u32)seed, k1 = (cf_u32)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        cf_u64 p0 = (cf_u64)0xD2511F53u * c0;
        cf_u64 p1 = (cf_u64)0xCD9E8D57u * c2;
        cf_u32 n0 = (cf_u32)(p1 >> 32) ^ c1 ^ k0;
        cf_u32 n1 = (cf_u32)p1;
        cf_u32 n2 = (cf_u32)(p0 >> 32) ^ c3 ^ k1;
        cf_u32 n3 = (cf_u32)p0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    cf_u32x4 o;
    o.x[0] = c0;
    o.x[1] = c1;
    o.x[2] = c2;
    o.x[3] = c3;
    return o;
}

/* The four words for keys j & ~3 .. (j & ~3) + 3 of row i of (b, h): counter {j/4, i, b, h} +
 * offset (128-bit little endian, offset into the low 64 bits). */
CF_DEV cf_u32x4 cf_dropout_words4(cf_u64 seed, cf_u64 offset, cf_u64 b, cf_u64 h, cf_u64 i,
                                  cf_u64 j) {
    cf_u64 lo = ((cf_u64)(cf_u32)i << 32) | (cf_u32)(j >> 2);
    cf_u64 hi = ((cf_u64)(cf_u32)h << 32) | (cf_u32)b;
    cf_u64 lo2 = lo + offset;
    hi += (lo2 < lo);
    return cf_philox10((cf_u32)lo2, (cf_u32)(lo2 >> 32), (cf_u32)hi, (cf_u32)(hi >> 32), seed);
}

/* 1 iff weight (b, h, i, j) is kept (src/core/philox.h: cf_dropout_keep). */
CF_DEV int cf_keep(cf_u64 seed, cf_u64 offset, float p, cf_u64 threshold, cf_u64 b, cf_u64 h,
                   cf_u64 i, cf_u64 j) {
    if (p <= 0.0f) return 1;
    cf_u32x4 w = cf_dropout_words4(seed, offset, b, h, i, j);
    return (cf_u64)w.x[j & 3] < threshold;
}

CF_DEV int cf_dropout_keep_word(const cf_attn_args* a, cf_i64 b, cf_i64 h, cf_i64 i, cf_i64 j) {
    return cf_keep(a->seed, a->offset, a->dropout_p, a->keep_threshold, (cf_u64)b, (cf_u64)h,
                   (cf_u64)(i + a->q_offset), (cf_u64)(j + a->k_offset));
}

#ifdef __CUDACC__
/* ---- Device-only helpers ------------------------------------------------------------------ */
#define CF_FULL 0xffffffffu
#define CF_NEG_INF __int_as_float(0xff800000)

#ifndef CF_DTYPE
#define CF_DTYPE 0
#endif

/* fp16 / bf16 bits <-> float, round to nearest even (as src/core/tensor.h). */
CF_DEV float cf_f16_to_f32(cf_u16 h) {
    float f;
    asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}
CF_DEV cf_u16 cf_f32_to_f16(float x) {
    cf_u16 h;
    asm("{ .reg .f16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(x));
    return h;
}
CF_DEV float cf_bf16_to_f32(cf_u16 h) {
    return __uint_as_float((cf_u32)h << 16);
}
CF_DEV cf_u16 cf_f32_to_bf16(float x) {
    cf_u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (cf_u16)((u >> 16) | 0x40);
    return (cf_u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Element i of a tensor of the variant's dtype (CF_DTYPE), as float. */
CF_DEV float cf_ld(const void* p, cf_i64 i) {
#if CF_DTYPE == 0
    return ((const float*)p)[i];
#elif CF_DTYPE == 1
    return cf_f16_to_f32(((const cf_u16*)p)[i]);
#else
    return cf_bf16_to_f32(((const cf_u16*)p)[i]);
#endif
}

/* Rounds x to the variant's dtype and stores it. */
CF_DEV void cf_st(void* p, cf_i64 i, float x) {
#if CF_DTYPE == 0
    ((float*)p)[i] = x;
#elif CF_DTYPE == 1
    ((cf_u16*)p)[i] = cf_f32_to_f16(x);
#else
    ((cf_u16*)p)[i] = cf_f32_to_bf16(x);
#endif
}

/* The same with the dtype known at run time (0 fp32, 1 fp16, 2 bf16): for the ops whose tensors
 * may mix fp32 and the input dtype. */
CF_DEV float cf_ldt(const void* p, int dt, cf_i64 i) {
    if (dt == 0) return ((const float*)p)[i];
    cf_u16 h = ((const cf_u16*)p)[i];
    return dt == 1 ? cf_f16_to_f32(h) : cf_bf16_to_f32(h);
}
CF_DEV void cf_stt(void* p, int dt, cf_i64 i, float x) {
    if (dt == 0)
        ((float*)p)[i] = x;
    else
        ((cf_u16*)p)[i] = dt == 1 ? cf_f32_to_f16(x) : cf_f32_to_bf16(x);
}

/* x rounded to the variant's dtype and back. */
CF_DEV float cf_round(float x) {
#if CF_DTYPE == 0
    return x;
#elif CF_DTYPE == 1
    return cf_f16_to_f32(cf_f32_to_f16(x));
#else
    return cf_bf16_to_f32(cf_f32_to_bf16(x));
#endif
}

CF_DEV float cf_warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(CF_FULL, x, o));
    return x;
}
CF_DEV float cf_warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(CF_FULL, x, o);
    return x;
}

/* Scaled score x -> softcap -> ALiBi, for query i / key j of a sequence (sq, sk). *t receives
 * tanh(x / softcap) (for the backward), 0 when softcap is off. */
CF_DEV float cf_score(const cf_attn_args* a, float x, float slope, cf_i64 i, cf_i64 j, cf_i64 sq,
                      cf_i64 sk, float* t) {
    *t = 0.0f;
    if (a->softcap > 0.0f) {
        *t = tanhf(x / a->softcap);
        x = a->softcap * *t;
    }
    if (slope != 0.0f) {
        cf_i64 d = cf_diag(a, i, sq, sk) - j;
        x -= slope * (float)(d < 0 ? -d : d);
    }
    return x;
}

CF_DEV float cf_slope(const cf_attn_args* a, cf_i64 b, cf_i64 h) {
    return a->alibi ? a->alibi[b * a->alibi_bstride + h] : 0.0f;
}
#endif /* __CUDACC__ */

#endif
