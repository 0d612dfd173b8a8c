/* The CUDA kernel cache without a GPU: put/get and the on-disk format (hit, key mismatch, corrupt
 * payload, truncated file, unwritable directory with one warning and memory-only caching), the
 * description for the report, and with NVRTC present the real path: a compile stored, a disk hit
 * after the memory cache is dropped, a corrupt entry recompiled. Prints the first-use compile
 * time and the cached load time (the targets: <= 10 s and <= 100 ms). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/testutil.h"
#include "cuda/cuda_rtc.h"
#include "cuda/kcache.h"

static char root[64];

static void set_dir(const char* d) {
    setenv("CFLASH_CACHE_DIR", d, 1);
    cf_kcache_reset();
}

/* The one *.cfk file in dir (path into out); returns the number found. */
static int find_entry(const char* dir, char* out, size_t n) {
    DIR* d = opendir(dir);
    struct dirent* e;
    int count = 0;
    while (d && (e = readdir(d))) {
        size_t L = strlen(e->d_name);
        if (L > 4 && !strcmp(e->d_name + L - 4, ".cfk")) {
            snprintf(out, n, "%s/%s", dir, e->d_name);
            count++;
        }
    }
    if (d) closedir(d);
    return count;
}

static long file_size(const char* p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* Flips one byte at offset from the end of the file. */
static void flip_byte(const char* p, long from_end) {
    FILE* f = fopen(p, "r+b");
    if (!f) return;
    fseek(f, -from_end, SEEK_END);
    int c = fgetc(f);
    fseek(f, -from_end, SEEK_END);
    fputc(c ^ 0x5a, f);
    fclose(f);
}

static void test_put_get(void) {
    char dir[128];
    snprintf(dir, sizeof dir, "%s/a/b", root); /* created on first put */
    set_dir(dir);
    const char payload[] = "not really a cubin, but bytes all the same";
    size_t len = 0;
    CHECK(cf_kcache_get("key-1", &len) == NULL);
    cf_kcache_put("key-1", payload, sizeof payload);
    cf_kcache_stats st = cf_kcache_get_stats();
    CHECK(st.disk_writes == 1 && st.misses == 1 && !st.disk_disabled);
    char path[4096];
    CHECK(find_entry(dir, path, sizeof path) == 1);
    /* Memory hit, then (memory dropped) a disk hit with the same bytes. */
    void* got = cf_kcache_get("key-1", &len);
    CHECK(got && len == sizeof payload && !memcmp(got, payload, len));
    free(got);
    cf_kcache_reset();
    got = cf_kcache_get("key-1", &len);
    CHECK(got && len == sizeof payload && !memcmp(got, payload, len));
    free(got);
    st = cf_kcache_get_stats();
    CHECK(st.disk_hits == 1 && st.corrupt == 0);
    /* No temporary files left behind. */
    DIR* d = opendir(dir);
    struct dirent* e;
    int tmp = 0;
    while (d && (e = readdir(d)))
        tmp += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    CHECK(tmp == 0);

    /* Corrupt payload: detected by the hash, removed, a miss. */
    flip_byte(path, 3);
    cf_kcache_reset();
    CHECK(cf_kcache_get("key-1", &len) == NULL);
    st = cf_kcache_get_stats();
    CHECK(st.corrupt == 1 && st.misses == 1);
    CHECK(file_size(path) < 0); /* removed */

    /* Truncated file. */
    cf_kcache_put("key-1", payload, sizeof payload);
    CHECK(truncate(path, file_size(path) - 5) == 0);
    cf_kcache_reset();
    CHECK(cf_kcache_get("key-1", &len) == NULL);
    CHECK(cf_kcache_get_stats().corrupt == 1);

    /* A file under the right name but holding another key (a hash collision): not returned. */
    cf_kcache_put("key-1", payload, sizeof payload);
    FILE* f = fopen(path, "r+b");
    if (f) {
        fseek(f, 12, SEEK_SET); /* after magic and key length: first byte of the key */
        fputc('K', f);
        fclose(f);
    }
    cf_kcache_reset();
    CHECK(cf_kcache_get("key-1", &len) == NULL);

    /* The description. */
    cf_kcache_reset();
    cf_kcache_put("key-2", payload, sizeof payload);
    char buf[2048];
    size_t n = cf_kcache_describe(buf, sizeof buf, 0);
    CHECK(n == strlen(buf));
    CHECK_MSG(strstr(buf, dir) && strstr(buf, "writable: yes") && strstr(buf, "entries: 1"), "%s",
              buf);
    cf_kcache_describe(buf, sizeof buf, 1);
    CHECK_MSG(strstr(buf, "\"writable\": true") && strstr(buf, "\"entries\": 1"), "%.900s", buf);
    /* A tiny buffer is cut, never overrun. */
    char tiny[8];
    CHECK(cf_kcache_describe(tiny, sizeof tiny, 0) == 7 && strlen(tiny) == 7);
}

static void test_unwritable(void) {
    /* A path under a regular file can never be created, even by root. */
    char file[128], dir[160];
    snprintf(file, sizeof file, "%s/plainfile", root);
    FILE* f = fopen(file, "w");
    if (f) fclose(f);
    snprintf(dir, sizeof dir, "%s/sub", file);
    set_dir(dir);
    const char payload[] = "payload";
    size_t len = 0;
    printf("(one warning about the unwritable cache directory is expected here)\n");
    fflush(stdout);
    cf_kcache_put("k", payload, sizeof payload);
    cf_kcache_put("k2", payload, sizeof payload); /* no second warning */
    cf_kcache_stats st = cf_kcache_get_stats();
    CHECK(st.disk_disabled == 1 && st.disk_writes == 0);
    void* got = cf_kcache_get("k2", &len); /* served from memory */
    CHECK(got && len == sizeof payload);
    free(got);
    char buf[2048];
    cf_kcache_describe(buf, sizeof buf, 0);
    CHECK_MSG(strstr(buf, "writable: no"), "%.900s", buf);
    cf_kcache_describe(buf, sizeof buf, 1);
    CHECK_MSG(strstr(buf, "\"writable\": false"), "%.900s", buf);
    unlink(file);
}

static void test_nvrtc_path(void) {
    char why[1024];
    if (!cf_nvrtc_available(why, sizeof why)) {
        printf("note: NVRTC absent, compile-through-cache part skipped: %s\n", why);
        return;
    }
    char dir[128];
    snprintf(dir, sizeof dir, "%s/nvrtc", root);
    set_dir(dir);
    cf_cuda_variant v[64];
    cf_cuda_variants(v, 64);
    const cf_cuda_variant* var = &v[4]; /* attn_simt.cu fp16, head dim 128 */
    int archs[64], na = cf_nvrtc_archs(archs, 64), arch = 80;
    if (na > 0 && archs[0] > 80) arch = archs[0];
    void *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    int hit = -1;
    double t0 = tt_now();
    CHECK_OK(cf_nvrtc_compile(var->name, var->defines, arch, 0, &a, &la, &hit));
    double t_compile = tt_now() - t0;
    CHECK(hit == 0);
    cf_kcache_reset(); /* as a new process would: memory empty, disk warm */
    t0 = tt_now();
    CHECK_OK(cf_nvrtc_compile(var->name, var->defines, arch, 0, &b, &lb, &hit));
    double t_load = tt_now() - t0;
    CHECK(hit == 1);
    CHECK(a && b && la == lb && !memcmp(a, b, la));
    printf("%s %s sm_%d: first-use NVRTC compile %.2f s, cached load %.2f ms (%zu bytes)\n",
           var->name, var->defines, arch, t_compile, t_load * 1e3, la);
    CHECK_MSG(t_load < 0.1, "cached load took %.1f ms", t_load * 1e3);
    free(b);
    b = NULL;
    /* A corrupt entry is recompiled to the same bytes and rewritten. */
    char path[4096];
    CHECK(find_entry(dir, path, sizeof path) == 1);
    flip_byte(path, 100);
    cf_kcache_reset();
    CHECK_OK(cf_nvrtc_compile(var->name, var->defines, arch, 0, &b, &lb, &hit));
    CHECK(hit == 0 && cf_kcache_get_stats().corrupt == 1);
    CHECK(b && la == lb && !memcmp(a, b, la));
    cf_kcache_reset();
    free(b);
    b = NULL;
    CHECK_OK(cf_nvrtc_compile(var->name, var->defines, arch, 0, &b, &lb, &hit));
    CHECK(hit == 1);
    free(a);
    free(b);
    /* Different options: a different key. */
    cf_kcache_reset();
    CHECK_OK(cf_nvrtc_compile(v[0].name, v[0].defines, arch, 0, &a, &la, &hit));
    CHECK(hit == 0);
    free(a);

    /* CFLASH_NVRTC_OPTIONS reaches NVRTC (a kernel variant compiles to other code: -lineinfo
     * adds line tables) and is part of the key (the plain build, cached above, stays cached beside
     * it); a bad option fails naming it; a long one is refused before NVRTC runs. (The SIMT
     * variant: attn_mma.cu's -DCF_EX2_FTZ=1 took two 13-s compiles, 2.3 s here.) */
    CHECK_OK(cf_nvrtc_compile(var->name, var->defines, arch, 0, &a, &la, &hit));
    CHECK(hit == 1);
    setenv("CFLASH_NVRTC_OPTIONS", "-lineinfo", 1);
    CHECK_OK(cf_nvrtc_compile(var->name, var->defines, arch, 0, &b, &lb, &hit));
    CHECK(hit == 0);
    CHECK_MSG(a && b && (la != lb || memcmp(a, b, la)),
              "the variant compiled to the same %zu bytes", la);
    free(b);
    b = NULL;
    unsetenv("CFLASH_NVRTC_OPTIONS");
    CHECK_OK(cf_nvrtc_compile(var->name, var->defines, arch, 0, &b, &lb, &hit));
    CHECK(hit == 1 && la == lb && !memcmp(a, b, la));
    free(a);
    free(b);
    a = b = NULL;
    setenv("CFLASH_NVRTC_OPTIONS", "--no-such-nvrtc-option", 1);
    CHECK(cf_nvrtc_compile(v[0].name, v[0].defines, arch, 0, &a, &la, &hit) == CFLASH_ERR_BACKEND);
    CHECK_MSG(strstr(cflash_last_error(), "--no-such-nvrtc-option"), "%s", cflash_last_error());
    char longopt[300];
    memset(longopt, 'x', sizeof longopt - 1);
    longopt[sizeof longopt - 1] = 0;
    setenv("CFLASH_NVRTC_OPTIONS", longopt, 1);
    CHECK(cf_nvrtc_compile(v[0].name, v[0].defines, arch, 0, &a, &la, &hit) ==
          CFLASH_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strstr(cflash_last_error(), "CFLASH_NVRTC_OPTIONS"), "%s", cflash_last_error());
    setenv(
        "CFLASH_NVRTC_OPTIONS",
        "-DA -DB -DC -DD -DE -DF -DG -DH -DI -DJ -DK -DL -DM -DN -DO -DP -DQ -DR -DS -DT -DU -DV "
        "-DW -DX -DY",
        1); /* 25 options: more than the argument vector takes */
    CHECK(cf_nvrtc_compile(v[0].name, v[0].defines, arch, 0, &a, &la, &hit) ==
          CFLASH_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strstr(cflash_last_error(), "25 options"), "%s", cflash_last_error());
    unsetenv("CFLASH_NVRTC_OPTIONS");
}

/* rm -r of the test's directory tree (two levels are all it makes). */
static void remove_tree(const char* dir) {
    DIR* d = opendir(dir);
    struct dirent* e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/cflash_cache_test_XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    test_put_get();
    test_unwritable();
    test_nvrtc_path();
    remove_tree(root);
    return tt_summary();
}
