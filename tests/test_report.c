/* cflash_report under broken environments. Each ctest entry (tests/CMakeLists.txt) runs this with
 * one scenario name and the environment that breaks something: a missing override file, a fake
 * libcuda whose cuInit fails, one lacking a symbol, NVRTC hidden, a fake cuFile without
 * cuFileDriverOpen, no ldconfig on PATH, a forced backend that cannot serve, OMP_NUM_THREADS=1.
 * Each expects the specific reason in the text AND in the JSON report, and a correct attention call
 * on the CPU. `test_report --print-json` prints the JSON for python3 -m json.tool. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "dispatch/dispatch.h"
#include "probe/cpu_features.h"
#include "report_smoke.h"

static char* text;
static char* json;

static char* report(int as_json) {
    size_t need = cflash_report(NULL, 0, as_json);
    char* b = malloc(need + 1);
    CHECK(b != NULL);
    CHECK(cflash_report(b, need + 1, as_json) == need);
    CHECK(strlen(b) == need);
    return b;
}

/* Both forms carry the reason (the JSON one escaped: check a fragment without quotes). */
static void expect(const char* fragment) {
    CHECK_MSG(strstr(text, fragment) != NULL, "text report lacks \"%s\"", fragment);
    CHECK_MSG(strstr(json, fragment) != NULL, "JSON report lacks \"%s\"", fragment);
}
static void expect_text(const char* fragment) {
    CHECK_MSG(strstr(text, fragment) != NULL, "text report lacks \"%s\"", fragment);
}

/* The op x backend row says fragment (or that the backend is not in this build). */
static void expect_row(const char* op, const char* backend, const char* fragment) {
    char head[64];
    snprintf(head, sizeof head, "\n  %-16s %-12s ", op, backend);
    const char* r = strstr(text, head);
    CHECK_MSG(r != NULL, "no row for %s %s", op, backend);
    if (!r) return;
    r += strlen(head);
    const char* end = strchr(r, '\n');
    size_t n = end ? (size_t)(end - r) : strlen(r);
    char row[2048];
    snprintf(row, sizeof row, "%.*s", (int)(n < sizeof row ? n : sizeof row - 1), r);
    CHECK_MSG(strstr(row, fragment) || !strcmp(row, "[NO] not implemented"),
              "%s %s: \"%.900s\" lacks \"%s\"", op, backend, row, fragment);
}

