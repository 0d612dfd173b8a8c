/* Helpers shared by the tests of the ops around attention (rotary, norm, KV cache, merge): the CPU
 * backends each test runs, the error rule's bound, and comparing a tensor with fp64 values. The
 * fp64 references themselves live in each test file, beside the cases they check. */
#ifndef CFLASH_ORACLE_OPS_ORACLE_H
#define CFLASH_ORACLE_OPS_ORACLE_H

#include "oracle/oracle_tensor.h"

/* CPU backends the op tests run, in order; "auto" = let the dispatcher choose. NULL-terminated. */
extern const char* const ops_backends[];

/* A context forced to backend (NULL or "auto" = choose), threads 0 = default. */
cflash_context* ops_context(const char* backend, int threads);

/* 1 if the call's status says the backend cannot serve (not in this build / not on this CPU),
 * printing the reason once per backend and op; 0 otherwise, and for an op other than attention
 * ("attn", "attn_fwd", ...; attn_merge is an op) also when the backend refused although
 * cflash_report marks it [OKAY] for the op (those impls serve every call: the refusal is a bug the
 * caller's status check reports). */
int ops_backend_skips(const char* backend, const char* op, cflash_status s);

/* Max |t - ref| over t's logical elements in row-major order (ref dense row-major); NaN or
 * infinite where ref is finite counts as +inf and is counted in *nan (may be NULL). */
double ops_max_err(const tt_tensor* t, const double* ref, int64_t* nan);
/* A systematic error of t against its fp64 result ref along a direction dir: the least-squares
 * fit t - ref = dev * dir, returned as dev, with its standard error in *se, counting each group
 * of `group` consecutive elements (a row, whose elements share the errors of its softmax) as one
 * sample. dir = ref: t off by a factor 1 + dev (a scale applied twice, a unit lost); dir = the
 * derivative of the result in some parameter: t computed with that parameter off by dev. The max
 * error rule, sized by the naive computation's roundings, lets errors of a few percent of either
 * kind pass; rounding errors average out here, unless the samples share them (rows of one KV
 * head under a near-uniform softmax hold nearly the same values, rounded alike). *unit: the
 * largest |dev| that an error of at most |ref| in each element gives (1 for dir = ref; larger
 * the smaller dir is against ref): times the unit roundoff, what rounding t alone can fit. Elements
 * where ref, dir or t are not finite are left out. */
double ops_fit_dev(const tt_tensor* t, const double* ref, const double* dir, int64_t group,
                   double* se, double* unit);
/* Max |a - ref| of two dense arrays. */
double ops_max_err_arr(const double* a, const double* ref, int64_t n);
double ops_max_abs(const double* ref, int64_t n);

/* The error rule: factor * naive + k * unit_roundoff(d) * max(1, maxref), k = 8 for fp32 (order of
 * accumulation), 2 otherwise. */
double ops_bound(cflash_dtype d, double factor, double naive, double maxref);

/* x rounded to dtype d (as storing it would). */
double ops_round(cflash_dtype d, double x);

/* ---- Quantized KV caches (include/cflash.h, cflash_kv_quant), written from the definitions ----
 */

/* The value of an fp8 code (e5m2 1: e5m2, else e4m3fn): NaN for NaN codes, +-inf for e5m2's. */
double ops_fp8_value(uint8_t code, int e5m2);
/* The code whose value is nearest to x, ties to the even code, saturating to the largest finite
 * value (infinities too), NaN for NaN: found by bisection over the codes' values. */
uint8_t ops_fp8_code(float x, int e5m2);
/* The int8 codes of a row (per the header: scale = max|x| / 127 in fp32, code = x / scale
 * rounded to nearest even) and its scale. */
float ops_int8_codes(int8_t* codes, const float* x, int64_t n);

#endif
