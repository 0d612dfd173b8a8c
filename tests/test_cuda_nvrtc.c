/* Compiles every CUDA kernel variant with the installed NVRTC, without a GPU: all variants for
 * sm_75 (the SIMT kernels), sm_80 and sm_90, and a representative set (SIMT fp16 at head dim 128
 * and the ops; MMA bf16 at 128 for sm_86 and the newest arch) for every other arch the NVRTC lists,
 * plus PTX for the newest. Also
 * checks the CUDA copy of the dropout Philox against src/core/philox.h word for word, and the
 * target choice. Skips (exit 77) when NVRTC is absent. CFLASH_NVRTC_ALL=1 compiles every variant
 * for every listed arch.
 * `test_cuda_nvrtc K/N` runs part K of N: the compiles split into N sets of about equal cost (the
 * same split in every part), the other checks in part 1 only. ctest runs it as two parts, side by
 * side: its compiles, on one core, were the long pole of test-c. No argument: everything. */
#include <dirent.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef CF_HAVE_CUDA_H
#include <cuda.h> /* first: cuda_drv.h then uses its types */
#endif
#include "common/testutil.h"
#include "core/philox.h"
#include "cuda/cuda_rtc.h"
#include "cuda/kcache.h"
#include "cuda/kernels/cf_ops_args.cuh"

#ifdef CF_HAVE_CUDA_H
_Static_assert((int)CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR == (int)CF_CU_ATTR_CC_MAJOR,
               "cc major");
_Static_assert((int)CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR == (int)CF_CU_ATTR_CC_MINOR,
               "cc minor");
_Static_assert((int)CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT == (int)CF_CU_ATTR_SM_COUNT,
               "sm count");
_Static_assert((int)CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK ==
                   (int)CF_CU_ATTR_MAX_SMEM_PER_BLOCK,
               "smem");
_Static_assert((int)CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN ==
                   (int)CF_CU_ATTR_MAX_SMEM_OPTIN,
               "smem optin");
_Static_assert((int)CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED == (int)CF_CU_ATTR_MEMORY_POOLS,
               "pools");
_Static_assert((int)CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES ==
                   (int)CF_CU_FUNC_ATTR_MAX_DYN_SMEM,
               "dyn smem");
_Static_assert((int)CU_FUNC_ATTRIBUTE_NUM_REGS == (int)CF_CU_FUNC_ATTR_NUM_REGS, "regs");
_Static_assert(sizeof(CUdeviceptr) == sizeof(unsigned long long), "CUdeviceptr");
#endif

/* ---- The kernels' Philox (cf_common.cuh, compiled here as C) against the library's --------- */

static void test_philox(void) {
    /* Known answers of Philox-4x32-10 (Random123's kat_vectors). */
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t t = 0; t < sizeof kat / sizeof kat[0]; t++) {
        uint64_t seed = ((uint64_t)kat[t].key[1] << 32) | kat[t].key[0];
        cf_u32x4 g = cf_philox10(kat[t].ctr[0], kat[t].ctr[1], kat[t].ctr[2], kat[t].ctr[3], seed);
        cf_philox_out c = cf_philox4x32_10(kat[t].ctr, seed);
        for (int w = 0; w < 4; w++) {
            CHECK_MSG(g.x[w] == kat[t].out[w], "kat %zu word %d: cuda %08x, expected %08x", t, w,
                      g.x[w], kat[t].out[w]);
            CHECK_MSG(c.x[w] == kat[t].out[w], "kat %zu word %d: core %08x, expected %08x", t, w,
                      c.x[w], kat[t].out[w]);
        }
    }
    /* The dropout words and keep decisions, random (b, h, i, j), offsets with a carry. */
    tt_rng r;
    tt_rng_init(&r, 42);
    int mismatch = 0, keeps = 0;
    const int n = 20000;
    for (int t = 0; t < n; t++) {
        uint64_t seed = tt_rng_u64(&r);
        uint64_t offset = t % 3 == 0 ? UINT64_MAX - (tt_rng_u64(&r) % 64) : tt_rng_u64(&r) >> 20;
        uint64_t b = tt_rng_u64(&r) % 70000, h = tt_rng_u64(&r) % 300;
        uint64_t i = tt_rng_u64(&r) % 200000, j = tt_rng_u64(&r) % 200000;
        cf_u32x4 g = cf_dropout_words4(seed, offset, b, h, i, j);
        cf_philox_out c = cf_dropout_words(seed, offset, b, h, i, j);
        for (int w = 0; w < 4; w++)
            mismatch += g.x[w] != c.x[w];
        float p = (float)(t % 10) / 10.0f;
        cf_attn_args a;
        memset(&a, 0, sizeof a);
        a.seed = seed;
        a.offset = offset;
        a.dropout_p = p;
        a.keep_threshold = cf_dropout_threshold(p);
        int kc = cf_dropout_keep_word(&a, (cf_i64)b, (cf_i64)h, (cf_i64)i, (cf_i64)j);
        int kr = cf_dropout_keep(seed, offset, p, b, h, i, j);
        mismatch += kc != kr;
        keeps += kr;
    }
    CHECK_MSG(mismatch == 0, "%d mismatches between the CUDA and core Philox", mismatch);
    /* p runs over 0..0.9: about 55% kept overall. */
    CHECK_MSG(keeps > n / 2 - n / 20 && keeps < n / 2 + n / 5, "kept %d of %d", keeps, n);
}

