#!/bin/sh
# The aarch64 C tests under qemu-user (`make test-arm`, after the cross build in BUILD_DIR), on each
# CPU feature set qemu models (the tests of all four in one pool of JOBS, the longest first): every
# test that can run emulated on `-cpu max` (NEON, FEAT_FP16/FHM, BF16, I8MM, SVE2 at 128 bits,
# SME); cpu-sve's tests at the longest SVE vector (2048 bits: its kernels read the length at run
# time); without SVE (`max,sve=off`), the probe, the report and test_attn_kernels (cpu-sve must
# refuse there, with its reason; cpu-neon's kernels are the ones `-cpu max` ran, same features);
# and on a NEON-only core (Cortex-A72: no fp16 arithmetic, no bf16: other NEON paths) the probe,
# the report and cpu-neon's tests (cpu-sve refusing again). The grids run
# reduced (CFLASH_TEST_LEVEL=-1): kernels and the fp64 oracle are emulated, tens of times slower.
# The tests that loop over backends check the ARM kernels (cpu-neon, cpu-sve) alone: cpu-ref and
# cpu-generic are portable C that the x86 stages run under gcc, clang and ASan (the probe / report
# / README example run through auto here).
# qemu emulates 128-bit SVE fast and longer vectors slowly: on an Intel Xeon host (where qemu ran
# about 4x slower than on Zen 4) test_attn_backends took 86 s at 128 bits (cpu-sve), 750 s at 256
# or 512 (cpu-neon and cpu-sve; cpu-sve alone 750 s too) and 398 s at 2048 (cpu-sve), and the stage
# 26.6 min. So `-cpu max` runs at 128 bits (the length of most SVE cores: Neoverse N2 / V2), which
# makes a separate 128-bit model redundant, and at 2048 bits cpu-sve's tests run without the
# attention grid: test_attn_kernels checks its GEMM and the tails there; the softmax pieces are
# predicated loops, the same code at every length.
# Usage: qemu_arm.sh BUILD_DIR [JOBS]
set -uf # -f: the ctest regexes below are expanded unquoted, never as file globs
here=$(cd "$(dirname "$0")" && pwd)
if [ "$1" != --job ]; then # (--job: one test, below)
    build=$1 jobs=${2:-2}
    command -v qemu-aarch64 >/dev/null 2>&1 || { echo "qemu-aarch64 not found (sh .ci/deps.sh arm)"; exit 1; }
    cd "$build" || exit 1
fi

# Not run emulated, and why:
#   test_cuda_dispatch      needs NVRTC; the host's is an x86-64 library the emulated process cannot
#                           load (test_cuda_dispatch_no_nvrtc, the same with NVRTC absent, runs)
#   test_link_only_lcflash  builds a consumer project with find_package(cflash) using the host's
#                           compiler (the README example is compiled by the cross compiler and runs)
#   test_attn_memory        the memory bound is the driver's, the same C on every architecture (the
#                           x86 stage checks it); its 8192- and 131072-long sequences take ~10 min here
#   test_attn_masks         issue 13's block skipping at 700-long sequences: the masks are the
#                           driver's C, the same on every architecture (the grid's issue 13 cases
#                           run here on the NEON / SVE kernels through test_attn_backends)
#   test_attn_ref           cpu-ref's grid (portable C, which the x86 stages run under gcc, clang
#                           and ASan; here the automatic choice is cpu-neon / cpu-sve, checked by
#                           test_attn_backends): 112 s emulated on a Zen 3 host, where CI ran over its
#                           30 minutes; it passed under qemu there (2026-12-07, -cpu max)
#   test_threads_passive    test_threads with OMP_WAIT_POLICY=passive, which every test here runs
#                           with already (below): the same run twice
#   *_parallel              the same grids with the small-call thread cut off: thread splitting is
#                           architecture-independent C (the x86 stages run them); the multi-thread
#                           kernel paths still run here in test_attn_backends' one-pass cases
#   test_attn_blocks        its grid runs the first fast backend it finds (here cpu-sve, else
#                           cpu-neon): 180 s emulated, more than the stage can spend; run by hand
#                           (`QEMU_CPU=max` and `max,sve=off`), it passed on both (2026-12-02);
#                           its block-size parsing is the same C on every architecture
#   test_concurrent         calls from several threads at once against each alone: 240 s
#                           emulated (-cpu max, Zen 3 host); what it looks for, state shared
#                           between calls, is in the C every architecture compiles, and the ARM
#                           kernels' one table (sve.c) is filled under pthread_once; it passed
#                           under qemu there (2026-12-07)
exclude='^(test_cuda_dispatch|test_link_only_lcflash|test_attn_memory|test_attn_masks|test_attn_blocks|test_threads_passive|test_attn_ref|test_concurrent|.*_parallel)$'

