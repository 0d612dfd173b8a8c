/* The kernel cache (see kcache.h): an in-memory list in front of one file per entry on disk.
 * File format: "CFLASHK1", u32 key length, key, u64 payload length, u64 FNV-1a of the payload,
 * payload. The file name is the key's hash; the stored key is compared in full on load. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "cuda/kcache.h"

static const char magic[8] = {'C', 'F', 'L', 'A', 'S', 'H', 'K', '1'};

uint64_t cf_hash64(const void* data, size_t len, uint64_t h) {
    const unsigned char* p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

typedef struct mem_entry {
    struct mem_entry* next;
    char* key;
    void* data;
    size_t len;
} mem_entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static mem_entry* mem_head;
static cf_kcache_stats stats;
static char dir[1024];
static int dir_resolved;

/* ---- Directory ---------------------------------------------------------------------------- */

static void resolve_dir_locked(void) {
    if (dir_resolved) return;
    dir_resolved = 1;
    const char* e = getenv("CFLASH_CACHE_DIR");
    const char* x = getenv("XDG_CACHE_HOME");
    const char* h = getenv("HOME");
    if (e && *e)
        snprintf(dir, sizeof dir, "%s", e);
    else if (x && *x)
        snprintf(dir, sizeof dir, "%s/cflash", x);
    else if (h && *h)
        snprintf(dir, sizeof dir, "%s/.cache/cflash", h);
    else
        dir[0] = 0; /* no home: memory only */
    if (!dir[0]) stats.disk_disabled = 1;
}

const char* cf_kcache_dir(void) {
    pthread_mutex_lock(&lock);
    resolve_dir_locked();
    pthread_mutex_unlock(&lock);
    return dir;
}

/* mkdir -p; returns 0 or an errno. */
static int make_dirs(const char* path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char* p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return errno;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return errno;
    struct stat st;
    if (stat(tmp, &st) != 0) return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

static void disable_disk_locked(const char* what, int err) {
    if (!stats.disk_disabled)
        cf_log(CF_LOG_WARN,
               "kernel cache: %s '%s': %s; compiled kernels are cached in memory only for this "
               "process (set CFLASH_CACHE_DIR to a writable directory)",
               what, dir, strerror(err));
    stats.disk_disabled = 1;
}

static void entry_path(char* out, size_t n, const char* key) {
    uint64_t h = cf_hash64(key, strlen(key), CF_HASH64_INIT);
    snprintf(out, n, "%s/%016llx.cfk", dir, (unsigned long long)h);
}

/* ---- Disk entries ------------------------------------------------------------------------- */

/* Returns a malloc'ed payload, or NULL; *bad = 1 when the file exists but does not verify. */
static void* disk_read(const char* path, const char* key, size_t* len, int* bad) {
    *bad = 0;
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    char m[8];
    uint32_t klen = 0;
    uint64_t plen = 0, phash = 0;
    void* payload = NULL;
    char* k = NULL;
    *bad = 1;
    if (fread(m, 1, 8, f) != 8 || memcmp(m, magic, 8)) goto done;
    if (fread(&klen, 4, 1, f) != 1 || klen != strlen(key)) goto done;
    k = malloc(klen + 1);
    if (!k || fread(k, 1, klen, f) != klen) goto done;
    k[klen] = 0;
    if (strcmp(k, key)) goto done;
    if (fread(&plen, 8, 1, f) != 1 || fread(&phash, 8, 1, f) != 1) goto done;
    if (plen == 0 || plen > ((uint64_t)1 << 32)) goto done;
    payload = malloc((size_t)plen);
    if (!payload || fread(payload, 1, (size_t)plen, f) != plen) goto done;
    if (fgetc(f) != EOF) goto done; /* trailing bytes: not what we wrote */
    if (cf_hash64(payload, (size_t)plen, CF_HASH64_INIT) != phash) goto done;
    *bad = 0;
    *len = (size_t)plen;
done:
    fclose(f);
    free(k);
    if (*bad) {
        free(payload);
        payload = NULL;
    }
    return payload;
}

static int disk_write_locked(const char* key, const void* data, size_t len) {
    int err = make_dirs(dir);
    if (err) {
        disable_disk_locked("cannot create the directory", err);
        return -1;
    }
    char path[1200], tmp[1300];
    entry_path(path, sizeof path, key);
    static unsigned counter;
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(), counter++);
    FILE* f = fopen(tmp, "wb");
    if (!f) {
        disable_disk_locked("cannot write into the directory", errno);
        return -1;
    }
    uint32_t klen = (uint32_t)strlen(key);
    uint64_t plen = len, phash = cf_hash64(data, len, CF_HASH64_INIT);
    int ok = fwrite(magic, 1, 8, f) == 8 && fwrite(&klen, 4, 1, f) == 1 &&
             fwrite(key, 1, klen, f) == klen && fwrite(&plen, 8, 1, f) == 1 &&
             fwrite(&phash, 8, 1, f) == 1 && fwrite(data, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        cf_log(CF_LOG_WARN, "kernel cache: writing '%s' failed: %s", path, strerror(e));
        return -1;
    }
    stats.disk_writes++;
    return 0;
}

/* ---- Public functions --------------------------------------------------------------------- */

static void mem_add_locked(const char* key, const void* data, size_t len) {
    for (mem_entry* e = mem_head; e; e = e->next)
        if (!strcmp(e->key, key)) return;
    mem_entry* e = calloc(1, sizeof *e);
    if (!e) return;
    e->key = strdup(key);
    e->data = malloc(len);
    if (!e->key || !e->data) {
        free(e->key);
        free(e->data);
        free(e);
        return;
    }
    memcpy(e->data, data, len);
    e->len = len;
    e->next = mem_head;
    mem_head = e;
}