/* Checks that hold in every scenario. */
static void common_checks(void) {
    /* Truncation: a prefix, NUL-terminated, same needed length. */
    char small[64];
    memset(small, 'x', sizeof small);
    CHECK(cflash_report(small, 40, 0) == strlen(text));
    CHECK(strlen(small) == 39 && !strncmp(small, text, 39) && small[40] == 'x');
    CHECK(cflash_report(NULL, 0, 1) == strlen(json));

    const char* sections[] = {"[library]", "[environment]", "[cpu]",          "[cuda driver]",
                              "[nvrtc]",   "[cufile]",      "[kernel cache]", "[backends]"};
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
        CHECK_MSG(strstr(text, sections[i]), "missing section %s", sections[i]);
    const char* keys[] = {"\"library\": {",  "\"cpu\": {",      "\"cuda\": {",
                          "\"nvrtc\": {",    "\"cufile\": {",   "\"kernel_cache\": {",
                          "\"backends\": {", "\"attn_fwd\": {", "\"cpu-ref\": {\"ok\": true"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        CHECK_MSG(strstr(json, keys[i]), "JSON lacks %s", keys[i]);
    CHECK(json[0] == '{' && json[strlen(json) - 2] == '}');
    /* the huge page line: the mode, or that it is not known (and the JSON key, null then) */
    CHECK(strstr(text, "\n  huge pages            ") != NULL);
    CHECK(strstr(json, "\"transparent_huge_pages\": ") != NULL);

    /* [environment] names every variable the library reads (src/core/threads.c's thread policy
     * and src/cpu/attn_blocks.c's block sizes among them). */
    const char* vars[] = {"CFLASH_BACKEND",     "CFLASH_LOG",         "CFLASH_CACHE_DIR",
                          "CFLASH_ATTN_BLOCKS", "CFLASH_SMALL_CALLS", "OMP_WAIT_POLICY",
                          "GOMP_SPINCOUNT",     "OMP_NUM_THREADS",    "CFLASH_NVRTC_OPTIONS"};
    const char *env = strstr(text, "[environment]"), *env_end = env ? strstr(env, "\n\n") : NULL;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        char line[64];
        snprintf(line, sizeof line, "\n  %s ", vars[i]);
        const char* at = env ? strstr(env, line) : NULL;
        CHECK_MSG(at && (!env_end || at < env_end), "[environment] lacks %s", vars[i]);
    }

    /* The op x backend table: one row per op and backend, [OKAY] or [NO] with a reason. */
    for (int op = 0; op < CFLASH_OP_COUNT; op++) {
        char row[64];
        snprintf(row, sizeof row, "  %-16s %-12s [OKAY]", cflash_op_name((cflash_op)op), "cpu-ref");
        CHECK_MSG(strstr(text, row), "no row '%s'", row);
    }
    int rows = 0;
    for (const char* p = text; (p = strstr(p, "\n  attn_fwd ")); p++) {
        rows++;
        const char* end = strchr(p + 1, '\n');
        const char* ok = strstr(p, "[OKAY]");
        const char* no = strstr(p, "[NO] ");
        CHECK_MSG((ok && ok < end) || (no && no < end && end - no > 6), "bad row %.80s", p + 1);
    }
    size_t n_backends = 0;
    while (cf_backend_name(n_backends))
        n_backends++;
    CHECK_MSG(rows == (int)n_backends, "%d attn_fwd rows, %zu backends registered", rows,
              n_backends);

    /* The CPU section tells the truth about AMX and AVX-512, with a reason when absent. */
    const cf_cpu_info* c = cf_cpu();
    char amx[256];
    snprintf(amx, sizeof amx, "  %-21s %s\n", "AMX", c->amx_note);
    expect_text(amx);
    expect(c->amx_note);
    if (!c->avx512f) expect(c->avx512_note);
    expect(c->arm_note);
#if defined(__aarch64__)
    /* ARM: the features line starts with NEON; cpu-neon serves every op here, cpu-sve every op
     * where the CPU has SVE. */
    expect_text("  features              neon");
    CHECK(strstr(json, "\"arm\": {\"neon_usable\": true"));
    for (int op = 0; op < CFLASH_OP_COUNT; op++) {
        char row[64];
        snprintf(row, sizeof row, "  %-16s %-12s [OKAY]\n", cflash_op_name((cflash_op)op),
                 "cpu-neon");
        CHECK_MSG(strstr(text, row), "no row '%s'", row);
        snprintf(row, sizeof row, "  %-16s %-12s %s", cflash_op_name((cflash_op)op), "cpu-sve",
                 c->sve ? "[OKAY]\n" : "[NO] needs SVE");
        CHECK_MSG(strstr(text, row), "no row '%s'", row);
    }
#else
    expect_text(c->avx2 ? " avx2 " : "absent                avx512fp16");
    /* which unit multiplies bf16 (cpu-avx512's table follows it), and why */
    if (c->avx512f) {
        char g[256];
        snprintf(g, sizeof g, "  %-21s %s\n", "bf16 GEMMs", c->bf16_gemm_note);
        expect_text(g);
        expect(c->bf16_gemm_note);
        CHECK(!c->bf16_dot_gemm || c->avx512bf16);
        CHECK(strstr(c->bf16_gemm_note, c->bf16_dot_gemm ? "vdpbf16ps" : "fp32 FMA") != NULL);
        /* CFLASH_BF16_GEMM (the bf16-gemm-* scenarios): dot / fma chosen where AVX512-BF16 is
         * present, said in the note; anything else said to be ignored */
        const char* force = getenv("CFLASH_BF16_GEMM");
        const int dot = force && !strcmp(force, "dot"), fma = force && !strcmp(force, "fma");
        if ((dot || fma) && c->avx512bf16)
            CHECK_MSG(c->bf16_dot_gemm == dot && strstr(c->bf16_gemm_note, "(CFLASH_BF16_GEMM="),
                      "CFLASH_BF16_GEMM=%s: %s", force, c->bf16_gemm_note);
        else if (force && *force)
            CHECK_MSG(strstr(c->bf16_gemm_note, "ignored"), "CFLASH_BF16_GEMM=%s: %s", force,
                      c->bf16_gemm_note);
    }
    expect_row("attn_fwd", "cpu-neon", "[NO] not an AArch64 CPU");
    expect_row("attn_bwd", "cpu-sve", "[NO] not an AArch64 CPU");
    CHECK(strstr(json, "\"arm\": {\"neon_usable\": false"));
#endif

    /* CUDA: usable, or a reason. */
    CHECK(strstr(text, "[cuda driver]\n  status                [OKAY]") ||
          strstr(text, "[cuda driver]\n  status                [NO] "));
    CHECK(strstr(text, "[nvrtc]\n  status                [OKAY] NVRTC ") ||
          strstr(text, "[nvrtc]\n  status                [NO] "));
}

