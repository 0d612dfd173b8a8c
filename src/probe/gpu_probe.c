/* CUDA driver, NVRTC and cuFile probes (see gpu_probe.h): the driver's entry points come from the
 * shared loader (cuda_loader.h), NVRTC's and cuFile's from dlsym on the handles dynlib.c found;
 * then context-free queries only. No CUDA header is needed to build. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core/strbuf.h"
#include "probe/cuda_loader.h"
#include "probe/dynlib.h"
#include "probe/gpu_probe.h"

/* ---- Helpers ---- */

/* dlsym with the loader's message on failure appended to missing ("a, b"). */
static void* sym(void* h, const char* name, char* missing, size_t cap) {
    dlerror();
    void* p = dlsym(h, name);
    if (!p && missing) cf_strcatf(missing, cap, "%s%s", missing[0] ? ", " : "", name);
    return p;
}

/* Where the library was looked for and what the loader said, for "not found" messages. */
static void not_found(char* dst, size_t cap, cf_lib_id id) {
    const cf_dynlib* d = cf_dynlib_get(id);
    if (d->error[0] && strstr(d->error, cf_dynlib_env(id)) == d->error) {
        cf_strcatf(dst, cap, "%s not found: %s", cf_dynlib_name(id), d->error);
        return;
    }
    cf_strcatf(dst, cap, "%s not found: %s (tried: %s; set %s to its path to choose one)",
               cf_dynlib_name(id), d->error[0] ? d->error : "no error text", d->tried,
               cf_dynlib_env(id));
}

/* ---- CUDA driver ---- */

