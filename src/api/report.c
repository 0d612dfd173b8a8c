/* cflash_report: everything a user or a bug report needs to know about why a backend can or cannot
 * run here, as text or as one JSON object, built from the probes (CPU, libcuda, NVRTC, cuFile), the
 * kernel cache and each backend's own availability check. Text and JSON come from the same walk
 * over the same data, so they cannot disagree. */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/device.h"
#include "core/status.h"
#include "core/strbuf.h"
#include "dispatch/dispatch.h"
#include "probe/cpu_features.h"
#include "probe/dynlib.h"
#include "probe/gpu_probe.h"

/* ---- A bounded writer that counts what the whole text needs (snprintf semantics) ---- */

typedef struct sb {
    char* buf;
    size_t cap, len; /* len: characters the full output needs so far */
    int json;
    int first; /* JSON: no comma before the next member */
} sb;

static void put(sb* s, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sb* s, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = s->len < s->cap ? s->cap - s->len : 0;
    int n = vsnprintf(room ? s->buf + s->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) s->len += (size_t)n;
}

static void put_json_string(sb* s, const char* str) {
    if (!str) {
        put(s, "null");
        return;
    }
    put(s, "\"");
    for (const unsigned char* p = (const unsigned char*)str; *p; p++) {
        if (*p == '"' || *p == '\\')
            put(s, "\\%c", *p);
        else if (*p == '\n')
            put(s, "\\n");
        else if (*p == '\t')
            put(s, "\\t");
        else if (*p < 0x20)
            put(s, "\\u%04x", *p);
        else
            put(s, "%c", *p);
    }
    put(s, "\"");
}

/* JSON members: key then value; the comma is written before every member but the first. */
static void key(sb* s, const char* k) {
    put(s, "%s\"%s\": ", s->first ? "" : ", ", k);
    s->first = 0;
}
static void open_obj(sb* s, const char* k) {
    if (k)
        key(s, k);
    else if (!s->first)
        put(s, ", ");
    put(s, "{");
    s->first = 1;
}
static void close_obj(sb* s) {
    put(s, "}");
    s->first = 0;
}
static void jstr(sb* s, const char* k, const char* v) {
    key(s, k);
    put_json_string(s, v);
}
static void jint(sb* s, const char* k, long long v) {
    key(s, k);
    put(s, "%lld", v);
}
static void jbool(sb* s, const char* k, int v) {
    key(s, k);
    put(s, v ? "true" : "false");
}

