/* The problem flags shared by `cflash check` and `cflash bench` (cf_problem_* of cli.h): defaults
 * in one block, "--flag value" or "--flag=value", and an error naming the flag for every bad value.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void cf_problem_defaults(cf_problem* p) {
    memset(p, 0, sizeof *p);
    p->batch = 2;
    p->heads = 8;
    p->heads_kv = 8; /* = heads unless given */
    p->seqlen_q = 512;
    p->seqlen_k = 512;
    p->head_dim = 64;
    p->head_dim_v = 64; /* = head_dim unless given */
    p->dtype = CFLASH_DTYPE_F32;
    p->bias_dtype = CFLASH_DTYPE_F32;
    p->window_left = -1;
    p->window_right = -1;
    p->softcap = 0.0f;
    p->dropout = 0.0f;
    p->backend = NULL;
    p->threads = 0;
    p->device = kDLCPU;
    p->warmup = 2;
    p->reps = 10;
    p->block_size = 128;
}

const char* cf_problem_usage(void) {
    return "  --batch N          batch size B (default 2)\n"
           "  --heads N          query heads H (default 8)\n"
           "  --heads-kv N       key/value heads Hk, a divisor of H (default H)\n"
           "  --seqlen N         both sequence lengths (default 512)\n"
           "  --seqlen-q N       query length Sq\n"
           "  --seqlen-k N       key length Sk\n"
           "  --head-dim N       head dim D of q and k (default 64)\n"
           "  --head-dim-v N     head dim Dv of v and out (default D)\n"
           "  --dtype T          fp32 | fp16 | bf16 (default fp32)\n"
           "  --causal           causal mask, aligned bottom-right\n"
           "  --window L,R       sliding window; -1 = unbounded side (default -1,-1)\n"
           "  --softcap X        softcap c > 0 (default 0 = off)\n"
           "  --alibi            ALiBi with slopes 2^(-8(h+1)/H)\n"
           "  --dropout P        dropout probability in [0, 1) (default 0)\n"
           "  --sinks            attention sinks: one logit per head (gpt-oss, FA4 "
           "learnable_sink)\n"
           "  --bias             additive fp32 bias of shape (1, 1, Sq, Sk)\n"
           "  --dbias            with --bwd: the backward also writes dbias (implies --bias)\n"
           "  --bias-dtype T     dtype of the bias and dbias: fp32 (default) or --dtype's (as\n"
           "                     PyTorch SDPA passes a float attn_mask; implies --bias)\n"
           "  --mask P           boolean mask (1, 1, Sq, Sk); bench: it keeps a fraction P in\n"
           "                     (0, 1] of its block-size x block-size tiles (the others wholly\n"
           "                     masked); check: the oracle's random mask (P only turns it on)\n"
           "  --block-sparse P   block-sparse lists keeping a fraction P in (0, 1] of the\n"
           "                     (query block, key block) pairs (FlexAttention's BlockMask)\n"
           "  --block-size N     block of --mask and --block-sparse (default 128)\n"
           "  --chunk N          chunked local attention: attention_chunk = N keys (Llama 4)\n"
           "  --bwd              also the backward\n"
           "  --backend NAME     force a backend (cpu-ref, cpu-avx2, cuda-simt, ...; default "
           "auto)\n"
           "  --threads N        CPU threads, 0 = all cores (default 0)\n"
           "  --device D         cpu | cuda (default cpu)\n"
           "  --json             one JSON object per result\n"
           "  --warmup N         untimed runs before timing (bench; default 2)\n"
           "  --reps N           timed runs, median reported (bench; default 10)\n";
}

/* ---- Value parsers: 0 on success, else -1 with err set naming the flag ------------------------
 */

static int fail(char* err, size_t n, const char* fmt, const char* flag, const char* val) {
    snprintf(err, n, fmt, flag, val);
    return -1;
}

static int parse_i64(const char* flag, const char* s, int64_t lo, int64_t* out, char* err,
                     size_t n) {
    char* end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) return fail(err, n, "%s: '%s' is not an integer", flag, s);
    if (v < lo) {
        char buf[64];
        snprintf(buf, sizeof buf, "%lld", (long long)lo);
        snprintf(err, n, "%s: %lld, expected >= %s", flag, v, buf);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_int(const char* flag, const char* s, int lo, int* out, char* err, size_t n) {
    int64_t v;
    if (parse_i64(flag, s, lo, &v, err, n)) return -1;
    if (v > 1000000000) return fail(err, n, "%s: '%s' is too large", flag, s);
    *out = (int)v;
    return 0;
}

static int parse_float(const char* flag, const char* s, float* out, char* err, size_t n) {
    char* end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v))
        return fail(err, n, "%s: '%s' is not a finite number", flag, s);
    *out = (float)v;
    return 0;
}