static const struct {
    int code;
    const char* name;
} cu_names[] = {
    {0, "CUDA_SUCCESS"},
    {1, "CUDA_ERROR_INVALID_VALUE"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY"},
    {3, "CUDA_ERROR_NOT_INITIALIZED"},
    {4, "CUDA_ERROR_DEINITIALIZED"},
    {34, "CUDA_ERROR_STUB_LIBRARY"},
    {35, "CUDA_ERROR_INSUFFICIENT_DRIVER"},
    {46, "CUDA_ERROR_DEVICE_UNAVAILABLE"},
    {100, "CUDA_ERROR_NO_DEVICE"},
    {101, "CUDA_ERROR_INVALID_DEVICE"},
    {304, "CUDA_ERROR_OPERATING_SYSTEM"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"},
    {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"},
    {999, "CUDA_ERROR_UNKNOWN"},
};

/* The driver's entry points once the probe has loaded them (a name lookup never loads libcuda). */
static const cf_cu_api* probed;

const char* cf_cuda_result_name(int result) {
    const char* s = NULL;
    if (probed && probed->cuGetErrorName && probed->cuGetErrorName(result, &s) == 0 && s) return s;
    for (size_t i = 0; i < sizeof cu_names / sizeof cu_names[0]; i++)
        if (cu_names[i].code == result) return cu_names[i].name;
    return "CUDA error (unknown code)";
}

/* A hint for the failures users meet most. */
static const char* cu_hint(int result) {
    switch (result) {
    case 34:
        return "; this is the toolkit's stub libcuda, not the driver's (install the NVIDIA driver)";
    case 35: return "; the driver is older than this libcuda expects (update the NVIDIA driver)";
    case 100:
        return "; no NVIDIA GPU is visible (check CUDA_VISIBLE_DEVICES and the container's "
               "GPU access)";
    case 803:
        return "; libcuda and the kernel driver versions differ (reboot, or reinstall one "
               "driver)";
    default: return "";
    }
}

static cf_cuda_info cuda;
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;

static void probe_cuda(void) {
    cf_cuda_info* c = &cuda;
    c->init_result = -1;
    const cf_dynlib* d = cf_dynlib_get(CF_LIB_CUDA);
    if (!d->found) {
        not_found(c->error, sizeof c->error, CF_LIB_CUDA);
        return;
    }
    c->lib_found = 1;
    const cf_cu_load_result* ld = cf_cu_load();
    const cf_cu_api* cu = probed = ld->api;
    if (ld->probe_missing[0]) {
        cf_strcatf(
            c->error, sizeof c->error,
            "%s at %s lacks the entry point(s) %s: not a CUDA driver library, or one too old",
            cf_dynlib_name(CF_LIB_CUDA), d->path, ld->probe_missing);
        return;
    }
    c->symbols_ok = 1;
    c->driver_version = ld->driver_version;
    c->init_result = ld->init_result;
    if (c->init_result != 0) {
        const char* text = NULL;
        if (cu->cuGetErrorString) cu->cuGetErrorString(c->init_result, &text);
        cf_strcatf(c->error, sizeof c->error, "cuInit failed with %d %s%s%s%s (libcuda: %s)",
                   c->init_result, cf_cuda_result_name(c->init_result), text ? ": " : "",
                   text ? text : "", cu_hint(c->init_result), d->path);
        return;
    }
    int n = 0;
    CUresult r = cu->cuDeviceGetCount(&n);
    if (r != 0) {
        cf_strcatf(c->error, sizeof c->error, "cuDeviceGetCount failed with %d %s", r,
                   cf_cuda_result_name(r));
        return;
    }
    if (n <= 0) {
        cf_strcatf(c->error, sizeof c->error, "the CUDA driver reports no devices");
        return;
    }
    c->device_count = n < CF_MAX_CUDA_DEVICES ? n : CF_MAX_CUDA_DEVICES;
    for (int i = 0; i < c->device_count; i++) {
        cf_cuda_device* dev = &c->devices[i];
        CUdevice cd;
        if ((r = cu->cuDeviceGet(&cd, i)) != 0) {
            snprintf(dev->error, sizeof dev->error, "cuDeviceGet(%d) failed with %d %s", i, r,
                     cf_cuda_result_name(r));
            continue;
        }
        if ((r = cu->cuDeviceGetName(dev->name, (int)sizeof dev->name - 1, cd)) != 0)
            snprintf(dev->name, sizeof dev->name, "(cuDeviceGetName failed: %s)",
                     cf_cuda_result_name(r));
        /* CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16, COMPUTE_CAPABILITY_MAJOR/MINOR = 75/76 */
        if ((r = cu->cuDeviceGetAttribute(&dev->major, 75, cd)) != 0 ||
            (r = cu->cuDeviceGetAttribute(&dev->minor, 76, cd)) != 0 ||
            (r = cu->cuDeviceGetAttribute(&dev->sms, 16, cd)) != 0)
            snprintf(dev->error, sizeof dev->error, "cuDeviceGetAttribute failed with %d %s", r,
                     cf_cuda_result_name(r));
        size_t mem = 0;
        if ((r = cu->cuDeviceTotalMem(&mem, cd)) == 0)
            dev->total_mem = mem;
        else if (!dev->error[0])
            snprintf(dev->error, sizeof dev->error, "cuDeviceTotalMem failed with %d %s", r,
                     cf_cuda_result_name(r));
    }
    c->usable = 1;
}

/* The archs that have passed the GPU tests (gpu_probe.h). */
static const struct {
    int sm;
    const char* where;
} cuda_tested[] = {{90, "NVIDIA H200, 2026-12-04"}};

const char* cf_cuda_tested_on(int sm) {
    for (size_t i = 0; i < sizeof cuda_tested / sizeof cuda_tested[0]; i++)
        if (cuda_tested[i].sm == sm) return cuda_tested[i].where;
    return NULL;
}

void cf_cuda_tested_list(char* buf, size_t len) {
    if (len) buf[0] = 0;
    for (size_t i = 0; i < sizeof cuda_tested / sizeof cuda_tested[0]; i++)
        cf_strcatf(buf, len, "%ssm_%d (%s)", i ? ", " : "", cuda_tested[i].sm,
                   cuda_tested[i].where);
}

const cf_cuda_info* cf_cuda_probe(void) {
    pthread_once(&cuda_once, probe_cuda);
    return &cuda;
}

/* ---- NVRTC ---- */

static cf_nvrtc_info nvrtc;
static pthread_once_t nvrtc_once = PTHREAD_ONCE_INIT;

static void probe_nvrtc(void) {
    cf_nvrtc_info* n = &nvrtc;
    const cf_dynlib* d = cf_dynlib_get(CF_LIB_NVRTC);
    if (!d->found) {
        not_found(n->error, sizeof n->error, CF_LIB_NVRTC);
        return;
    }
    char missing[256] = "";
    int (*nvrtcVersion)(int*, int*) = sym(d->handle, "nvrtcVersion", missing, sizeof missing);
    if (!nvrtcVersion) {
        cf_strcatf(n->error, sizeof n->error,
                   "NVRTC at %s lacks nvrtcVersion: not an NVRTC library", d->path);
        return;
    }
    int r = nvrtcVersion(&n->major, &n->minor);
    if (r != 0) {
        cf_strcatf(n->error, sizeof n->error,
                   "nvrtcVersion failed with nvrtcResult %d (NVRTC at %s)", r, d->path);
        return;
    }
    n->found = 1;
    /* Present from NVRTC 11.2; older ones list no archs (the report says so). */
    int (*num_archs)(int*) = sym(d->handle, "nvrtcGetNumSupportedArchs", NULL, 0);
    int (*get_archs)(int*) = sym(d->handle, "nvrtcGetSupportedArchs", NULL, 0);
    int count = 0;
    if (num_archs && get_archs && num_archs(&count) == 0 && count > 0) {
        int all[512];
        if (count <= (int)(sizeof all / sizeof all[0]) && get_archs(all) == 0) {
            n->n_archs = count < 128 ? count : 128;
            memcpy(n->archs, all, sizeof(int) * (size_t)n->n_archs);
        }
    }
    /* NVRTC dlopens libnvrtc-builtins.so.MAJOR.MINOR when it compiles: check it is there beside
     * libnvrtc or on the loader path, so a missing one is reported now, not at the first kernel. */
    char name[64], path[1024];
    snprintf(name, sizeof name, "libnvrtc-builtins.so.%d.%d", n->major, n->minor);
    const char* slash = strrchr(d->path, '/');
    void* b = NULL;
    char errs[1024] = "";
    if (slash) {
        snprintf(path, sizeof path, "%.*s/%s", (int)(slash - d->path), d->path, name);
        dlerror();
        if ((b = dlopen(path, RTLD_NOW | RTLD_LOCAL)) != NULL)
            snprintf(n->builtins, sizeof n->builtins, "%s", path);
        else
            cf_strcatf(errs, sizeof errs, "%s", dlerror());
    }
    if (!b) {
        dlerror();
        if ((b = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != NULL)
            snprintf(n->builtins, sizeof n->builtins, "%s", name);
        else
            cf_strcatf(errs, sizeof errs, "%s%s", errs[0] ? "; " : "", dlerror());
    }
    n->builtins_found = b != NULL;
    if (!b) snprintf(n->builtins, sizeof n->builtins, "%s", errs);
    /* b stays loaded: NVRTC will load the same file when it compiles. */
}

const cf_nvrtc_info* cf_nvrtc_probe(void) {
    pthread_once(&nvrtc_once, probe_nvrtc);
    return &nvrtc;
}

/* ---- cuFile ---- */

static cf_cufile_info cufile;
static pthread_once_t cufile_once = PTHREAD_ONCE_INIT;

static void probe_cufile(void) {
    cf_cufile_info* f = &cufile;
    const cf_dynlib* d = cf_dynlib_get(CF_LIB_CUFILE);
    if (!d->found) {
        not_found(f->error, sizeof f->error, CF_LIB_CUFILE);
        return;
    }
    f->lib_found = 1;
    dlerror();
    f->driver_open_found = dlsym(d->handle, "cuFileDriverOpen") != NULL;
    if (!f->driver_open_found) {
        const char* e = dlerror();
        cf_strcatf(f->error, sizeof f->error, "cuFile at %s lacks cuFileDriverOpen: %s", d->path,
                   e ? e : "symbol not found");
    }
}

const cf_cufile_info* cf_cufile_probe(void) {
    pthread_once(&cufile_once, probe_cufile);
    return &cufile;
}
