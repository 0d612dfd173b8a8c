#!/bin/sh
# The aarch64 C tests under qemu-user (`make test-arm`, after the cross build in BUILD_DIR), on each
# CPU feature set qemu models: first every test that can run emulated on `-cpu max` (NEON,
# FEAT_FP16/FHM, BF16, I8MM, SVE2 at 128 bits, SME); then cpu-sve's tests at the longest SVE
# vector (2048 bits: its kernels read the length at run time); then, without
# SVE (`max,sve=off`), the probe, the report and test_attn_kernels (cpu-sve must refuse there, with
# its reason; cpu-neon's kernels are the ones `-cpu max` ran, same features), and on a NEON-only
# core (Cortex-A72: no fp16 arithmetic, no bf16: other NEON paths) the probe, the report and
# cpu-neon's tests (cpu-sve refusing again). The grids run
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
build=$1 jobs=${2:-2}
command -v qemu-aarch64 >/dev/null 2>&1 || { echo "qemu-aarch64 not found (sh .ci/deps.sh arm)"; exit 1; }
cd "$build" || exit 1

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
exclude='^(test_cuda_dispatch|test_link_only_lcflash|test_attn_memory|test_attn_masks|test_attn_blocks|test_threads_passive|test_attn_ref|.*_parallel)$'
# The tests that loop over backends, for the models that change only some backends.
kernels='test_attn_kernels|test_attn_backends|test_kvcache|test_norm|test_rotary|test_merge'

# One model: its ctest selection under qemu with its features. $1 = the model line (below), $2 =
# ctest jobs.
run_model() {
    IFS=';' read -r name cpu select backends features vl <<EOF
$1
EOF
    echo "== qemu-aarch64 -cpu $cpu: ctest $select${backends:+ (backends: $backends)}"
    # passive OpenMP waiting: a spinning idle thread is emulated too (see the Makefile's TEST_ENV)
    # shellcheck disable=SC2086
    env QEMU_CPU="$cpu" CFLASH_TEST_LEVEL=-1 CFLASH_TEST_CPU_FEATURES="$features" \
        OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" \
        ${vl:+CFLASH_TEST_SVE_VL=$vl} CFLASH_TEST_BACKENDS="$backends" \
        ctest --output-on-failure -j"$2" $select
}

# name;QEMU_CPU;ctest selection;CFLASH_TEST_BACKENDS;features the probe must see;SVE bytes
max="max;max,sve-default-vector-length=16;-E $exclude;cpu-neon cpu-sve;+asimd +fphp +asimdhp +asimdfhm +asimddp +bf16 +i8mm +sve +sve2 +svebf16 +sme;16"
sve2048="sve2048;max,sve-default-vector-length=256;-R ^(test_probe|test_report|test_attn_kernels|test_kvcache|test_norm|test_rotary|test_merge)\$;cpu-sve;+sve;256"
# (no test_kvcache without SVE: cpu-neon runs there the kernels `-cpu max` ran, same features;
# cpu-sve's refusal and its reason are the probe's, the report's and test_attn_kernels' checks)
nosve="nosve;max,sve=off;-R ^(test_probe|test_report|test_attn_kernels)\$;cpu-sve cpu-neon;+asimd +fphp +asimdhp +asimdfhm +bf16 +i8mm -sve -sve2 -sme;0"
a72="cortex-a72;cortex-a72;-R ^(test_probe|test_report|test_attn_kernels|test_attn_backends|test_kvcache)\$;cpu-sve cpu-neon;+asimd -fphp -asimdhp -asimdfhm -asimddp -bf16 -i8mm -sve -sve2 -sme;0"

fail=""
# qemu's full model first, on every core; then the other three side by side (each is mostly one
# long test on one core: one after the other they took 7 minutes on a Zen 3 host, a core idle
# most of it; 236 s together). All four at once was slower (the ARM stage 15 minutes there): five
# emulated tests of two OpenMP threads each on two cores wait at every barrier for a descheduled
# thread.
run_model "$max" "$jobs" || fail="$fail max"
logs=$(mktemp -d)
(run_model "$sve2048" 1 > "$logs/1" 2>&1 || echo sve2048 > "$logs/1.fail") &
(run_model "$nosve" 1 > "$logs/2" 2>&1 || echo nosve > "$logs/2.fail") &
(run_model "$a72" 1 > "$logs/3" 2>&1 || echo cortex-a72 > "$logs/3.fail") &
wait
for i in 1 2 3; do
    cat "$logs/$i"
    if [ -f "$logs/$i.fail" ]; then fail="$fail $(cat "$logs/$i.fail")"; fi
done
rm -rf "$logs"
if [ -n "$fail" ]; then
    echo "qemu_arm: FAILED on:$fail"
    exit 1
fi
echo "qemu_arm: every CPU model passed"