# name;QEMU_CPU;ctest selection;CFLASH_TEST_BACKENDS;features the probe must see;SVE bytes
max="max;max,sve-default-vector-length=16;-E $exclude;cpu-neon cpu-sve;+asimd +fphp +asimdhp +asimdfhm +asimddp +bf16 +i8mm +sve +sve2 +svebf16 +sme;16"
sve2048="sve2048;max,sve-default-vector-length=256;-R ^(test_probe|test_report|test_attn_kernels|test_kvcache|test_norm|test_rotary|test_merge)\$;cpu-sve;+sve;256"
# (no test_kvcache without SVE: cpu-neon runs there the kernels `-cpu max` ran, same features;
# cpu-sve's refusal and its reason are the probe's, the report's and test_attn_kernels' checks)
nosve="nosve;max,sve=off;-R ^(test_probe|test_report|test_attn_kernels)\$;cpu-sve cpu-neon;+asimd +fphp +asimdhp +asimdfhm +bf16 +i8mm -sve -sve2 -sme;0"
a72="cortex-a72;cortex-a72;-R ^(test_probe|test_report|test_attn_kernels|test_attn_backends|test_kvcache)\$;cpu-sve cpu-neon;+asimd -fphp -asimdhp -asimdfhm -asimddp -bf16 -i8mm -sve -sve2 -sme;0"
models="$max
$sve2048
$nosve
$a72"

# One test on one model (`qemu_arm.sh --job MODEL TEST`, run by the pool below in the build
# directory): its ctest under qemu with the model's features; one line when it passes, its whole
# output when it fails, and then a file MODEL:TEST in $CF_QEMU_FAILED.
if [ "$1" = --job ]; then
    line=$(printf '%s\n' "$models" | grep "^$2;")
    IFS=';' read -r name cpu select backends features vl <<EOF
$line
EOF
    t0=$(date +%s)
    # passive OpenMP waiting: a spinning idle thread is emulated too (see the Makefile's TEST_ENV)
    out=$(env QEMU_CPU="$cpu" CFLASH_TEST_LEVEL=-1 CFLASH_TEST_CPU_FEATURES="$features" \
        OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" \
        ${vl:+CFLASH_TEST_SVE_VL=$vl} CFLASH_TEST_BACKENDS="$backends" \
        ctest --output-on-failure -R "^$3\$" 2>&1)
    rc=$?
    secs=$(($(date +%s) - t0))
    if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "tests passed, 0 tests failed out of 1\$"; then
        case $out in *"***Skipped"*) how=skipped ;; *) how=passed ;; esac
        echo "$name: $3 $how ($secs s)"
        exit 0
    fi
    printf '== %s (QEMU_CPU=%s): %s FAILED (%s s):\n%s\n' "$name" "$cpu" "$3" "$secs" "$out"
    touch "$CF_QEMU_FAILED/$name:$3"
    exit 1
fi

# Every (model, test) pair is one job, JOBS of them at a time, the longest first (the seconds each
# took in CI on a Zen 3 host, 2026-12-07; the others are short and follow in ctest's order). Models
# one after the other (`-cpu max` on every core, then the other three side by side) left a core
# idle at the end of each: 508 s on that host for ~910 core-seconds, 465 s in one pool. More jobs
# than cores was slower: emulated tests of two OpenMP threads each wait at every barrier for a
# descheduled thread (all four models at once: the stage 15 minutes).
costs="max test_attn_backends 297
max test_edge_numerics 137
cortex-a72 test_attn_backends 128
max test_kvcache 98
sve2048 test_kvcache 69
cortex-a72 test_kvcache 46
max test_threads 31
max cli_check 30"
list=$(mktemp)
CF_QEMU_FAILED=$(mktemp -d)
export CF_QEMU_FAILED
printf '%s\n' "$models" | while IFS=';' read -r name cpu select backends features vl; do
    echo "== qemu-aarch64 -cpu $cpu: ctest $select${backends:+ (backends: $backends)}"
    # shellcheck disable=SC2086
    ctest -N $select | sed -n 's/^ *Test *#[0-9]*: //p' | while read -r t; do
        c=$(printf '%s\n' "$costs" | awk -v m="$name" -v t="$t" '$1 == m && $2 == t { print $3 }')
        echo "${c:-0} $name $t" >> "$list"
    done
done
echo "qemu_arm: $(wc -l < "$list") tests on $jobs cores, the longest first"
sort -s -k1,1nr "$list" | cut -d' ' -f2- | xargs -P "$jobs" -n 2 sh "$here/qemu_arm.sh" --job
fail=$(ls "$CF_QEMU_FAILED" | tr '\n' ' ')
rm -rf "$list" "$CF_QEMU_FAILED"
if [ -n "$fail" ]; then
    echo "qemu_arm: FAILED: $fail"
    exit 1
fi
echo "qemu_arm: every CPU model passed"
