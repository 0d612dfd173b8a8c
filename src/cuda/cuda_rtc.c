/* NVRTC at run time (see cuda_rtc.h): the loader, target choice, cached compile, and the
 * per-device module table. NVRTC is loaded with dlsym from the probe's handle, never linked. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/status.h"
#include "core/strbuf.h"
#include "cuda/cuda_rtc.h"
#include "cuda/kcache.h"
#include "probe/dynlib.h"

/* ---- Embedded sources and variants -------------------------------------------------------- */

/* The kernels this build carries, for the report: sources for NVRTC, and precompiled cubins. */
void cf_cuda_describe_kernels(char* out, size_t len, int* n_sources, int* n_binaries) {
    int n = 0;
    for (const cf_cuda_source* src = cf_cuda_sources; src->name; src++)
        n++;
    *n_sources = n;
    *n_binaries = cf_cuda_aot_count;
    char archs[256] = "";
    for (int i = 0; i < cf_cuda_aot_count; i++) {
        char a[16];
        snprintf(a, sizeof a, "sm_%d", cf_cuda_aot_table[i].arch);
        if (!strstr(archs, a)) cf_strcatf(archs, sizeof archs, "%s%s", archs[0] ? " " : "", a);
    }
    if (cf_cuda_aot_count)
        snprintf(out, len, "%d sources for NVRTC; %d precompiled cubins (%s)", n, cf_cuda_aot_count,
                 archs);
    else
        snprintf(out, len, "%d sources for NVRTC; no precompiled cubins (CFLASH_CUDA_AOT=OFF)", n);
}

const char* cf_cuda_source_text(const char* name) {
    for (const cf_cuda_source* s = cf_cuda_sources; s->name; s++)
        if (!strcmp(s->name, name)) return s->text;
    return NULL;
}

/* Keep in step with the AOT loop in CMakeLists.txt (CFLASH-EMBED). */
int cf_cuda_variants(cf_cuda_variant* out, int max) {
    static const int dmax[] = {64, 128, 256};
    int n = 0;
    for (int dt = 0; dt < 3; dt++)
        for (int i = 0; i < 3; i++, n++)
            if (n < max) {
                out[n].name = "attn_simt.cu";
                snprintf(out[n].defines, sizeof out[n].defines, "-DCF_DTYPE=%d -DCF_DMAX=%d", dt,
                         dmax[i]);
                out[n].min_arch = 0;
            }
    for (int dt = 1; dt < 3; dt++)
        for (int i = 0; i < 3; i++, n++)
            if (n < max) {
                out[n].name = "attn_mma.cu";
                snprintf(out[n].defines, sizeof out[n].defines, "-DCF_DTYPE=%d -DCF_DMAX=%d", dt,
                         dmax[i]);
                out[n].min_arch = 80;
            }
    if (n < max) { /* the ops: dtypes are run-time arguments, one build */
        out[n].name = "ops_simt.cu";
        out[n].defines[0] = 0;
        out[n].min_arch = 0;
    }
    n++;
    return n;
}

/* ---- NVRTC loader ------------------------------------------------------------------------- */

typedef int nvrtcResult;
typedef struct _nvrtcProgram* nvrtcProgram;

/* snprintf(dst, n, "%s", src) without the truncation warning: messages are cut to fit. */
static void copy_why(char* dst, size_t n, const char* src) {
    size_t L = strlen(src);
    if (L >= n) L = n - 1;
    memcpy(dst, src, L);
    dst[L] = 0;
}

static struct {
    nvrtcResult (*Version)(int*, int*);
    nvrtcResult (*GetNumSupportedArchs)(int*);
    nvrtcResult (*GetSupportedArchs)(int*);
    nvrtcResult (*CreateProgram)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                                 const char* const*);
    nvrtcResult (*DestroyProgram)(nvrtcProgram*);
    nvrtcResult (*CompileProgram)(nvrtcProgram, int, const char* const*);
    nvrtcResult (*GetProgramLogSize)(nvrtcProgram, size_t*);
    nvrtcResult (*GetProgramLog)(nvrtcProgram, char*);
    nvrtcResult (*GetPTXSize)(nvrtcProgram, size_t*);
    nvrtcResult (*GetPTX)(nvrtcProgram, char*);
    nvrtcResult (*GetCUBINSize)(nvrtcProgram, size_t*);
    nvrtcResult (*GetCUBIN)(nvrtcProgram, char*);
    const char* (*GetErrorString)(nvrtcResult);
} rtc;
static int rtc_state;
static char rtc_why[3072];
static int rtc_major, rtc_minor;
static int rtc_archs[64], rtc_narchs;
static pthread_mutex_t rtc_lock = PTHREAD_MUTEX_INITIALIZER;

