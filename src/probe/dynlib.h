/* Finding shared libraries with dlopen alone: override variable, then soname, then known
 * directories. Never runs a subprocess (no ldconfig), never creates a CUDA context. */
#ifndef CFLASH_PROBE_DYNLIB_H
#define CFLASH_PROBE_DYNLIB_H

typedef enum cf_lib_id { CF_LIB_CUDA = 0, CF_LIB_NVRTC, CF_LIB_CUFILE, CF_LIB_COUNT } cf_lib_id;

typedef struct cf_dynlib {
    int found;
    void* handle;         /* dlopen handle, NULL when not found */
    char path[512];       /* what was loaded (dlinfo/dladdr path when known) */
    char tried[1024];     /* every name or path tried, in order, "; "-separated */
    char error[1024];     /* the dlerror() texts of the failed tries */
} cf_dynlib;

/* The library, loaded once (thread-safe) and kept open; never NULL. */
const cf_dynlib* cf_dynlib_get(cf_lib_id id);

/* Adds a directory to search after the known ones (the Python package passes the NVIDIA wheels'
 * folders). Takes effect for libraries not yet probed. */
void cf_dynlib_add_search_dir(const char* dir);

#endif