/* ---- Target choice ------------------------------------------------------------------------ */

static void test_target(const int* archs, int na) {
    int target, ptx;
    CHECK_OK(cf_nvrtc_target(archs[na - 1], &target, &ptx));
    CHECK(target == archs[na - 1] && !ptx);
    /* A GPU newer than anything the NVRTC knows: PTX for the newest arch it supports. */
    CHECK_OK(cf_nvrtc_target(archs[na - 1] + 7, &target, &ptx));
    CHECK(ptx && target == archs[na - 1]);
    /* Older than anything it supports: a clear error. */
    if (archs[0] > 30) {
        CHECK_ERR(cf_nvrtc_target(30, &target, &ptx), CFLASH_ERR_UNSUPPORTED,
                  "cannot target sm_30");
    }
    void* img = NULL;
    size_t len = 0;
    CHECK_ERR(cf_nvrtc_compile("no_such_kernel.cu", "", archs[0], 0, &img, &len, NULL),
              CFLASH_ERR_BACKEND, "no embedded kernel source");
}

/* ---- Argument struct layouts: host sizeof/offsetof handed to the device compiler ---------- */

/* In the PTX of layout_check.cu, kernel cf_probe_<T>_<f>'s parameter 0 must have the host's
 * sizeof(T) bytes and the field must be loaded from the host's offsetof(T, f). */
static void check_probe(const char* ptx, const char* T, const char* f, size_t size, size_t off) {
    char name[128], pat[160];
    snprintf(name, sizeof name, "cf_probe_%s_%s_param_0", T, f);
    snprintf(pat, sizeof pat, "%s[", name);
    const char* decl = strstr(ptx, pat);
    size_t got_size = decl ? strtoul(decl + strlen(pat), NULL, 10) : 0;
    CHECK_MSG(got_size == size, "sizeof %s: device %zu, host %zu", T, got_size, size);
    snprintf(pat, sizeof pat, "[%s+", name);
    const char* use = strstr(ptx, pat);
    size_t got_off = use ? strtoul(use + strlen(pat), NULL, 10) : 0;
    CHECK_MSG(got_off == off, "offsetof(%s, %s): device %zu, host %zu", T, f, got_off, off);
}