/* Text: "  label         value" */
static void line(sb* s, const char* label, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void line(sb* s, const char* label, const char* fmt, ...) {
    char v[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof v, fmt, ap);
    va_end(ap);
    put(s, "  %-21s %s\n", label, v);
}

static void fmt_bytes(char* out, size_t len, long long b) {
    if (b <= 0)
        snprintf(out, len, "unknown");
    else if (b >= (1ll << 30) && b % (1ll << 20) == 0)
        snprintf(out, len, "%.1f GiB", b / 1073741824.0);
    else if (b >= (1ll << 20))
        snprintf(out, len, "%lld MiB", b >> 20);
    else
        snprintf(out, len, "%lld KiB", b >> 10);
}

/* ---- Sections ---- */

static int backend_status(cflash_op op, const char* backend, char* why, size_t len);

/* What CFLASH_BACKEND does to calls: "" when unset or auto, else a warning when it cannot work. */
static void forced_note(char* out, size_t len) {
    const char* f = getenv("CFLASH_BACKEND");
    out[0] = 0;
    if (!f || !*f || !strcmp(f, "auto")) return;
    if (!cf_backend_known(f)) {
        snprintf(out, len,
                 "'%s' is not a backend name: every call fails with "
                 "CFLASH_ERR_INVALID_ARGUMENT",
                 f);
        return;
    }
    char why[1024];
    if (!backend_status(CFLASH_OP_ATTN_FWD, f, why, sizeof why))
        snprintf(out, len,
                 "forces %s, which cannot run attn_fwd here (%s): such calls fail with "
                 "CFLASH_ERR_UNSUPPORTED unless a context sets another backend",
                 f, why);
    else
        snprintf(out, len, "forces %s for every call of contexts that set no backend", f);
}

/* Every variable the library reads (test_report checks that the section names them); one a line,
 * as the report prints them. */
/* clang-format off */
static const char* const env_vars[] = {
    "CFLASH_BACKEND",
    "CFLASH_LOG",
    "CFLASH_LIBCUDA",
    "CFLASH_LIBNVRTC",
    "CFLASH_LIBCUFILE",
    "CFLASH_CACHE_DIR",
    "CFLASH_NVRTC_OPTIONS",
    "CFLASH_ATTN_BLOCKS",
    "CFLASH_SMALL_CALLS",
    "CFLASH_BF16_GEMM",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "LD_LIBRARY_PATH",
    NULL,
};
/* clang-format on */

/* The CUDA kernels this build carries, from the CUDA backend's device hooks. */
static void cuda_kernels(char* out, size_t len, int* n_sources, int* n_binaries) {
    const cf_device_hooks* h = cf_device_hooks_for(kDLCUDA);
    *n_sources = *n_binaries = 0;
    if (h && h->describe_kernels)
        h->describe_kernels(out, len, n_sources, n_binaries);
    else
        snprintf(out, len, "none: this build has no CUDA backend");
}

static void library_section(sb* s) {
    Dl_info di;
    const char* path = dladdr((void*)cflash_report, &di) && di.dli_fname ? di.dli_fname : NULL;
    char resolved[4096];
    if (path && realpath(path, resolved)) path = resolved;
#ifdef _OPENMP
    char omp[64];
    snprintf(omp, sizeof omp, "OpenMP %d, %d threads", _OPENMP, omp_get_max_threads());
#else
    const char* omp = "no OpenMP (one thread)";
#endif
#if defined(__SANITIZE_ADDRESS__)
    const char* san = "AddressSanitizer";
#else
    const char* san = "none";
#endif
#ifdef NDEBUG
    const char* kind = "release (NDEBUG)";
#else
    const char* kind = "assertions on";
#endif
#if defined(__x86_64__)
    const char* arch = "x86_64";
#elif defined(__aarch64__)
    const char* arch = "aarch64";
#else
    const char* arch = "other";
#endif
#if defined(__clang__)
    const char* cc = "clang " __clang_version__;
#elif defined(__GNUC__)
    const char* cc = "gcc " __VERSION__;
#else
    const char* cc = "unknown";
#endif
    char kernels[512];
    int n_sources = 0, n_binaries = 0;
    cuda_kernels(kernels, sizeof kernels, &n_sources, &n_binaries);
    if (s->json) {
        open_obj(s, "library");
        jstr(s, "version", cflash_version());
        jstr(s, "path", path);
        jstr(s, "compiler", cc);
        jstr(s, "arch", arch);
        jstr(s, "threads", omp);
        jstr(s, "build", kind);
        jstr(s, "sanitizers", san);
        jint(s, "cuda_sources", n_sources);
        jint(s, "cuda_aot_cubins", n_binaries);
        jstr(s, "cuda_kernels", kernels);
        close_obj(s);
        open_obj(s, "environment");
        for (const char* const* v = env_vars; *v; v++)
            jstr(s, *v, getenv(*v));
        char note[1400];
        forced_note(note, sizeof note);
        jstr(s, "CFLASH_BACKEND_note", note[0] ? note : NULL);
        close_obj(s);
        key(s, "library_dirs");
        put(s, "[");
        for (int i = 0; i < cf_dynlib_search_dir_count(); i++) {
            if (i) put(s, ", ");
            put_json_string(s, cf_dynlib_search_dir(i));
        }
        put(s, "]");
        return;
    }
    put(s, "cflash %s\n\n[library]\n", cflash_version());
    line(s, "path", "%s", path ? path : "unknown");
    line(s, "build", "%s, %s, %s, sanitizers: %s", cc, arch, kind, san);
    line(s, "threads", "%s", omp);
    line(s, "cuda kernels", "%s", kernels);
    put(s, "\n[environment]\n");
    for (const char* const* v = env_vars; *v; v++) {
        const char* e = getenv(*v);
        line(s, *v, "%s", e ? e : "(unset)");
    }
    char note[1400];
    forced_note(note, sizeof note);
    if (note[0]) line(s, "note", "CFLASH_BACKEND %s", note);
    for (int i = 0; i < cf_dynlib_search_dir_count(); i++)
        line(s, i ? "" : "library dirs", "%s", cf_dynlib_search_dir(i));
}

static void cpu_section(sb* s) {
    const cf_cpu_info* c = cf_cpu();
    const struct {
        const char* name;
        int on;
    } f[] = {
        {"sse4.2", c->sse42},
        {"avx", c->avx},
        {"avx2", c->avx2},
        {"fma", c->fma},
        {"f16c", c->f16c},
        {"avx512f", c->avx512f},
        {"avx512dq", c->avx512dq},
        {"avx512bw", c->avx512bw},
        {"avx512vl", c->avx512vl},
        {"avx512vnni", c->avx512vnni},
        {"avx512vbmi", c->avx512vbmi},
        {"avx512bf16", c->avx512bf16},
        {"avx512fp16", c->avx512fp16},
        {"amx-tile", c->amx_tile},
        {"amx-bf16", c->amx_bf16},
        {"amx-fp16", c->amx_fp16},
        {"amx-int8", c->amx_int8},
        {"neon", c->neon},
        {"fphp", c->fphp},
        {"asimdhp", c->asimdhp},
        {"asimdfhm", c->asimdfhm},
        {"asimddp", c->asimddp},
        {"bf16", c->bf16},
        {"i8mm", c->i8mm},
        {"sve", c->sve},
        {"sve2", c->sve2},
        {"svebf16", c->sve_bf16},
        {"sme", c->sme},
    };
    const size_t nf = sizeof f / sizeof f[0];
    int amx_usable = c->amx_tile && c->amx_permitted;
    const char* avx512 = c->avx512f ? "usable" : c->avx512_note;
    if (s->json) {
        open_obj(s, "cpu");
        jstr(s, "vendor", c->vendor);
        jstr(s, "model", c->model);
        jint(s, "family", c->family);
        jint(s, "model_id", c->model_id);
        jint(s, "stepping", c->stepping);
        jint(s, "cores", c->cores);
        jint(s, "l1d_bytes", c->l1d_bytes);
        jint(s, "l2_bytes", c->l2_bytes);
        jint(s, "l3_bytes", c->l3_bytes);
        jstr(s, "transparent_huge_pages", c->thp[0] ? c->thp : NULL);
        open_obj(s, "features");
        for (size_t i = 0; i < nf; i++)
            jbool(s, f[i].name, f[i].on);
        close_obj(s);
        open_obj(s, "avx512");
        jbool(s, "usable", c->avx512f);
        jstr(s, "note", avx512);
        jbool(s, "bf16_dot_gemm", c->bf16_dot_gemm);
        jstr(s, "bf16_gemm", c->bf16_gemm_note);
        close_obj(s);
        open_obj(s, "amx");
        jbool(s, "usable", amx_usable);
        jbool(s, "permitted", c->amx_permitted);
        jstr(s, "note", c->amx_note);
        close_obj(s);
        open_obj(s, "arm");
        jbool(s, "neon_usable", c->neon);
        jint(s, "sve_vector_bytes", c->sve_vl);
        jstr(s, "note", c->arm_note);
        close_obj(s);
        close_obj(s);
        return;
    }
    char l1[32], l2[32], l3[32], have[512] = "", lack[512] = "";
    fmt_bytes(l1, sizeof l1, c->l1d_bytes);
    fmt_bytes(l2, sizeof l2, c->l2_bytes);
    fmt_bytes(l3, sizeof l3, c->l3_bytes);
    for (size_t i = 0; i < nf; i++) {
        char* dst = f[i].on ? have : lack;
        cf_strcatf(dst, 512, "%s%s", dst[0] ? " " : "", f[i].name);
    }
    put(s, "\n[cpu]\n");
    line(s, "model", "%s, %s (family %d, model %d, stepping %d)", c->model, c->vendor, c->family,
         c->model_id, c->stepping);
    line(s, "cores", "%d logical CPUs available to this process", c->cores);
    line(s, "caches", "L1d %s, L2 %s per core; L3 %s in all", l1, l2, l3);
    /* (a KV cache read from DRAM decodes faster on 2 MB pages: fewer page walks; docs/PERF.md) */
    line(s, "huge pages", "%s",
         !strcmp(c->thp, "madvise")
             ? "transparent, on request (madvise MADV_HUGEPAGE; PyTorch: THP_MEM_ALLOC_ENABLE=1)"
         : !strcmp(c->thp, "always") ? "transparent, for every large allocation"
         : !strcmp(c->thp, "never")  ? "off (transparent huge pages: never)"
                                     : "not known (no /sys/kernel/mm/transparent_hugepage)");
    line(s, "features", "%s", have[0] ? have : "(none)");
    line(s, "absent", "%s", lack[0] ? lack : "(none)");
    line(s, "AVX-512", "%s", avx512[0] ? avx512 : "unknown");
    if (c->avx512f) line(s, "bf16 GEMMs", "%s", c->bf16_gemm_note);
    line(s, "AMX", "%s", c->amx_note[0] ? c->amx_note : "unknown");
    line(s, "ARM", "%s", c->arm_note[0] ? c->arm_note : "unknown");
}

static void lib_json(sb* s, cf_lib_id id) {
    const cf_dynlib* d = cf_dynlib_get(id);
    jbool(s, "loaded", d->found);
    jstr(s, "path", d->found ? d->path : NULL);
    jstr(s, "found_by", d->found ? d->via : NULL);
    jstr(s, "tried", d->tried);
    jstr(s, "loader_errors", d->error);
}

static void lib_text(sb* s, cf_lib_id id) {
    const cf_dynlib* d = cf_dynlib_get(id);
    if (d->found) line(s, "library", "%s (found by %s)", d->path, d->via);
    line(s, "tried", "%s", d->tried[0] ? d->tried : "(nothing)");
    if (d->error[0]) line(s, "loader said", "%s", d->error);
}

static void cuda_section(sb* s) {
    const cf_cuda_info* c = cf_cuda_probe();
    if (s->json) {
        open_obj(s, "cuda");
        jbool(s, "usable", c->usable);
        lib_json(s, CF_LIB_CUDA);
        jbool(s, "symbols_ok", c->symbols_ok);
        jint(s, "cuinit_result", c->init_result);
        jstr(s, "cuinit_result_name",
             c->init_result >= 0 ? cf_cuda_result_name(c->init_result) : NULL);
        jint(s, "driver_version", c->driver_version);
        jstr(s, "error", c->usable ? NULL : c->error);
        key(s, "devices");
        put(s, "[");
        s->first = 1;
        for (int i = 0; i < c->device_count; i++) {
            const cf_cuda_device* d = &c->devices[i];
            open_obj(s, NULL);
            jint(s, "ordinal", i);
            jstr(s, "name", d->name);
            jint(s, "sm", d->major * 10 + d->minor);
            jint(s, "multiprocessors", d->sms);
            jint(s, "total_mem_bytes", (long long)d->total_mem);
            jbool(s, "gpu_tests_passed", cf_cuda_tested_on(d->major * 10 + d->minor) != NULL);
            jstr(s, "error", d->error[0] ? d->error : NULL);
            close_obj(s);
        }
        put(s, "]");
        close_obj(s);
        return;
    }
    put(s, "\n[cuda driver]\n");
    if (c->usable) {
        line(s, "status", "[OKAY] driver %d.%d, %d device(s)", c->driver_version / 1000,
             c->driver_version % 1000 / 10, c->device_count);
    } else if (!c->lib_found) {
        line(s, "status", "[NO] libcuda.so.1 not found (set %s to its path to choose one)",
             cf_dynlib_env(CF_LIB_CUDA));
    } else {
        line(s, "status", "[NO] %s", c->error);
        if (c->driver_version)
            line(s, "driver", "%d.%d", c->driver_version / 1000, c->driver_version % 1000 / 10);
    }
    lib_text(s, CF_LIB_CUDA);
    for (int i = 0; i < c->device_count; i++) {
        const cf_cuda_device* d = &c->devices[i];
        char mem[32], label[24];
        fmt_bytes(mem, sizeof mem, (long long)d->total_mem);
        snprintf(label, sizeof label, "device %d", i);
        line(s, label, "%s, sm_%d%d, %d SMs, %s%s%s", d->name, d->major, d->minor, d->sms, mem,
             d->error[0] ? "; " : "", d->error);
        const char* where = cf_cuda_tested_on(d->major * 10 + d->minor);
        if (where) {
            line(s, "  tested", "yes: the GPU tests passed on sm_%d%d (%s)", d->major, d->minor,
                 where);
            continue;
        }
        char on[256];
        cf_cuda_tested_list(on, sizeof on);
        line(s, "  tested",
             "no: cflash's CUDA kernels compile for sm_%d%d but have run the GPU tests only on "
             "%s; run them here: README \"NVIDIA GPUs\"",
             d->major, d->minor, on);
    }
}

static void nvrtc_section(sb* s) {
    const cf_nvrtc_info* n = cf_nvrtc_probe();
    if (s->json) {
        open_obj(s, "nvrtc");
        jbool(s, "usable", n->found);
        lib_json(s, CF_LIB_NVRTC);
        if (n->found) {
            char v[32];
            snprintf(v, sizeof v, "%d.%d", n->major, n->minor);
            jstr(s, "version", v);
        } else {
            jstr(s, "version", NULL);
        }
        key(s, "archs");
        put(s, "[");
        for (int i = 0; i < n->n_archs; i++)
            put(s, "%s%d", i ? ", " : "", n->archs[i]);
        put(s, "]");
        jbool(s, "builtins_found", n->builtins_found);
        jstr(s, "builtins", n->found ? n->builtins : NULL);
        jstr(s, "error", n->found ? NULL : n->error);
        close_obj(s);
        return;
    }
    put(s, "\n[nvrtc]\n");
    if (n->found) {
        char archs[1024] = "";
        for (int i = 0; i < n->n_archs; i++)
            cf_strcatf(archs, sizeof archs, "%ssm_%d", i ? " " : "", n->archs[i]);
        line(s, "status", "[OKAY] NVRTC %d.%d", n->major, n->minor);
        line(s, "archs", "%s",
             n->n_archs ? archs : "(this NVRTC predates nvrtcGetSupportedArchs, 11.2)");
        line(s, "builtins", "%s%s",
             n->builtins_found ? "" : "[NO] not loadable, compiles will fail: ", n->builtins);
    } else {
        if (cf_dynlib_get(CF_LIB_NVRTC)->found)
            line(s, "status", "[NO] %s", n->error);
        else
            line(s, "status", "[NO] libnvrtc.so.* not found (set %s to its path to choose one)",
                 cf_dynlib_env(CF_LIB_NVRTC));
    }
    lib_text(s, CF_LIB_NVRTC);
}

static void cufile_section(sb* s) {
    const cf_cufile_info* f = cf_cufile_probe();
    int ok = f->lib_found && f->driver_open_found;
    if (s->json) {
        open_obj(s, "cufile");
        jbool(s, "usable", ok);
        lib_json(s, CF_LIB_CUFILE);
        jbool(s, "cuFileDriverOpen", f->driver_open_found);
        jstr(s, "error", ok ? NULL : f->error);
        close_obj(s);
        return;
    }
    put(s, "\n[cufile]\n");
    if (ok)
        line(s, "status", "[OKAY] exports cuFileDriverOpen (not opened by the probe)");
    else if (!f->lib_found)
        line(s, "status", "[NO] libcufile.so.* not found (set %s to its path to choose one)",
             cf_dynlib_env(CF_LIB_CUFILE));
    else
        line(s, "status", "[NO] %s", f->error);
    lib_text(s, CF_LIB_CUFILE);
}

static void kcache_section(sb* s) {
    char d[4096] = "";
    const cf_device_hooks* h = cf_device_hooks_for(kDLCUDA);
    if (h && h->describe_cache)
        h->describe_cache(d, sizeof d, s->json);
    else if (!s->json)
        snprintf(d, sizeof d, "none: this build has no CUDA backend\n");
    if (s->json) {
        key(s, "kernel_cache");
        put(s, "{%s}", d);
        return;
    }
    put(s, "\n[kernel cache]\n");
    for (char* l = d; *l;) {
        char* nl = strchr(l, '\n');
        size_t n = nl ? (size_t)(nl - l) : strlen(l);
        if (n) put(s, "  %.*s\n", (int)n, l);
        l += n + (nl ? 1 : 0);
    }
}

/* [OKAY] or the reason this backend cannot serve op here at all. */
static int backend_status(cflash_op op, const char* backend, char* why, size_t len) {
    size_t n = 0;
    const cf_impl* const* impls = cf_impls_for(op, &n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(impls[i]->backend, backend)) continue;
        why[0] = 0;
        if (impls[i]->available && !impls[i]->available(why, len)) {
            if (!why[0]) snprintf(why, len, "not available on this machine");
            return 0;
        }
        if (impls[i]->unverified) { /* runs here, but only when forced */
            snprintf(why, len, "%s", impls[i]->unverified);
            return 0;
        }
        if (impls[i]->verified && !impls[i]->verified(NULL, why, len)) return 0; /* the same */
        return 1;
    }
    snprintf(why, len, "not implemented");
    return 0;
}

