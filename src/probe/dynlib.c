/* Finding libcuda, NVRTC and cuFile with dlopen alone, in a fixed order: the override variable,
 * then the sonames through the loader's own search (LD_LIBRARY_PATH, ld.so.cache, default dirs),
 * then known directories and those the Python package adds. Every try and every dlerror() text is
 * kept for the report. No subprocess (no ldconfig), no CUDA call: this only loads the file. */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/log.h"
#include "core/strbuf.h"
#include "probe/dynlib.h"

typedef struct lib_spec {
    const char* name; /* for messages */
    const char* env;  /* override variable */
    const char* const* sonames;
} lib_spec;

/* Only versioned sonames: the unversioned libcuda.so / libnvrtc.so are dev-only links (and
 * /usr/local/cuda/lib64/stubs/libcuda.so is a stub whose cuInit always fails). */
static const char* const cuda_names[] = {"libcuda.so.1", NULL};
static const char* const nvrtc_names[] = {"libnvrtc.so.13",   "libnvrtc.so.12",
                                          "libnvrtc.so.11.2", "libnvrtc.so.11.1",
                                          "libnvrtc.so.11.0", NULL};
static const char* const cufile_names[] = {"libcufile.so.0", "libcufile.so.1", NULL};

static const lib_spec specs[CF_LIB_COUNT] = {
    [CF_LIB_CUDA] = {"libcuda (CUDA driver)", "CFLASH_LIBCUDA", cuda_names},
    [CF_LIB_NVRTC] = {"NVRTC", "CFLASH_LIBNVRTC", nvrtc_names},
    [CF_LIB_CUFILE] = {"cuFile", "CFLASH_LIBCUFILE", cufile_names},
};

#define MAX_EXTRA_DIRS 64 /* a PyTorch install brings about 15 nvidia wheels per site-packages */
static char extra_dirs[MAX_EXTRA_DIRS][512];
static int n_extra_dirs;
static cf_dynlib libs[CF_LIB_COUNT];
static int probed[CF_LIB_COUNT];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

const char* cf_dynlib_name(cf_lib_id id) {
    return (unsigned)id < CF_LIB_COUNT ? specs[id].name : "unknown library";
}
const char* cf_dynlib_env(cf_lib_id id) {
    return (unsigned)id < CF_LIB_COUNT ? specs[id].env : "";
}

int cf_dynlib_add_search_dir(const char* dir) {
    if (!dir || !*dir || strlen(dir) >= 500) return -1;
    pthread_mutex_lock(&lock);
    int dup = 0, rc = 0;
    for (int i = 0; i < n_extra_dirs; i++)
        dup |= !strcmp(extra_dirs[i], dir);
    if (!dup && n_extra_dirs < MAX_EXTRA_DIRS)
        strcpy(extra_dirs[n_extra_dirs++], dir);
    else if (!dup)
        rc = -1;
    pthread_mutex_unlock(&lock);
    return rc;
}

const char* cf_dynlib_search_dir(int i) {
    pthread_mutex_lock(&lock);
    const char* d = i >= 0 && i < n_extra_dirs ? extra_dirs[i] : NULL;
    pthread_mutex_unlock(&lock);
    return d;
}

int cf_dynlib_search_dir_count(void) {
    pthread_mutex_lock(&lock);
    int n = n_extra_dirs;
    pthread_mutex_unlock(&lock);
    return n;
}

int cf_dynlib_probed(cf_lib_id id) {
    if ((unsigned)id >= CF_LIB_COUNT) return 0;
    pthread_mutex_lock(&lock);
    int p = probed[id];
    pthread_mutex_unlock(&lock);
    return p;
}

/* Appends one entry to a "; "-separated list. */
static void add(char* dst, size_t cap, const char* fmt, ...) {
    if (dst[0]) cf_strcatf(dst, cap, "; ");
    va_list ap;
    va_start(ap, fmt);
    cf_vstrcatf(dst, cap, fmt, ap);
    va_end(ap);
}