static void test_layouts(int arch) {
    void* img = NULL;
    size_t len = 0;
    CHECK_OK(cf_nvrtc_compile("layout_check.cu", "", arch, 1, &img, &len, NULL));
    if (!img) return;
    const char* ptx = img;
#define PROBE(T, f) check_probe(ptx, #T, #f, sizeof(T), offsetof(T, f))
    PROBE(cf_attn_args, lse_sb);
    PROBE(cf_attn_args, keep_threshold);
    PROBE(cf_attn_args, tile);
    PROBE(cf_kv_args, opart);
    PROBE(cf_kv_args, cs_dt);
    PROBE(cf_rotary_args, dt);
    PROBE(cf_merge_args, op_dt);
    PROBE(cf_norm_args, ws);
    PROBE(cf_norm_args, rms);
#undef PROBE
    /* The parsing finds what it looks for (a wrong expectation fails). */
    const char* decl = strstr(ptx, "cf_probe_cf_attn_args_tile_param_0[");
    CHECK(decl && strtoul(decl + strlen("cf_probe_cf_attn_args_tile_param_0["), NULL, 10) ==
                      sizeof(cf_attn_args));
    free(img);
}

/* ---- Compiles ----------------------------------------------------------------------------- */

static const char* const simt_kernels[] = {"cf_attn_fwd_simt",
                                           "cf_attn_bwd_delta_simt",
                                           "cf_attn_bwd_dq_simt",
                                           "cf_attn_bwd_dkdv_simt",
                                           "cf_kv_append_simt",
                                           "cf_kv_attn_simt",
                                           NULL};
static const char* const mma_kernels[] = {"cf_attn_fwd_mma", "cf_attn_bwd_dq_mma",
                                          "cf_attn_bwd_dkdv_mma", NULL};
static const char* const ops_kernels[] = {"cf_rotary_simt",   "cf_merge_simt",
                                          "cf_norm_fwd_simt", "cf_norm_bwd_rows",
                                          "cf_norm_bwd_cols", NULL};

static const char* const* kernels_of(const char* src) {
    return strstr(src, "mma") ? mma_kernels : strstr(src, "ops") ? ops_kernels : simt_kernels;
}

static int contains(const void* hay, size_t n, const char* needle) {
    size_t m = strlen(needle);
    const char* h = hay;
    for (size_t i = 0; i + m <= n; i++)
        if (h[i] == needle[0] && !memcmp(h + i, needle, m)) return 1;
    return 0;
}

static int compiles = 0;
static double compile_s = 0;
static int part = 0, nparts = 1; /* this process's part (0-based) of nparts */

/* Whether this part compiles v: each compile goes to the part with the least estimated cost so
 * far (MMA kernels take ~7x a SIMT one to compile), the same choice in every part. */
static int in_my_part(const cf_cuda_variant* v) {
    static double cost[8];
    int p = 0;
    for (int i = 1; i < nparts; i++)
        if (cost[i] < cost[p]) p = i;
    cost[p] += strcmp(v->name, "attn_mma.cu") ? 1.0 : 7.0;
    return p == part;
}

static void compile_one(const cf_cuda_variant* v, int arch, int ptx) {
    if (!in_my_part(v)) return;
    void* img = NULL;
    size_t len = 0;
    int hit = -1;
    double t0 = tt_now();
    cflash_status s = cf_nvrtc_compile(v->name, v->defines, arch, ptx, &img, &len, &hit);
    double dt = tt_now() - t0;
    CHECK_MSG(s == CFLASH_OK, "%s %s %s_%d: %s", v->name, v->defines, ptx ? "compute" : "sm", arch,
              cflash_last_error());
    if (s != CFLASH_OK) return;
    compiles++;
    compile_s += dt;
    CHECK(hit == 0); /* fresh cache directory: a real compile */
    CHECK(len > 100);
    const char* const* names = kernels_of(v->name);
    for (const char* const* k = names; *k; k++)
        CHECK_MSG(contains(img, len, *k), "%s %s sm_%d: kernel %s missing from the output", v->name,
                  v->defines, arch, *k);
    if (ptx) CHECK(contains(img, len, ".target"));
    free(img);
}