int cf_problem_parse(cf_problem* p, int argc, char** argv, int first, char* err, size_t err_len) {
    int seq_both = 0, seq_q = 0, seq_k = 0, hkv_given = 0, dv_given = 0;
    int64_t seqlen = 0;
    for (int i = first; i < argc; i++) {
        const char* a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, err_len, "unexpected argument '%s' (flags start with --)", a);
            return -1;
        }
        /* Split "--flag=value". */
        char flag[64];
        const char* val = NULL;
        const char* eq = strchr(a, '=');
        size_t fl = eq ? (size_t)(eq - a) : strlen(a);
        if (fl >= sizeof flag) fl = sizeof flag - 1;
        memcpy(flag, a, fl);
        flag[fl] = 0;
        if (eq) val = eq + 1;

        /* Boolean flags. */
        int* boolean = !strcmp(flag, "--causal")  ? &p->causal
                       : !strcmp(flag, "--alibi") ? &p->alibi
                       : !strcmp(flag, "--bwd")   ? &p->bwd
                       : !strcmp(flag, "--json")  ? &p->json
                       : !strcmp(flag, "--sinks") ? &p->sinks
                       : !strcmp(flag, "--bias")  ? &p->bias
                       : !strcmp(flag, "--dbias") ? &p->dbias
                                                  : NULL;
        if (boolean) {
            if (val) {
                snprintf(err, err_len, "%s: takes no value, got '%s'", flag, val);
                return -1;
            }
            *boolean = 1;
            continue;
        }
        static const char* const valued[] = {"--batch",
                                             "--heads",
                                             "--heads-kv",
                                             "--seqlen",
                                             "--seqlen-q",
                                             "--seqlen-k",
                                             "--head-dim",
                                             "--head-dim-v",
                                             "--dtype",
                                             "--window",
                                             "--softcap",
                                             "--dropout",
                                             "--backend",
                                             "--threads",
                                             "--device",
                                             "--warmup",
                                             "--reps",
                                             "--mask",
                                             "--block-sparse",
                                             "--block-size",
                                             "--chunk",
                                             "--bias-dtype",
                                             NULL};
        int known = 0;
        for (const char* const* f = valued; *f; f++)
            known |= !strcmp(*f, flag);
        if (!known) {
            snprintf(err, err_len, "unknown flag '%s' (see cflash --help)", flag);
            return -1;
        }
        if (!val) {
            if (i + 1 >= argc) {
                snprintf(err, err_len, "%s: missing value", flag);
                return -1;
            }
            val = argv[++i];
        }
        int rc = 0;
        if (!strcmp(flag, "--batch"))
            rc = parse_i64(flag, val, 1, &p->batch, err, err_len);
        else if (!strcmp(flag, "--heads"))
            rc = parse_i64(flag, val, 1, &p->heads, err, err_len);
        else if (!strcmp(flag, "--heads-kv"))
            rc = parse_i64(flag, val, 1, &p->heads_kv, err, err_len), hkv_given = 1;
        else if (!strcmp(flag, "--seqlen"))
            rc = parse_i64(flag, val, 1, &seqlen, err, err_len), seq_both = 1;
        else if (!strcmp(flag, "--seqlen-q"))
            rc = parse_i64(flag, val, 1, &p->seqlen_q, err, err_len), seq_q = 1;
        else if (!strcmp(flag, "--seqlen-k"))
            rc = parse_i64(flag, val, 1, &p->seqlen_k, err, err_len), seq_k = 1;
        else if (!strcmp(flag, "--head-dim"))
            rc = parse_i64(flag, val, 1, &p->head_dim, err, err_len);
        else if (!strcmp(flag, "--head-dim-v"))
            rc = parse_i64(flag, val, 1, &p->head_dim_v, err, err_len), dv_given = 1;
        else if (!strcmp(flag, "--dtype") || !strcmp(flag, "--bias-dtype")) {
            cflash_dtype* dt = !strcmp(flag, "--dtype") ? &p->dtype : &p->bias_dtype;
            if (!strcmp(val, "fp32") || !strcmp(val, "float32"))
                *dt = CFLASH_DTYPE_F32;
            else if (!strcmp(val, "fp16") || !strcmp(val, "float16"))
                *dt = CFLASH_DTYPE_F16;
            else if (!strcmp(val, "bf16") || !strcmp(val, "bfloat16"))
                *dt = CFLASH_DTYPE_BF16;
            else
                rc = fail(err, err_len, "%s: '%s', expected fp32, fp16 or bf16", flag, val);
            if (dt == &p->bias_dtype) p->bias = 1;
        } else if (!strcmp(flag, "--window")) {
            char* end;
            errno = 0;
            long long l = strtoll(val, &end, 10);
            long long r = 0;
            int ok = end != val && *end == ',' && !errno;
            if (ok) {
                const char* rs = end + 1;
                r = strtoll(rs, &end, 10);
                ok = end != rs && !*end && !errno;
            }
            if (!ok || l < -1 || r < -1)
                rc = fail(err, err_len, "%s: '%s', expected L,R with each -1 (unbounded) or >= 0",
                          flag, val);
            else
                p->window_left = l, p->window_right = r;
        } else if (!strcmp(flag, "--softcap")) {
            rc = parse_float(flag, val, &p->softcap, err, err_len);
            if (!rc && p->softcap < 0)
                rc = fail(err, err_len, "%s: '%s', expected >= 0 (0 = off)", flag, val);
        } else if (!strcmp(flag, "--dropout")) {
            rc = parse_float(flag, val, &p->dropout, err, err_len);
            if (!rc && !(p->dropout >= 0 && p->dropout < 1))
                rc = fail(err, err_len, "%s: '%s', expected a probability in [0, 1)", flag, val);
        } else if (!strcmp(flag, "--backend")) {
            p->backend = strcmp(val, "auto") && *val ? val : NULL;
        } else if (!strcmp(flag, "--threads")) {
            rc = parse_int(flag, val, 0, &p->threads, err, err_len);
        } else if (!strcmp(flag, "--device")) {
            if (!strcmp(val, "cpu"))
                p->device = kDLCPU;
            else if (!strcmp(val, "cuda"))
                p->device = kDLCUDA;
            else
                rc = fail(err, err_len, "%s: '%s', expected cpu or cuda", flag, val);
        } else if (!strcmp(flag, "--warmup")) {
            rc = parse_int(flag, val, 0, &p->warmup, err, err_len);
        } else if (!strcmp(flag, "--reps")) {
            rc = parse_int(flag, val, 1, &p->reps, err, err_len);
        } else if (!strcmp(flag, "--mask") || !strcmp(flag, "--block-sparse")) {
            float* d = !strcmp(flag, "--mask") ? &p->mask : &p->block_sparse;
            rc = parse_float(flag, val, d, err, err_len);
            if (!rc && !(*d > 0 && *d <= 1))
                rc = fail(err, err_len, "%s: '%s', expected a fraction in (0, 1]", flag, val);
        } else if (!strcmp(flag, "--block-size")) {
            rc = parse_i64(flag, val, 1, &p->block_size, err, err_len);
        } else if (!strcmp(flag, "--chunk")) {
            rc = parse_i64(flag, val, 1, &p->chunk, err, err_len);
        }
        if (rc) return -1;
    }
    p->seqlen_q_given = seq_q;
    if (seq_both) {
        if (!seq_q) p->seqlen_q = seqlen;
        if (!seq_k) p->seqlen_k = seqlen;
    }
    if (p->dbias) p->bias = 1;
    if (p->bias_dtype != CFLASH_DTYPE_F32 && p->bias_dtype != p->dtype) {
        snprintf(err, err_len, "--bias-dtype: %s, expected fp32 or the --dtype (%s)",
                 p->bias_dtype == CFLASH_DTYPE_F16 ? "fp16" : "bf16",
                 p->dtype == CFLASH_DTYPE_F32   ? "fp32"
                 : p->dtype == CFLASH_DTYPE_F16 ? "fp16"
                                                : "bf16");
        return -1;
    }
    if (!hkv_given) p->heads_kv = p->heads;
    if (!dv_given) p->head_dim_v = p->head_dim;
    if (p->heads % p->heads_kv) {
        snprintf(err, err_len,
                 "--heads-kv: %lld does not divide --heads %lld (GQA/MQA need H %% Hk == 0)",
                 (long long)p->heads_kv, (long long)p->heads);
        return -1;
    }
    return 0;
}