static void rtc_load_locked(void) {
    if (rtc_state) return;
    const cf_dynlib* lib = cf_dynlib_get(CF_LIB_NVRTC);
    if (!lib->found || !lib->handle) {
        snprintf(rtc_why, sizeof rtc_why, "NVRTC (libnvrtc.so.*) not found: %s",
                 lib->error[0] ? lib->error : "no CUDA toolkit or nvidia-cuda-nvrtc wheel");
        rtc_state = -1;
        return;
    }
    struct {
        void** slot;
        const char* name;
        int optional;
    } syms[] = {
        {(void**)&rtc.Version, "nvrtcVersion", 0},
        {(void**)&rtc.GetNumSupportedArchs, "nvrtcGetNumSupportedArchs", 1},
        {(void**)&rtc.GetSupportedArchs, "nvrtcGetSupportedArchs", 1},
        {(void**)&rtc.CreateProgram, "nvrtcCreateProgram", 0},
        {(void**)&rtc.DestroyProgram, "nvrtcDestroyProgram", 0},
        {(void**)&rtc.CompileProgram, "nvrtcCompileProgram", 0},
        {(void**)&rtc.GetProgramLogSize, "nvrtcGetProgramLogSize", 0},
        {(void**)&rtc.GetProgramLog, "nvrtcGetProgramLog", 0},
        {(void**)&rtc.GetPTXSize, "nvrtcGetPTXSize", 0},
        {(void**)&rtc.GetPTX, "nvrtcGetPTX", 0},
        {(void**)&rtc.GetCUBINSize, "nvrtcGetCUBINSize", 1},
        {(void**)&rtc.GetCUBIN, "nvrtcGetCUBIN", 1},
        {(void**)&rtc.GetErrorString, "nvrtcGetErrorString", 0},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        dlerror();
        *syms[i].slot = dlsym(lib->handle, syms[i].name);
        if (!*syms[i].slot && !syms[i].optional) {
            const char* e = dlerror();
            snprintf(rtc_why, sizeof rtc_why, "%s: symbol %s missing: %s", lib->path, syms[i].name,
                     e ? e : "");
            rtc_state = -1;
            return;
        }
    }
    rtc.Version(&rtc_major, &rtc_minor);
    int n = 0;
    if (rtc.GetNumSupportedArchs && rtc.GetSupportedArchs && rtc.GetNumSupportedArchs(&n) == 0 &&
        n > 0 && n <= 64) {
        rtc.GetSupportedArchs(rtc_archs);
        rtc_narchs = n;
    } else { /* NVRTC 11.0/11.1: no list; these are the archs it documents */
        static const int old[] = {35, 37, 50, 52, 53, 60, 61, 62, 70, 72, 75, 80};
        rtc_narchs = (int)(sizeof old / sizeof old[0]);
        memcpy(rtc_archs, old, sizeof old);
    }
    rtc_state = 1;
}

int cf_nvrtc_available(char* why, size_t why_len) {
    pthread_mutex_lock(&rtc_lock);
    rtc_load_locked();
    int ok = rtc_state == 1;
    if (!ok && why && why_len) copy_why(why, why_len, rtc_why);
    pthread_mutex_unlock(&rtc_lock);
    return ok;
}

void cf_nvrtc_version(int* major, int* minor) {
    *major = *minor = 0;
    if (!cf_nvrtc_available(NULL, 0)) return;
    *major = rtc_major;
    *minor = rtc_minor;
}

int cf_nvrtc_archs(int* archs, int max) {
    if (!cf_nvrtc_available(NULL, 0)) return 0;
    for (int i = 0; i < rtc_narchs && i < max; i++)
        archs[i] = rtc_archs[i];
    return rtc_narchs;
}

cflash_status cf_nvrtc_target(int arch, int* target, int* ptx) {
    char why[1024];
    CFLASH_RETURN_IF(!cf_nvrtc_available(why, sizeof why), CFLASH_ERR_UNSUPPORTED, "%s", why);
    int best = 0;
    for (int i = 0; i < rtc_narchs; i++) {
        if (rtc_archs[i] == arch && rtc.GetCUBIN) {
            *target = arch;
            *ptx = 0;
            return CFLASH_OK;
        }
        if (rtc_archs[i] <= arch && rtc_archs[i] > best) best = rtc_archs[i];
    }
    CFLASH_RETURN_IF(!best, CFLASH_ERR_UNSUPPORTED,
                     "NVRTC %d.%d cannot target sm_%d (the oldest arch it supports is sm_%d); "
                     "install an older CUDA toolkit's NVRTC, or use a CPU backend",
                     rtc_major, rtc_minor, arch, rtc_narchs ? rtc_archs[0] : 0);
    *target = best;
    *ptx = 1;
    return CFLASH_OK;
}