/* Removes the flat cache directory the test made. */
static void remove_dir(const char* dir) {
    DIR* d = opendir(dir);
    struct dirent* e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

/* Cubins embedded by CFLASH_CUDA_AOT=ON (none otherwise): ELF images holding their kernels, one
 * per (variant, arch) of the AOT list. */
static void test_aot(void) {
    printf("%d precompiled cubins embedded\n", cf_cuda_aot_count);
    for (int i = 0; i < cf_cuda_aot_count; i++) {
        const cf_cuda_aot* a = &cf_cuda_aot_table[i];
        CHECK_MSG(a->len > 4 && !memcmp(a->data,
                                        "\x7f"
                                        "ELF",
                                        4),
                  "%s %s sm_%d: not an ELF image", a->name, a->defines, a->arch);
        const char* const* names = kernels_of(a->name);
        for (const char* const* k = names; *k; k++)
            CHECK_MSG(contains(a->data, a->len, *k), "%s sm_%d: no %s", a->name, a->arch, *k);
    }
}

int main(int argc, char** argv) {
    if (argc > 1) {
        int k = 0, n = 0;
        if (sscanf(argv[1], "%d/%d", &k, &n) != 2 || n < 1 || n > 8 || k < 1 || k > n) {
            fprintf(stderr, "usage: %s [K/N] (part K of N, N <= 8)\n", argv[0]);
            return 2;
        }
        part = k - 1, nparts = n;
    }
    if (part == 0) test_aot();
    char why[1024];
    if (!cf_nvrtc_available(why, sizeof why)) {
        printf("SKIP: NVRTC not available: %s\n", why);
        return tt_failed ? tt_summary() : 77;
    }
    char dir[] = "/tmp/cflash_nvrtc_test_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    setenv("CFLASH_CACHE_DIR", dir, 1);
    cf_kcache_reset();

    int maj, min;
    cf_nvrtc_version(&maj, &min);
    int archs[64];
    int na = cf_nvrtc_archs(archs, 64);
    printf("NVRTC %d.%d, %d archs:", maj, min, na);
    for (int i = 0; i < na; i++)
        printf(" %d", archs[i]);
    printf("\n");
    CHECK(na > 0);

    if (part == 0) {
        test_philox();
        test_target(archs, na);
        test_layouts(archs[0]);
    }

    cf_cuda_variant vars[64];
    int nv = cf_cuda_variants(vars, 64);
    CHECK(nv >= 16);
    int all = getenv("CFLASH_NVRTC_ALL") && atoi(getenv("CFLASH_NVRTC_ALL"));
    const int full[] = {75, 80, 90};
    for (int f = 0; f < 3; f++) {
        int listed = 0;
        for (int i = 0; i < na; i++)
            listed |= archs[i] == full[f];
        if (!listed) {
            printf("note: NVRTC %d.%d does not list sm_%d; skipped\n", maj, min, full[f]);
            continue;
        }
        for (int i = 0; i < nv; i++)
            if (vars[i].min_arch <= full[f]) compile_one(&vars[i], full[f], 0);
    }
    for (int a = 0; a < na; a++) {
        if (archs[a] == 75 || archs[a] == 80 || archs[a] == 90) continue;
        for (int i = 0; i < nv; i++) {
            if (vars[i].min_arch > archs[a]) continue;
            int rep = (!strcmp(vars[i].name, "attn_simt.cu") &&
                       !strcmp(vars[i].defines, "-DCF_DTYPE=1 -DCF_DMAX=128")) ||
                      (!strcmp(vars[i].name, "attn_mma.cu") &&
                       !strcmp(vars[i].defines, "-DCF_DTYPE=2 -DCF_DMAX=128") &&
                       (archs[a] == 86 || a == na - 1)) ||
                      !strcmp(vars[i].name, "ops_simt.cu");
            if (all || rep) compile_one(&vars[i], archs[a], 0);
        }
    }
    /* PTX for the newest arch (the path for GPUs newer than the NVRTC). */
    compile_one(&vars[0], archs[na - 1], 1);
    printf("part %d of %d: %d compiles in %.1f s (%.2f s each)\n", part + 1, nparts, compiles,
           compile_s, compiles ? compile_s / compiles : 0.0);
    CHECK(compiles > 0);

    /* Second pass over test_layouts' program: now a cache hit. */
    if (part == 0) {
        void* img = NULL;
        size_t len = 0;
        int hit = 0;
        CHECK_OK(cf_nvrtc_compile("layout_check.cu", "", archs[0], 1, &img, &len, &hit));
        CHECK(hit == 1);
        free(img);
    }

    remove_dir(dir);
    return tt_summary();
}
