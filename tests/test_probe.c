/* The probes on their own: CPU features against what Linux reports in /proc/cpuinfo and sysfs (so a
 * wrong CPUID bit or a missing XGETBV check shows), thread-safe once-only probing, library search
 * through a directory added at run time (a fake cuFile built by the tests), and the argument checks
 * of cf_dynlib_add_search_dir / cflash_add_library_dir. FAKE_CUFILE_DIR comes from CMake. */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "probe/cpu_features.h"
#include "probe/dynlib.h"
#include "probe/gpu_probe.h"

/* ---- CPU ---- */

static const cf_cpu_info* from_threads[4];
static void* probe_thread(void* arg) {
    from_threads[(size_t)arg] = cf_cpu();
    return NULL;
}

#if defined(__aarch64__)
#define CPUINFO_KEY "Features"
#else
#define CPUINFO_KEY "flags"
#endif

/* 1 if the "flags" line (x86) or "Features" line (ARM) of /proc/cpuinfo has the word w, 0 if
 * not, -1 if there is no such line (unreadable; or the host's file under qemu-user). */
static int cpuinfo_has(const char* w) {
    static char flags[9000];
    static int loaded = 0;
    if (!loaded) {
        FILE* f = fopen("/proc/cpuinfo", "r");
        loaded = -1;
        if (f) {
            char l[8192];
            while (fgets(l, sizeof l, f))
                if (!strncmp(l, CPUINFO_KEY, strlen(CPUINFO_KEY))) {
                    snprintf(flags, sizeof flags, " %s ", strchr(l, ':') ? strchr(l, ':') + 1 : l);
                    for (char* p = flags; *p; p++)
                        if (*p == '\n') *p = ' ';
                    loaded = 1;
                    break;
                }
            fclose(f);
        }
    }
    if (loaded < 0) return -1;
    char pat[64];
    snprintf(pat, sizeof pat, " %s ", w);
    return strstr(flags, pat) != NULL;
}

#if defined(__aarch64__)
/* ARM: the probe against Linux's "Features" line where /proc/cpuinfo has one (a real ARM machine;
 * qemu-user shows the host's file), and against CFLASH_TEST_CPU_FEATURES ("+bf16 -sve ..."; make
 * test-arm sets it for each qemu CPU model) and CFLASH_TEST_SVE_VL (bytes) where given. */
static void test_cpu_arm(const cf_cpu_info* c) {
    const struct {
        const char* flag;
        int mine;
    } f[] = {
        {"asimd", c->neon},        {"fphp", c->fphp},       {"asimdhp", c->asimdhp},
        {"asimdfhm", c->asimdfhm}, {"asimddp", c->asimddp}, {"bf16", c->bf16},
        {"i8mm", c->i8mm},         {"sve", c->sve},         {"sve2", c->sve2},
        {"svebf16", c->sve_bf16},  {"sme", c->sme},
    };
    const int nf = (int)(sizeof f / sizeof f[0]);
    printf("arm: %s (SVE vector length %d bytes)\n", c->arm_note, c->sve_vl);
    for (int i = 0; i < nf; i++) {
        const int linux_says = cpuinfo_has(f[i].flag);
        if (linux_says < 0) {
            printf("/proc/cpuinfo has no Features line (qemu-user?): not compared\n");
            break;
        }
        CHECK_MSG(linux_says == f[i].mine, "%s: /proc/cpuinfo says %d, cf_cpu says %d", f[i].flag,
                  linux_says, f[i].mine);
    }
    const char* want = getenv("CFLASH_TEST_CPU_FEATURES");
    for (const char* p = want; p && *p;) {
        while (*p == ' ')
            p++;
        if (!*p) break;
        const int on = *p == '+';
        CHECK_MSG(*p == '+' || *p == '-', "CFLASH_TEST_CPU_FEATURES: '%s': expected +name or -name",
                  p);
        const char* e = strchr(p, ' ');
        const size_t n = e ? (size_t)(e - p - 1) : strlen(p + 1);
        int found = 0;
        for (int i = 0; i < nf; i++)
            if (strlen(f[i].flag) == n && !strncmp(f[i].flag, p + 1, n)) {
                found = 1;
                CHECK_MSG(f[i].mine == on, "%s: expected %s, cf_cpu says %d", f[i].flag,
                          on ? "present" : "absent", f[i].mine);
            }
        CHECK_MSG(found, "CFLASH_TEST_CPU_FEATURES: unknown feature '%.*s'", (int)n, p + 1);
        p += n + 1;
    }
    CHECK(c->neon); /* every AArch64 Linux has AdvSIMD */
    CHECK(!strcmp(c->vendor, "ARM"));
    CHECK(c->sve ? c->sve_vl >= 16 && c->sve_vl <= 256 && c->sve_vl % 16 == 0 : c->sve_vl == 0);
    CHECK(!c->sve2 || c->sve);
    CHECK(strstr(c->arm_note, c->sve ? "-bit vectors" : "SVE absent") != NULL);
    const char* vl = getenv("CFLASH_TEST_SVE_VL");
    if (vl)
        CHECK_MSG(c->sve_vl == atoi(vl), "SVE vector length %d bytes, expected %s", c->sve_vl, vl);
    CHECK(!c->avx2 && !c->avx512f && !c->amx_tile);
}
#endif

