/* Kernel arguments of the ops around attention (rotary, norm, merge), shared by ops_simt.cu and
 * the launch code in src/cuda/cuda_ops.c (plain C, so both sides see one layout). Strides are in
 * elements; dtypes are 0 fp32, 1 fp16, 2 bf16 per tensor (the ops allow fp32 beside the input's).
 */
#ifndef CF_OPS_ARGS_CUH
#define CF_OPS_ARGS_CUH

#include "cf_common.cuh"

typedef struct cf_rotary_args {
    void* out; /* (B, S, H, D) (varlen: (1, total, H, D)) */
    const void* x;
    const void* cos; /* (S_ro, rd / 2) */
    const void* sin;
    const int* cu;      /* [B + 1] device, or NULL */
    const int* offsets; /* [B] device, or NULL */
    cf_i64 x_sb, x_ss, x_sh, o_sb, o_ss, o_sh, cos_s0, sin_s0;
    cf_i64 B, S, H, D, rd, nrot, offset;
    int dt, cs_dt, interleaved, conjugate, inplace, pad_;
} cf_rotary_args;

typedef struct cf_merge_args {
    const void* op;  /* (NS, B, Sq, H, Dv) */
    const float* lp; /* (NS, B, H, Sq) */
    void* out;       /* (B, Sq, H, Dv) */
    float* lse;      /* (B, H, Sq) or NULL */
    cf_i64 op_s0, op_s1, op_s2, op_s3, lp_s0, lp_s1, lp_s2, lp_s3, o_s0, o_s1, o_s2;
    cf_i64 lse_s0, lse_s1, lse_s2;
    cf_i64 NS, B, Sq, H, Dv;
    int op_dt, out_dt;
} cf_merge_args;

/* A row tensor (M, N) or a vector (N): data (NULL = absent), strides, dtype. */
typedef struct cf_norm_t {
    void* p;
    cf_i64 s0, s1;
    int dt, pad_;
} cf_norm_t;

typedef struct cf_norm_args {
    cf_norm_t x, residual, weight, bias, out, residual_out, mean, rstd; /* forward */
    cf_norm_t dy, dresidual_out, dx, dweight, dbias, dresidual;         /* backward (x = h) */
    float* ws; /* backward workspace: mean and rstd of each row, [2][M] */
    cf_i64 M, N;
    cf_u64 seed, offset, keep_threshold;
    float eps, dropout_p, keep_scale;
    int rms;
} cf_norm_args;

#endif
