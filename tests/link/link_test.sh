#!/bin/sh
# A C program that links only -lcflash builds and runs: against the build tree's libcflash.so, then
# against an installed prefix (cmake --install to a temp dir) through the installed pkg-config file.
# Then the installed headers and tool (which must report the installed library as the one it runs
# on), and a CMake project finds the installed package (find_package(cflash)) and links both.
# Also shows libcflash.so's DT_NEEDED entries (libm, libdl, OpenMP, pthread) that make this work.
# usage: link_test.sh CC SOURCE_DIR BUILD_DIR WORK_DIR [EXTRA_CFLAGS (sanitizer builds)]
set -eu
CC=$1 SRC=$2 BUILD=$3 WORK=$4 EXTRA=${5:-}
rm -rf "$WORK" && mkdir -p "$WORK"
echo "== DT_NEEDED of libcflash.so"
readelf -d "$BUILD/libcflash.so" | grep NEEDED || true
echo "== build tree: $CC link_only.c -lcflash"
# shellcheck disable=SC2086
"$CC" $EXTRA -o "$WORK/from_build" "$SRC/tests/link/link_only.c" -I"$SRC/include" \
    -L"$BUILD" -Wl,-rpath,"$BUILD" -lcflash
"$WORK/from_build"
echo "== installed prefix: cmake --install + pkg-config"
cmake --install "$BUILD" --prefix "$WORK/prefix" >"$WORK/install.log"
PC=$(find "$WORK/prefix" -name cflash.pc | head -n 1)
test -n "$PC" || { echo "cflash.pc not installed"; exit 1; }
PCDIR=$(dirname "$PC")
# The .pc file finds its prefix from its own place (${pcfiledir}), so a moved install works.
FLAGS=$(PKG_CONFIG_PATH="$PCDIR" pkg-config --cflags --libs cflash)
echo "pkg-config: $FLAGS"
LIBDIR=$(PKG_CONFIG_PATH="$PCDIR" pkg-config --variable=libdir cflash)
# shellcheck disable=SC2086
"$CC" $EXTRA -o "$WORK/from_prefix" "$SRC/tests/link/link_only.c" $FLAGS -Wl,-rpath,"$LIBDIR"
"$WORK/from_prefix"
# The installed program must use the installed library, not the build tree's.
if command -v ldd >/dev/null 2>&1; then
    ldd "$WORK/from_prefix" | grep libcflash
    ldd "$WORK/from_prefix" | grep -q "$WORK/prefix" || { echo "not the installed library"; exit 1; }
fi
echo "== installed prefix: both headers, and the tool on the installed library"
test -f "$WORK/prefix/include/cflash.h" || { echo "cflash.h not installed"; exit 1; }
test -f "$WORK/prefix/include/cflash_experimental.h" || {
    echo "cflash_experimental.h not installed"
    exit 1
}
TOOL="$WORK/prefix/bin/cflash"
"$TOOL" report >"$WORK/tool_report.txt"
grep -E "^  path +$WORK/prefix/lib[^ ]*/libcflash\.so" "$WORK/tool_report.txt" || {
    echo "the installed tool does not report the installed library:"
    head -n 6 "$WORK/tool_report.txt"
    exit 1
}
echo "== installed prefix: find_package(cflash) from a CMake project, shared and static"
# shellcheck disable=SC2086
cmake -S "$SRC/tests/link/consumer" -B "$WORK/consumer" -DCMAKE_PREFIX_PATH="$WORK/prefix" \
    -DCMAKE_C_FLAGS="$EXTRA" >"$WORK/consumer.log" 2>&1 || { cat "$WORK/consumer.log"; exit 1; }
cmake --build "$WORK/consumer" >>"$WORK/consumer.log" 2>&1 || { cat "$WORK/consumer.log"; exit 1; }
"$WORK/consumer/use_shared"
"$WORK/consumer/use_static"
echo "link test passed"