/* ---- Compile ------------------------------------------------------------------------------ */

/* Splits buf on spaces into argv (pointers into buf), the first max words; returns the number of
 * words, those past max included. */
static int split_args(char* buf, const char** argv, int max) {
    int n = 0;
    char* save = NULL;
    for (char* t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save), n++)
        if (n < max) argv[n] = t;
    return n;
}

static uint64_t sources_hash(const char* text, uint64_t seed) {
    uint64_t h = cf_hash64(text, strlen(text), seed);
    for (const cf_cuda_source* s = cf_cuda_sources; s->name; s++) {
        size_t n = strlen(s->name);
        if (n > 4 && !strcmp(s->name + n - 4, ".cuh")) {
            h = cf_hash64(s->name, n, h);
            h = cf_hash64(s->text, strlen(s->text), h);
        }
    }
    return h;
}

/* CFLASH_NVRTC_OPTIONS: extra NVRTC options after the fixed ones (developers: kernel variants
 * as -D macros, -lineinfo for a profiler); part of the kernel cache's key. "" when unset. */
static const char* extra_options(void) {
    const char* e = getenv("CFLASH_NVRTC_OPTIONS");
    return e ? e : "";
}

cflash_status cf_nvrtc_compile(const char* name, const char* defines, int arch, int ptx,
                               void** image, size_t* len, int* from_cache) {
    char why[1024];
    const char* extra = extra_options();
    CFLASH_RETURN_IF(strlen(extra) > 256, CFLASH_ERR_INVALID_ARGUMENT,
                     "CFLASH_NVRTC_OPTIONS: %zu characters, at most 256", strlen(extra));
    char words_buf[260];
    snprintf(words_buf, sizeof words_buf, "%s", extra);
    const int words = split_args(words_buf, NULL, 0);
    CFLASH_RETURN_IF(words > 24, CFLASH_ERR_INVALID_ARGUMENT,
                     "CFLASH_NVRTC_OPTIONS: %d options, at most 24", words);
    CFLASH_RETURN_IF(!cf_nvrtc_available(why, sizeof why), CFLASH_ERR_UNSUPPORTED, "%s", why);
    const char* text = cf_cuda_source_text(name);
    CFLASH_RETURN_IF(!text, CFLASH_ERR_BACKEND, "cuda: no embedded kernel source '%s'", name);
    CFLASH_RETURN_IF(!ptx && !rtc.GetCUBIN, CFLASH_ERR_UNSUPPORTED,
                     "NVRTC %d.%d cannot emit cubins", rtc_major, rtc_minor);

    char archopt[32];
    snprintf(archopt, sizeof archopt, "-arch=%s_%d", ptx ? "compute" : "sm", arch);
    /* Fixed options: C++17, no fast math (softmax needs accurate exp), device code only. */
    const char* fixed = "-std=c++17 -default-device";
    char key[1024];
    uint64_t h1 = sources_hash(text, CF_HASH64_INIT),
             h2 = sources_hash(text, 0x9e3779b97f4a7c15ull);
    snprintf(key, sizeof key, "src=%s:%016llx%016llx nvrtc=%d.%d target=%s %s %s %s %s", name,
             (unsigned long long)h1, (unsigned long long)h2, rtc_major, rtc_minor,
             ptx ? "ptx" : "cubin", archopt, fixed, defines, extra);
    void* cached = cf_kcache_get(key, len);
    if (cached) {
        *image = cached;
        if (from_cache) *from_cache = 1;
        return CFLASH_OK;
    }
    if (from_cache) *from_cache = 0;

    /* Headers: every embedded .cuh. */
    const char* hdr_text[16];
    const char* hdr_name[16];
    int nh = 0;
    for (const cf_cuda_source* s = cf_cuda_sources; s->name && nh < 16; s++) {
        size_t n = strlen(s->name);
        if (n > 4 && !strcmp(s->name + n - 4, ".cuh")) {
            hdr_text[nh] = s->text;
            hdr_name[nh++] = s->name;
        }
    }
    char optbuf[512];
    snprintf(optbuf, sizeof optbuf, "%s %s %s %s", archopt, fixed, defines, extra);
    const char* argv[48];
    int argc = split_args(optbuf, argv, 48);

    nvrtcProgram prog = NULL;
    nvrtcResult r = rtc.CreateProgram(&prog, text, name, nh, hdr_text, hdr_name);
    CFLASH_RETURN_IF(r != 0, CFLASH_ERR_BACKEND, "nvrtc: nvrtcCreateProgram(%s): %s", name,
                     rtc.GetErrorString(r));
    r = rtc.CompileProgram(prog, argc, argv);
    if (r != 0) {
        size_t ls = 0;
        rtc.GetProgramLogSize(prog, &ls);
        char* log = malloc(ls + 1);
        if (log) {
            log[0] = 0;
            rtc.GetProgramLog(prog, log);
            log[ls] = 0;
        }
        cflash_status s = cf_error(
            CFLASH_ERR_BACKEND, "nvrtc: compiling %s (%s %s%s%s) failed: %s: %.700s", name, archopt,
            defines, extra[0] ? " " : "", extra, rtc.GetErrorString(r), log ? log : "");
        free(log);
        rtc.DestroyProgram(&prog);
        return s;
    }
    size_t n = 0;
    r = ptx ? rtc.GetPTXSize(prog, &n) : rtc.GetCUBINSize(prog, &n);
    char* out = r == 0 && n ? malloc(n) : NULL;
    if (out) r = ptx ? rtc.GetPTX(prog, out) : rtc.GetCUBIN(prog, out);
    rtc.DestroyProgram(&prog);
    if (!out)
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY, "nvrtc: no output for %s (%zu bytes)", name, n);
    if (r != 0) {
        free(out);
        return cf_error(CFLASH_ERR_BACKEND, "nvrtc: reading the output of %s: %s", name,
                        rtc.GetErrorString(r));
    }
    cf_kcache_put(key, out, n);
    *image = out;
    *len = n;
    return CFLASH_OK;
}

