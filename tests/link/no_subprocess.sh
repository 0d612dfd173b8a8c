#!/bin/sh
# No code path in the library runs a subprocess (no ldconfig, no compiler, no shell): neither the
# sources under src/ call system/popen/fork/exec*/posix_spawn, nor does libcflash.so import them.
# usage: no_subprocess.sh SOURCE_DIR BUILD_DIR
set -u
SRC=$1 BUILD=$2
PAT='(^|[^A-Za-z0-9_])(system|popen|fork|vfork|clone|execl|execlp|execle|execv|execve|execvp|execvpe|fexecve|posix_spawn|posix_spawnp)[[:space:]]*\('
status=0
# Comments are stripped first (the preprocessor's -fpreprocessed mode keeps code, drops comments),
# so a comment that mentions fork() does not count.
for f in $(find "$SRC/src" -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh'); do
    if cpp -fpreprocessed -P "$f" 2>/dev/null | grep -nE "$PAT" >/dev/null; then
        echo "FAIL: $f calls a subprocess function:"
        cpp -fpreprocessed -P "$f" 2>/dev/null | grep -nE "$PAT"
        status=1
    fi
done
SYMS=$(nm -D --undefined-only "$BUILD/libcflash.so" | awk '{print $NF}' | sed 's/@.*//' |
    grep -xE 'system|popen|fork|vfork|clone|clone3|execl|execlp|execle|execv|execve|execvp|execvpe|fexecve|posix_spawn|posix_spawnp' || true)
if [ -n "$SYMS" ]; then
    echo "FAIL: libcflash.so imports: $SYMS"
    status=1
fi
[ $status -eq 0 ] && echo "no subprocess calls in src/ or in libcflash.so's imports"
exit $status
