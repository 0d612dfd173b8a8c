#!/bin/sh
# Compiles and runs the C example of README.md (the ```c block after the readme-example marker)
# against the built library, so the README's example cannot rot.
# Usage: readme_example.sh CC SOURCE_DIR LIB_DIR DLPACK_INCLUDE_DIR [EXTRA_CFLAGS]
set -eu
cc=$1 src=$2 lib=$3 dlpack=$4 extra=${5:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk '/<!-- readme-example/ {m=1; next} m && /^```c/ {c=1; next} c && /^```/ {exit} c {print}' \
    "$src/README.md" >"$work/example.c"
if [ ! -s "$work/example.c" ]; then
    echo "FAIL: no C example found in README.md"; echo "0 passed, 1 failed"; exit 1
fi
# shellcheck disable=SC2086
if ! "$cc" -std=c11 -Wall -Wextra -Werror $extra "$work/example.c" -I"$src/include" -I"$dlpack" \
    -L"$lib" -lcflash -Wl,-rpath,"$lib" -lm -o "$work/example"; then
    echo "FAIL: the README example does not compile"; echo "0 passed, 1 failed"; exit 1
fi
# CFLASH_TEST_RUNNER: the emulator of a cross build (tests/CMakeLists.txt), else empty.
# shellcheck disable=SC2086
if ! ${CFLASH_TEST_RUNNER:-} "$work/example" >"$work/out.txt" 2>&1; then
    cat "$work/out.txt"; echo "FAIL: the README example exited non-zero"; echo "1 passed, 1 failed"
    exit 1
fi
cat "$work/out.txt"
if grep -q -- "-> cpu-" "$work/out.txt" && grep -q "dropout_p: 1.5" "$work/out.txt"; then
    echo "3 passed, 0 failed"
else
    echo "FAIL: unexpected output"; echo "2 passed, 1 failed"; exit 1
fi
