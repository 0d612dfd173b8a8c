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
 * printing the reason once per backend and op; 0 otherwise. */
int ops_backend_skips(const char* backend, const char* op, cflash_status s);

/* Max |t - ref| over t's logical elements in row-major order (ref dense row-major); NaN or
 * infinite where ref is finite counts as +inf and is counted in *nan (may be NULL). */
double ops_max_err(const tt_tensor* t, const double* ref, int64_t* nan);
/* Max |a - ref| of two dense arrays. */
double ops_max_err_arr(const double* a, const double* ref, int64_t n);
double ops_max_abs(const double* ref, int64_t n);

/* The error rule: factor * naive + k * unit_roundoff(d) * max(1, maxref), k = 8 for fp32 (order of
 * accumulation), 2 otherwise. */
double ops_bound(cflash_dtype d, double factor, double naive, double maxref);

/* x rounded to dtype d (as storing it would). */
double ops_round(cflash_dtype d, double x);

#endif