/* One dlopen; on success fills the result, else records the loader's message. */
static int try_open(cf_dynlib* r, const char* what, const char* via) {
    add(r->tried, sizeof r->tried, "%s", what);
    dlerror();
    void* h = dlopen(what, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char* e = dlerror();
        add(r->error, sizeof r->error, "%s", e ? e : "dlopen failed without a message");
        return 0;
    }
    r->found = 1;
    r->handle = h;
    snprintf(r->via, sizeof r->via, "%s", via);
    struct link_map* lm = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name && lm->l_name[0])
        snprintf(r->path, sizeof r->path, "%s", lm->l_name);
    else
        snprintf(r->path, sizeof r->path, "%s", what);
    return 1;
}

static int is_dir(const char* p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Tries each soname present in dir. Absent files are noted once per directory, not dlopened. */
static int try_dir(cf_dynlib* r, const lib_spec* s, const char* dir, const char* via) {
    if (!is_dir(dir)) {
        add(r->tried, sizeof r->tried, "%s/ (no such directory)", dir);
        return 0;
    }
    int any = 0;
    for (const char* const* n = s->sonames; *n; n++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, *n);
        struct stat st;
        if (stat(path, &st) != 0) continue;
        any = 1;
        if (try_open(r, path, via)) return 1;
    }
    if (!any) add(r->tried, sizeof r->tried, "%s/ (none of the sonames there)", dir);
    return 0;
}

static void probe(cf_lib_id id) {
    cf_dynlib* r = &libs[id];
    const lib_spec* s = &specs[id];
    memset(r, 0, sizeof *r);

    const char* ov = getenv(s->env);
    if (ov && *ov) {
        if (is_dir(ov)) {
            if (!try_dir(r, s, ov, s->env) && !r->error[0])
                add(r->error, sizeof r->error, "%s=%s: directory holds none of the sonames", s->env,
                    ov);
        } else {
            try_open(r, ov, s->env);
        }
        if (!r->found) {
            char e[sizeof r->error];
            memcpy(e, r->error, sizeof e);
            r->error[0] = 0;
            add(r->error, sizeof r->error,
                "%s is set to '%s' and it cannot be loaded (other locations are not tried while "
                "it is set): %s",
                s->env, ov, e);
        }
        return;
    }

    for (const char* const* n = s->sonames; *n; n++)
        if (try_open(r, *n, "soname")) return;

    char dirs[8 + MAX_EXTRA_DIRS][512];
    int nd = 0, nknown;
    const char* known[] = {getenv("CUDA_HOME"), getenv("CUDA_PATH"), "/usr/local/cuda", NULL};
    for (int i = 0; i < 4; i++) {
        char d[512];
        if (i == 3)
            snprintf(d, sizeof d, "/usr/lib/wsl/lib");
        else if (!known[i] || !*known[i] || strlen(known[i]) > 400)
            continue;
        else
            snprintf(d, sizeof d, "%s%slib64", known[i],
                     known[i][strlen(known[i]) - 1] == '/' ? "" : "/");
        int dup = 0;
        for (int j = 0; j < nd; j++)
            dup |= !strcmp(dirs[j], d);
        if (!dup) memcpy(dirs[nd++], d, sizeof d);
    }
    nknown = nd;
    for (int i = 0; i < n_extra_dirs; i++)
        memcpy(dirs[nd++], extra_dirs[i], sizeof dirs[0]);
    for (int i = 0; i < nd; i++)
        if (try_dir(r, s, dirs[i], i < nknown ? "known directory" : "added directory")) return;
}

const cf_dynlib* cf_dynlib_get(cf_lib_id id) {
    static cf_dynlib invalid = {.error = "no such library id"};
    if ((unsigned)id >= CF_LIB_COUNT) return &invalid;
    pthread_mutex_lock(&lock);
    if (!probed[id]) {
        probe(id);
        probed[id] = 1;
        const cf_dynlib* r = &libs[id];
        if (r->found)
            cf_log(CF_LOG_INFO, "%s: loaded %s (found by %s)", specs[id].name, r->path, r->via);
        else
            cf_log(CF_LOG_INFO, "%s: not found: %s (tried: %s)", specs[id].name, r->error,
                   r->tried);
    }
    pthread_mutex_unlock(&lock);
    return &libs[id];
}
