#!/bin/sh
# Builds the libFuzzer target with clang in BUILD and runs it for SECONDS on JOBS cores over the
# kept corpus (tests/fuzz/corpus, read only) plus a work corpus BUILD/corpus; any finding (crash,
# sanitizer report, leak, oracle failure, timeout) fails it, its input in BUILD/artifacts.
#   sh tests/fuzz/run.sh SECONDS JOBS BUILD [--skip-if-unavailable]
# --skip-if-unavailable (make test): exit 0 with a message where clang or libFuzzer is missing.
# Reproduce a finding: BUILD/tests/fuzz/cflash_fuzz BUILD/artifacts/crash-... (a leak at exit:
# with LSAN_OPTIONS=suppressions=tests/fuzz/lsan.supp ASAN_OPTIONS=fast_unwind_on_malloc=0)
set -u
secs=$1 jobs=$2 build=$3 skip=${4:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
probe=$(mktemp -d)
printf 'int LLVMFuzzerTestOneInput(const unsigned char* d, unsigned long n) { return d && n; }\n' \
    >"$probe/p.c"
if ! command -v clang >/dev/null 2>&1 ||
    ! clang -fsanitize=fuzzer "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
    rm -rf "$probe"
    why="clang with libFuzzer (Debian: clang, libclang-rt-14-dev) is not installed"
    if [ "$skip" = --skip-if-unavailable ]; then echo "test-fuzz: skipped: $why"; exit 0; fi
    echo "fuzz: $why" >&2
    exit 1
fi
rm -rf "$probe"
CC=clang cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCFLASH_FUZZ=ON \
    -DCFLASH_BUILD_TESTS=OFF -DCFLASH_WERROR=ON >/dev/null || exit 1
cmake --build "$build" -j"$jobs" --target cflash_fuzz || exit 1
mkdir -p "$build/corpus" "$build/artifacts"
cd "$build" || exit 1
rm -f fuzz-*.log
# the OpenMP runtime's own blocks kept past exit are not the library's leaks (lsan.supp says why);
# the suppression needs whole allocation stacks (libomp has no frame pointers): ~20% slower
LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
ASAN_OPTIONS="fast_unwind_on_malloc=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS ASAN_OPTIONS
echo "fuzz: $jobs jobs x $secs s over tests/fuzz/corpus (logs: $build/fuzz-N.log)"
./tests/fuzz/cflash_fuzz -max_total_time="$secs" -jobs="$jobs" -workers="$jobs" -timeout=60 \
    -rss_limit_mb=4096 -artifact_prefix=artifacts/ -print_final_stats=1 \
    corpus "$root/tests/fuzz/corpus" >fuzz.out 2>&1
rc=$?
for f in fuzz-*.log; do
    [ -f "$f" ] || continue
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs|ERROR|SUMMARY|cflash_fuzz:" "$f" |
        sed "s|^|$f: |" | tail -5
done
found=$(ls artifacts 2>/dev/null | wc -l)
if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
    echo "fuzz: FAILED (exit $rc, $found inputs in $build/artifacts):" >&2
    ls artifacts >&2
    exit 1
fi
echo "fuzz: no finding in $jobs x $secs s"