static void test_cpu(void) {
    pthread_t t[4];
    for (size_t i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, probe_thread, (void*)i);
    for (size_t i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    const cf_cpu_info* c = cf_cpu();
    for (int i = 0; i < 4; i++)
        CHECK(from_threads[i] == c);
    CHECK(c->cores >= 1);
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) CHECK(c->cores == CPU_COUNT(&set));
#endif
    CHECK(c->vendor[0] && c->model[0]);
    printf("cpu: %s / %s, %d cores, L1d %lld L2 %lld L3 %lld\n", c->vendor, c->model, c->cores,
           (long long)c->l1d_bytes, (long long)c->l2_bytes, (long long)c->l3_bytes);
    printf("AVX-512: %s; AMX: %s\n", c->avx512f ? "usable" : c->avx512_note, c->amx_note);
    CHECK(c->amx_note[0] != 0); /* always says something: usable, or why not */
    CHECK(!c->amx_permitted || c->amx_tile);
    CHECK(!c->avx512f || c->os_avx512);
    CHECK(!c->avx512f || !c->avx512_note[0]);
    CHECK(c->avx512f || c->avx512_note[0]);
    CHECK(c->amx_tile ? (strcmp(c->amx_note, "usable") == 0) == c->amx_permitted
                      : strstr(c->amx_note, "not") != NULL);

#if defined(__x86_64__) && defined(__linux__)
    /* Linux lists a flag only when the CPU has it and the kernel enables its state, exactly
     * what cf_cpu() claims to compute. */
    const struct {
        const char* flag;
        int mine;
    } f[] = {
        {"sse4_2", c->sse42},
        {"avx", c->avx},
        {"avx2", c->avx2},
        {"fma", c->fma},
        {"f16c", c->f16c},
        {"avx512f", c->avx512f},
        {"avx512dq", c->avx512dq},
        {"avx512bw", c->avx512bw},
        {"avx512vl", c->avx512vl},
        {"avx512_vnni", c->avx512vnni},
        {"avx512vbmi", c->avx512vbmi},
        {"avx512_bf16", c->avx512bf16},
        {"avx512_fp16", c->avx512fp16},
        {"amx_tile", c->amx_tile},
        {"amx_bf16", c->amx_bf16},
        {"amx_int8", c->amx_int8},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        int linux_says = cpuinfo_has(f[i].flag);
        if (linux_says < 0) break;
        CHECK_MSG(linux_says == f[i].mine, "%s: /proc/cpuinfo says %d, cf_cpu says %d", f[i].flag,
                  linux_says, f[i].mine);
    }
    /* L1d of cpu0 as sysfs gives it. */
    FILE* s = fopen("/sys/devices/system/cpu/cpu0/cache/index0/size", "r");
    if (s) {
        int kb = 0;
        char type[32] = "";
        if (fscanf(s, "%dK", &kb) == 1) {
            FILE* ty = fopen("/sys/devices/system/cpu/cpu0/cache/index0/type", "r");
            if (ty && fscanf(ty, "%31s", type) == 1 && !strcmp(type, "Data"))
                CHECK_MSG(c->l1d_bytes == (int64_t)kb * 1024, "L1d %lld vs sysfs %dK",
                          (long long)c->l1d_bytes, kb);
            if (ty) fclose(ty);
        }
        fclose(s);
    }
    CHECK(!strcmp(c->vendor, "GenuineIntel") || !strcmp(c->vendor, "AuthenticAMD") || c->vendor[0]);
#endif
#if defined(__linux__)
    /* The transparent huge page mode: the word the kernel's file brackets, or "" without it. */
    FILE* thp = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char modes[128] = "", want[24];
    if (thp && fgets(modes, sizeof modes, thp)) {
        snprintf(want, sizeof want, "[%s]", c->thp);
        CHECK_MSG(c->thp[0] && strstr(modes, want), "THP '%s', the kernel says %s", c->thp, modes);
    } else {
        CHECK(!c->thp[0]);
    }
    if (thp) fclose(thp);
    printf("transparent huge pages: %s\n", c->thp[0] ? c->thp : "(not known)");
#endif
#if defined(__aarch64__)
    test_cpu_arm(c);
#else
    CHECK(!strcmp(c->arm_note, "not an ARM CPU"));
    CHECK(!c->neon && !c->sve && !c->bf16 && !c->sve_vl);
#endif
}