static void backends_section(sb* s) {
    if (s->json) {
        open_obj(s, "backends");
    } else {
        put(s, "\n[backends]  [OKAY]: can run on this machine (each call is still checked: "
               "dtype, head dim, ...; see cflash_context_set_explain and CFLASH_LOG=info)\n");
    }
    for (int op = 0; op < CFLASH_OP_COUNT; op++) {
        const char* opname = cflash_op_name((cflash_op)op);
        if (s->json) open_obj(s, opname);
        const char* b;
        for (size_t i = 0; (b = cf_backend_name(i)) != NULL; i++) {
            char why[1024];
            int ok = backend_status((cflash_op)op, b, why, sizeof why);
            if (s->json) {
                open_obj(s, b);
                jbool(s, "ok", ok);
                jstr(s, "reason", ok ? NULL : why);
                close_obj(s);
            } else if (ok) {
                put(s, "  %-16s %-12s [OKAY]\n", opname, b);
            } else {
                put(s, "  %-16s %-12s [NO] %s\n", opname, b, why);
            }
        }
        if (s->json) close_obj(s);
    }
    if (s->json) close_obj(s);
}

/* ---- Public entry points ---- */

size_t cflash_report(char* buf, size_t len, int json) {
    sb s = {.buf = buf, .cap = buf ? len : 0, .json = json != 0, .first = 1};
    if (buf && len) buf[0] = 0;
    if (s.json) put(&s, "{");
    library_section(&s);
    cpu_section(&s);
    cuda_section(&s);
    nvrtc_section(&s);
    cufile_section(&s);
    kcache_section(&s);
    backends_section(&s);
    if (s.json) put(&s, "}\n");
    return s.len;
}

cflash_status cflash_add_library_dir(const char* dir) {
    CFLASH_RETURN_IF(!dir || !*dir, CFLASH_ERR_INVALID_ARGUMENT,
                     "dir: NULL or empty, expected a directory path");
    CFLASH_RETURN_IF(strlen(dir) >= 500, CFLASH_ERR_INVALID_ARGUMENT,
                     "dir: %zu characters, expected fewer than 500", strlen(dir));
    CFLASH_RETURN_IF(cf_dynlib_add_search_dir(dir) != 0, CFLASH_ERR_INVALID_ARGUMENT,
                     "dir: '%s' not added: 64 directories were added already", dir);
    return CFLASH_OK;
}