void* cf_kcache_get(const char* key, size_t* len) {
    void* out = NULL;
    pthread_mutex_lock(&lock);
    resolve_dir_locked();
    for (mem_entry* e = mem_head; e; e = e->next) {
        if (strcmp(e->key, key)) continue;
        out = malloc(e->len);
        if (out) {
            memcpy(out, e->data, e->len);
            *len = e->len;
            stats.mem_hits++;
        }
        pthread_mutex_unlock(&lock);
        return out;
    }
    if (dir[0]) {
        char path[1200];
        entry_path(path, sizeof path, key);
        int bad = 0;
        out = disk_read(path, key, len, &bad);
        if (bad) {
            stats.corrupt++;
            cf_log(CF_LOG_WARN, "kernel cache: '%s' is corrupt or stale; recompiling", path);
            unlink(path);
        }
        if (out) {
            stats.disk_hits++;
            mem_add_locked(key, out, *len);
        }
    }
    if (!out) stats.misses++;
    pthread_mutex_unlock(&lock);
    return out;
}

void cf_kcache_put(const char* key, const void* data, size_t len) {
    if (!data || !len) return;
    pthread_mutex_lock(&lock);
    resolve_dir_locked();
    mem_add_locked(key, data, len);
    if (!stats.disk_disabled) disk_write_locked(key, data, len);
    pthread_mutex_unlock(&lock);
}

cf_kcache_stats cf_kcache_get_stats(void) {
    pthread_mutex_lock(&lock);
    cf_kcache_stats s = stats;
    pthread_mutex_unlock(&lock);
    return s;
}

void cf_kcache_reset(void) {
    pthread_mutex_lock(&lock);
    while (mem_head) {
        mem_entry* e = mem_head;
        mem_head = e->next;
        free(e->key);
        free(e->data);
        free(e);
    }
    memset(&stats, 0, sizeof stats);
    dir_resolved = 0;
    pthread_mutex_unlock(&lock);
}

/* ---- Description for the report ----------------------------------------------------------- */

static size_t json_str(char* out, size_t n, const char* s) {
    size_t u = 0;
    for (; *s && u + 7 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            u += (size_t)snprintf(out + u, n - u, "\\%c", c);
        else if (c < 0x20)
            u += (size_t)snprintf(out + u, n - u, "\\u%04x", c);
        else
            out[u++] = (char)c;
    }
    if (n) out[u < n ? u : n - 1] = 0;
    return u;
}

size_t cf_kcache_describe(char* buf, size_t buf_len, int json) {
    if (!buf || !buf_len) return 0;
    pthread_mutex_lock(&lock);
    resolve_dir_locked();
    char d[1024];
    snprintf(d, sizeof d, "%s", dir);
    int disabled = stats.disk_disabled;
    long mem_entries = 0;
    for (mem_entry* e = mem_head; e; e = e->next)
        mem_entries++;
    pthread_mutex_unlock(&lock);

    const char* state;
    long entries = 0;
    long long bytes = 0;
    struct stat st;
    if (!d[0]) {
        state = "no (no HOME, XDG_CACHE_HOME or CFLASH_CACHE_DIR: memory only)";
    } else if (stat(d, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            state = "no (not a directory: memory only)";
        else
            state = access(d, W_OK) == 0 && !disabled ? "yes" : "no (memory only)";
        DIR* dd = S_ISDIR(st.st_mode) ? opendir(d) : NULL;
        struct dirent* de;
        while (dd && (de = readdir(dd))) {
            size_t L = strlen(de->d_name);
            if (L < 5 || strcmp(de->d_name + L - 4, ".cfk")) continue;
            char p[2048];
            snprintf(p, sizeof p, "%s/%s", d, de->d_name);
            struct stat es;
            if (stat(p, &es) == 0) entries++, bytes += (long long)es.st_size;
        }
        if (dd) closedir(dd);
    } else {
        /* Not created yet: writable if the nearest existing ancestor is. */
        char a[1024];
        snprintf(a, sizeof a, "%s", d);
        char* slash;
        int ok = 0;
        while ((slash = strrchr(a, '/'))) {
            if (slash == a)
                slash[1] = 0;
            else
                *slash = 0;
            if (stat(a, &st) == 0) {
                ok = S_ISDIR(st.st_mode) && access(a, W_OK) == 0;
                break;
            }
            if (slash == a) break;
        }
        state = ok && !disabled ? "yes (created at first compile)" : "no (memory only)";
    }
    int writable = !strncmp(state, "yes", 3);
    size_t u;
    if (json) {
        char esc[2048];
        json_str(esc, sizeof esc, d);
        u = (size_t)snprintf(
            buf, buf_len,
            "\"dir\": \"%s\", \"writable\": %s, \"entries\": %ld, \"bytes\": %lld, "
            "\"memory_entries\": %ld",
            esc, writable ? "true" : "false", entries, bytes, mem_entries);
    } else {
        u = (size_t)snprintf(buf, buf_len,
                             "directory: %s\nwritable: %s\nentries: %ld (%lld bytes)\n"
                             "in memory: %ld\n",
                             d[0] ? d : "(none)", state, entries, bytes, mem_entries);
    }
    return u < buf_len ? u : buf_len - 1;
}