/* ---- Modules ------------------------------------------------------------------------------ */

typedef struct mod_entry {
    struct mod_entry* next;
    int ordinal;
    char name[32], defines[96], extra[260]; /* extra: CFLASH_NVRTC_OPTIONS when it was loaded */
    CUmodule mod;
} mod_entry;
static mod_entry* mods;
static pthread_mutex_t mod_lock = PTHREAD_MUTEX_INITIALIZER;

cflash_status cf_cuda_module(const cf_cu_device* dev, const char* name, const char* defines,
                             CUmodule* mod) {
    const char* extra = extra_options();
    pthread_mutex_lock(&mod_lock);
    for (mod_entry* e = mods; e; e = e->next)
        if (e->ordinal == dev->ordinal && !strcmp(e->name, name) && !strcmp(e->defines, defines) &&
            !strcmp(e->extra, extra)) {
            *mod = e->mod;
            pthread_mutex_unlock(&mod_lock);
            return CFLASH_OK;
        }
    pthread_mutex_unlock(&mod_lock);

    const cf_cu_api* cu = cf_cu(NULL, 0);
    CFLASH_RETURN_IF(!cu, CFLASH_ERR_BACKEND, "cuda: driver not loaded");
    int arch = dev->cc_major * 10 + dev->cc_minor;
    CUmodule m = NULL;
    CUresult r = -1;
    /* Precompiled cubins carry no extra options: CFLASH_NVRTC_OPTIONS compiles from source. */
    for (int i = 0; i < cf_cuda_aot_count && r != 0 && !extra[0]; i++) {
        const cf_cuda_aot* a = &cf_cuda_aot_table[i];
        if (a->arch == arch && !strcmp(a->name, name) && !strcmp(a->defines, defines)) {
            r = cu->cuModuleLoadData(&m, a->data);
            if (r != 0)
                cf_log(CF_LOG_WARN,
                       "cuda: precompiled %s (%s) for sm_%d did not load (%d); "
                       "compiling with NVRTC",
                       name, defines, arch, r);
        }
    }
    if (r != 0) {
        int target, ptx, hit = 0;
        CFLASH_FORWARD_IF_ERROR(cf_nvrtc_target(arch, &target, &ptx));
        void* image = NULL;
        size_t len = 0;
        CFLASH_FORWARD_IF_ERROR(cf_nvrtc_compile(name, defines, target, ptx, &image, &len, &hit));
        cf_log(CF_LOG_INFO, "cuda: %s %s%s%s: %s for %s_%d (%s)", name, defines,
               extra[0] ? " " : "", extra, ptx ? "PTX" : "cubin", ptx ? "compute" : "sm", target,
               hit ? "from the kernel cache" : "compiled by NVRTC");
        r = cu->cuModuleLoadData(&m, image);
        free(image);
        CF_CU_TRY(r, "cuModuleLoadData");
    }
    mod_entry* e = calloc(1, sizeof *e);
    CFLASH_RETURN_IF(!e, CFLASH_ERR_OUT_OF_MEMORY, "cuda: out of host memory");
    e->ordinal = dev->ordinal;
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->defines, sizeof e->defines, "%s", defines);
    snprintf(e->extra, sizeof e->extra, "%s", extra);
    e->mod = m;
    pthread_mutex_lock(&mod_lock);
    e->next = mods; /* a racing thread may have added the same module: harmless duplicate */
    mods = e;
    pthread_mutex_unlock(&mod_lock);
    *mod = m;
    return CFLASH_OK;
}
