#!/bin/sh
# The aarch64 C tests under qemu-user (`make test-arm`, after the cross build in BUILD_DIR): first
# every test that can run emulated on `-cpu max` (NEON, FEAT_FP16/FHM, BF16, I8MM, SVE2, SME), then
# the CPU probe, the report, the KV cache and the cpu-neon attention grid on the other feature sets
# qemu models: max without SVE, and Cortex-A72 (NEON only: no fp16 arithmetic, no bf16). The grids
# run reduced (CFLASH_TEST_LEVEL=-1): kernels and the fp64 oracle are emulated, tens of times slower.
# Usage: qemu_arm.sh BUILD_DIR [JOBS]
set -u
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
#   *_parallel              the same grids with the small-call thread cut off: thread splitting is
#                           architecture-independent C (the x86 stages run them); the multi-thread
#                           kernel paths still run here in test_attn_backends' one-pass cases
exclude='^(test_cuda_dispatch|test_link_only_lcflash|test_attn_memory|.*_parallel)$'

fail=""
# name|QEMU_CPU|features the probe must report (+present / -absent)|SVE vector length in bytes
for model in \
    "max|max|+asimd +fphp +asimdhp +asimdfhm +asimddp +bf16 +i8mm +sve +sve2 +svebf16 +sme|" \
    "max-sve256|max,sve-default-vector-length=32|+sve +sve2|32" \
    "max-nosve|max,sve=off|+asimd +fphp +asimdhp +asimdfhm +bf16 +i8mm -sve -sve2 -sme|0" \
    "cortex-a72|cortex-a72|+asimd -fphp -asimdhp -asimdfhm -asimddp -bf16 -i8mm -sve -sve2 -sme|0"; do
    name=${model%%|*} rest=${model#*|}
    cpu=${rest%%|*} rest=${rest#*|}
    features=${rest%%|*} vl=${rest#*|}
    case $name in
    max) select="-E $exclude" ;;
    max-sve256) select="-R ^test_probe$" ;; # the vector length is read at run time
    *) select="-R ^(test_probe|test_report|test_kvcache|test_attn_neon)$" ;;
    esac
    echo "== qemu-aarch64 -cpu $cpu: ctest $select"
    # shellcheck disable=SC2086
    if ! env QEMU_CPU="$cpu" CFLASH_TEST_LEVEL=-1 CFLASH_TEST_CPU_FEATURES="$features" \
        ${vl:+CFLASH_TEST_SVE_VL=$vl} ctest --output-on-failure -j"$jobs" $select; then
        fail="$fail $name"
    fi
done
if [ -n "$fail" ]; then
    echo "qemu_arm: FAILED on:$fail"
    exit 1
fi
echo "qemu_arm: every CPU model passed"
