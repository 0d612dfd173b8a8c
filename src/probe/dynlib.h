/* Finding shared libraries with dlopen alone: override variable, then soname, then known
 * directories. Never runs a subprocess (no ldconfig), never creates a CUDA context. */
#ifndef CFLASH_PROBE_DYNLIB_H
#define CFLASH_PROBE_DYNLIB_H

typedef enum cf_lib_id { CF_LIB_CUDA = 0, CF_LIB_NVRTC, CF_LIB_CUFILE, CF_LIB_COUNT } cf_lib_id;

typedef struct cf_dynlib {
    int found;
    void* handle;     /* dlopen handle, NULL when not found */
    char path[512];   /* what was loaded (dlinfo/dladdr path when known) */
    char tried[2048]; /* every name or path tried, in order, "; "-separated */
    char error[2048]; /* the dlerror() texts of the failed tries, "; "-separated */
    char via[64];     /* how it was found: "CFLASH_LIBCUDA", "soname", "directory" */
} cf_dynlib;

/* Library names for messages ("libcuda", "NVRTC", "cuFile") and override variables. */
const char* cf_dynlib_name(cf_lib_id id);
const char* cf_dynlib_env(cf_lib_id id);

/* The library, loaded once (thread-safe) and kept open; never NULL. When the override variable is
 * set (to a file, or to a directory holding one of the sonames) only it is tried: a wrong override
 * is reported, never silently replaced by another copy. */
const cf_dynlib* cf_dynlib_get(cf_lib_id id);

/* Adds a directory to search after the known ones (the Python package passes the NVIDIA wheels'
 * folders). Takes effect for libraries not yet probed. Returns 0, or -1 when dir is NULL, empty,
 * 500 characters or longer, or the list (64) is full. */
int cf_dynlib_add_search_dir(const char* dir);
/* The directories added so far (n receives the count). */
const char* cf_dynlib_search_dir(int i);
int cf_dynlib_search_dir_count(void);
/* 1 once the library has been probed (later cf_dynlib_add_search_dir calls do not affect it). */
int cf_dynlib_probed(cf_lib_id id);

#endif