/* ---- Libraries ---- */

static void test_dynlib(void) {
    CHECK(cf_dynlib_add_search_dir(NULL) == -1);
    CHECK(cf_dynlib_add_search_dir("") == -1);
    char longdir[600];
    memset(longdir, 'a', sizeof longdir - 1);
    longdir[sizeof longdir - 1] = 0;
    CHECK(cf_dynlib_add_search_dir(longdir) == -1);
    CHECK_ERR(cflash_add_library_dir(longdir), CFLASH_ERR_INVALID_ARGUMENT,
              "expected fewer than 500");
    CHECK_ERR(cflash_add_library_dir(NULL), CFLASH_ERR_INVALID_ARGUMENT, "dir: NULL or empty");

    /* The fake cuFile is found through an added directory (unless a real one is installed). */
    CHECK(!cf_dynlib_probed(CF_LIB_CUFILE));
    CHECK_OK(cflash_add_library_dir("/nonexistent/cflash-test-dir"));
    CHECK_OK(cflash_add_library_dir(FAKE_CUFILE_DIR));
    CHECK_OK(cflash_add_library_dir(FAKE_CUFILE_DIR)); /* a duplicate is accepted, kept once */
    CHECK(cf_dynlib_search_dir_count() == 2);
    CHECK(!strcmp(cf_dynlib_search_dir(1), FAKE_CUFILE_DIR));
    const cf_dynlib* f = cf_dynlib_get(CF_LIB_CUFILE);
    CHECK(cf_dynlib_probed(CF_LIB_CUFILE));
    CHECK(cf_dynlib_get(CF_LIB_CUFILE) == f); /* probed once */
    printf("cufile: found=%d via=%s path=%s\ntried: %s\n", f->found, f->via, f->path, f->tried);
    CHECK(strstr(f->tried, "libcufile.so.0") == f->tried); /* soname first */
    if (strcmp(f->via, "soname")) {
        CHECK(f->found);
        CHECK(!strcmp(f->via, "added directory"));
        CHECK(strstr(f->path, FAKE_CUFILE_DIR) == f->path);
        CHECK(strstr(f->tried, "/nonexistent/cflash-test-dir/ (no such directory)"));
        const cf_cufile_info* cf = cf_cufile_probe();
        CHECK(cf->lib_found && !cf->driver_open_found);
        CHECK_MSG(strstr(cf->error, "lacks cuFileDriverOpen"), "%.900s", cf->error);
    }
    /* Too many directories. */
    int rc = 0;
    char d[64];
    for (int i = 0; i < 70; i++) {
        snprintf(d, sizeof d, "/nonexistent/%d", i);
        rc |= cf_dynlib_add_search_dir(d);
    }
    CHECK(rc == -1 && cf_dynlib_search_dir_count() == 64);
    CHECK_ERR(cflash_add_library_dir("/one/more"), CFLASH_ERR_INVALID_ARGUMENT, "64 directories");

    const cf_dynlib* bad = cf_dynlib_get(CF_LIB_COUNT);
    CHECK(!bad->found && bad->error[0]);
    CHECK(!strcmp(cf_dynlib_env(CF_LIB_NVRTC), "CFLASH_LIBNVRTC"));

    /* libcuda: found or not, the result is self-consistent and explained. */
    const cf_dynlib* cu = cf_dynlib_get(CF_LIB_CUDA);
    CHECK(cu->found ? cu->handle && cu->path[0] : cu->error[0] && !cu->handle);
    const cf_cuda_info* ci = cf_cuda_probe();
    CHECK(ci->usable ? ci->device_count > 0 && !ci->error[0] : ci->error[0] != 0);
    CHECK(cf_cuda_probe() == ci);
    const cf_nvrtc_info* nv = cf_nvrtc_probe();
    CHECK(nv->found ? nv->major >= 11 && !nv->error[0] : nv->error[0] != 0);
    if (nv->found)
        printf("nvrtc %d.%d, %d archs, builtins: %s\n", nv->major, nv->minor, nv->n_archs,
               nv->builtins);
    CHECK(!strcmp(cf_cuda_result_name(100), "CUDA_ERROR_NO_DEVICE"));
    CHECK(!strcmp(cf_cuda_result_name(34), "CUDA_ERROR_STUB_LIBRARY"));
    CHECK(cf_cuda_result_name(123456) != NULL);
}

int main(void) {
    test_cpu();
    test_dynlib();
    return tt_summary();
}