/* Reports from several threads at once, the first call in the process included, agree. */
static void* report_thread(void* arg) {
    size_t need = cflash_report(NULL, 0, 0);
    char* b = malloc(need + 1);
    if (b) cflash_report(b, need + 1, 0);
    *(char**)arg = b;
    return NULL;
}

/* Whether p is an ELF file for this process's machine (under qemu-user the host's x86-64 NVRTC
 * exists but cannot be loaded). */
static int native_elf(const char* p) {
#if defined(__x86_64__)
    const unsigned machine = 62; /* EM_X86_64 */
#elif defined(__aarch64__)
    const unsigned machine = 183; /* EM_AARCH64 */
#else
    const unsigned machine = 0;
#endif
    unsigned char h[20];
    FILE* f = fopen(p, "rb");
    if (!f) return 0;
    const size_t n = fread(h, 1, sizeof h, f);
    fclose(f);
    return n == sizeof h && !memcmp(h, "\177ELF", 4) && (unsigned)(h[18] | h[19] << 8) == machine;
}

int main(int argc, char** argv) {
    const char* scenario = argc > 1 ? argv[1] : "default";
    if (!strcmp(scenario, "--print-json")) {
        char* j = malloc(cflash_report(NULL, 0, 1) + 1);
        cflash_report(j, cflash_report(NULL, 0, 1) + 1, 1);
        fputs(j, stdout);
        free(j);
        return 0;
    }
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    pthread_t th[4];
    char* from_thread[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, report_thread, &from_thread[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    text = report(0);
    for (int i = 0; i < 4; i++) {
        CHECK(from_thread[i] && !strcmp(from_thread[i], text));
        free(from_thread[i]);
    }
    json = report(1);
    common_checks();
    int attn_expected_ok = 1;
    /* Whether NVRTC loads here (not under qemu, say): the CUDA rows say NVRTC first without it. */
    const int nvrtc = strstr(text, "[nvrtc]\n  status                [OKAY]") != NULL;

    if (!strcmp(scenario, "default") || !strcmp(scenario, "no-ldconfig")) {
        /* With PATH empty nothing changes: nothing is looked up by running a program. */
        if (!strcmp(scenario, "no-ldconfig")) {
            const char* path = getenv("PATH");
            CHECK_MSG(path && !strstr(path, "bin"), "PATH should be an empty dir, is %s", path);
        }
        /* Where NVRTC is installed at the usual place, it must be found, with version and archs. */
        if (native_elf("/usr/local/cuda/lib64/libnvrtc.so.13") ||
            native_elf("/usr/local/cuda/lib64/libnvrtc.so.12")) {
            expect_text("[nvrtc]\n  status                [OKAY] NVRTC 1");
            expect_text("  archs                 sm_");
            CHECK(strstr(json, "\"archs\": [") && !strstr(json, "\"archs\": []"));
        }
        /* Where the loader cannot find a driver, the report gives the loader's own message. */
        void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", dlerror());
            expect(msg);
            expect_text("[cuda driver]\n  status                [NO] libcuda.so.1 not found");
        } else {
            dlclose(h);
        }
    } else if (!strcmp(scenario, "libcuda-override-missing")) {
        expect("CFLASH_LIBCUDA is set to '/nonexistent/cflash/libcuda.so.1' and it cannot be "
               "loaded");
        expect("/nonexistent/cflash/libcuda.so.1: cannot open shared object file: No such file");
    } else if (!strcmp(scenario, "cuinit-no-device")) {
        /* The fake is found through LD_LIBRARY_PATH by its soname. */
        expect("cuInit failed with 100 CUDA_ERROR_NO_DEVICE");
        expect("no NVIDIA GPU is visible");
        expect_text("(found by soname)");
        expect("fakes/cuda_initfail/libcuda.so.1");
        expect_text("  driver                12.4\n");
        expect_row("attn_fwd", "cuda-simt", "CUDA_ERROR_NO_DEVICE");
        expect_row("attn_bwd", "cuda-mma", "CUDA_ERROR_NO_DEVICE");
        CHECK(strstr(json, "\"cuinit_result\": 100"));
    } else if (!strcmp(scenario, "cuinit-stub")) {
        /* Override naming a directory. */
        expect("cuInit failed with 34 CUDA_ERROR_STUB_LIBRARY");
        expect("stub libcuda");
        expect_text("(found by CFLASH_LIBCUDA)");
        expect_row("attn_fwd", "cuda-simt", "CUDA_ERROR_STUB_LIBRARY");
    } else if (!strcmp(scenario, "fake-gpu")) {
        expect_text("[cuda driver]\n  status                [OKAY] driver 12.4, 1 device(s)");
        expect_text("device 0              Fake GPU for cflash tests, sm_80, 108 SMs, 40.0 GiB");
        /* sm_80 has not run the GPU tests (sm_90 has): the report says so */
        expect_text("    tested              no: cflash's CUDA kernels compile for sm_80 but have "
                    "run the GPU tests only on sm_90");
        CHECK(strstr(json, "\"sm\": 80, \"multiprocessors\": 108, \"total_mem_bytes\": "
                           "42949672960, \"gpu_tests_passed\": false"));
        /* ... and every CUDA row serves only when forced (each op's verified hook), where NVRTC
         * lets the backends run at all. */
        static const char* const ops[] = {"attn_fwd",        "attn_bwd",    "attn_varlen_fwd",
                                          "attn_varlen_bwd", "kvcache_fwd", "rotary",
                                          "norm_fwd",        "norm_bwd",    "attn_merge"};
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
            expect_row(ops[i], "cuda-simt",
                       nvrtc ? "[NO] not yet verified on sm_80 (Fake GPU for cflash tests): the "
                               "GPU tests have passed on sm_90 (NVIDIA H200, 2026-12-04) only; "
                               "force it with CFLASH_BACKEND=cuda-simt"
                             : "[NO] NVRTC needed");
        expect_row("attn_fwd", "cuda-mma",
                   nvrtc ? "[NO] not yet verified on sm_80" : "[NO] NVRTC needed");
        expect_row("attn_bwd", "cuda-mma",
                   nvrtc ? "force it with CFLASH_BACKEND=cuda-mma" : "[NO] NVRTC needed");
    } else if (!strcmp(scenario, "fake-gpu-sm90")) {
        /* An arch in report.c's cuda_tested table: the line says where the tests passed. */
        expect_text("device 0              Fake GPU for cflash tests, sm_90, 108 SMs, 40.0 GiB");
        expect_text("    tested              yes: the GPU tests passed on sm_90 (NVIDIA H200, "
                    "2026-12-04)");
        CHECK(strstr(json, "\"sm\": 90, \"multiprocessors\": 108, \"total_mem_bytes\": "
                           "42949672960, \"gpu_tests_passed\": true"));
        const char* ok = nvrtc ? "[OKAY]" : "[NO] NVRTC needed";
        expect_row("attn_fwd", "cuda-mma", ok);
        expect_row("kvcache_fwd", "cuda-simt", ok);
        expect_row("norm_bwd", "cuda-simt", ok);
    } else if (!strcmp(scenario, "fake-gpu-no-nvrtc")) {
        /* A GPU but no NVRTC: the CUDA backends say NVRTC is the reason. */
        expect_text("[cuda driver]\n  status                [OKAY] driver 12.4, 1 device(s)");
        expect("CFLASH_LIBNVRTC is set to '/nonexistent/libnvrtc.so.13'");
        expect_row("attn_fwd", "cuda-simt",
                   "CFLASH_LIBNVRTC is set to '/nonexistent/libnvrtc.so.13'");
        expect_row("attn_bwd", "cuda-mma", "NVRTC");
    } else if (!strcmp(scenario, "libcuda-missing-symbol")) {
        expect("lacks the entry point(s) cuDeviceTotalMem_v2");
        CHECK(strstr(json, "\"symbols_ok\": false"));
        expect_row("attn_fwd", "cuda-simt", "cuDeviceTotalMem_v2");
    } else if (!strcmp(scenario, "nvrtc-override-missing")) {
        expect("CFLASH_LIBNVRTC is set to '/nonexistent/libnvrtc.so.13' and it cannot be loaded");
        expect("/nonexistent/libnvrtc.so.13: cannot open shared object file");
        expect_text("[nvrtc]\n  status                [NO] ");
        CHECK(strstr(json, "\"nvrtc\": {\"usable\": false"));
    } else if (!strcmp(scenario, "nvrtc-hidden")) {
        /* CFLASH_LIBNVRTC names a directory without NVRTC: as if none were installed. */
        expect("directory holds none of the sonames");
        expect_text("[nvrtc]\n  status                [NO] ");
    } else if (!strcmp(scenario, "cufile-no-driver-open")) {
        expect("lacks cuFileDriverOpen");
        CHECK(strstr(json, "\"cuFileDriverOpen\": false"));
    } else if (!strcmp(scenario, "forced-backend")) {
        /* CFLASH_BACKEND=cuda-simt: shown in the report, and a CPU call fails naming why. */
        expect_text("  CFLASH_BACKEND        cuda-simt\n");
        expect("forces cuda-simt, which cannot run attn_fwd here (");
        expect_text("  note                  CFLASH_BACKEND forces cuda-simt");
        CHECK_ERR(smoke_attn(ctx, 0, 5), CFLASH_ERR_UNSUPPORTED, "backend 'cuda-simt' is forced");
        CHECK(strstr(cflash_last_error(), "backends that could: "));
        CHECK(strstr(cflash_last_error(), "cpu-ref"));
        /* The context's choice overrides the environment: the CPU call then works. */
        CHECK_OK(cflash_context_set_backend(ctx, "cpu-ref"));
    } else if (!strcmp(scenario, "omp-1")) {
#ifdef _OPENMP
        expect_text("OpenMP");
        expect_text(", 1 threads");
#endif
        expect_text("  OMP_NUM_THREADS       1\n");
    } else if (!strncmp(scenario, "bf16-gemm-", 10)) {
        /* CFLASH_BF16_GEMM set: shown among the variables (the note is checked above) */
        char v[96];
        snprintf(v, sizeof v, "  %-21s %s\n", "CFLASH_BF16_GEMM", getenv("CFLASH_BF16_GEMM"));
        expect_text(v);
    } else {
        printf("unknown scenario '%s'\n", scenario);
        return 2;
    }
    if (attn_expected_ok) {
        CHECK_OK(smoke_attn(ctx, 0, 101));
        CHECK_OK(smoke_attn(ctx, 1, 102));
    }
    /* The report (and a CUDA-free CPU call) never changed the answer. */
    char* again = report(0);
    CHECK(!strcmp(again, text));
    free(again);
    printf("scenario %s\n", scenario);
    if (tt_failed) printf("---- report ----\n%s\n", text);
    free(text);
    free(json);
    cflash_context_free(ctx);
    return tt_summary();
}
