#!/bin/sh
# The peak kernels of src/cpu/peak.c keep all 16 independent chains in their loop: a compiler that
# folds or merges them (GCC 12 merged the 16 identical vdpbf16ps chains into one) makes `cflash
# bench peak` count 16 instructions per iteration while running one, overstating the peak.
# Reads the disassembly of libcflash.so. Usage: peak_kernels.sh PATH_TO_LIBCFLASH_SO
lib=$1
command -v objdump >/dev/null 2>&1 || { echo "skipped: objdump not found"; exit 77; }
# The library's own architecture, not the host's: make test-arm runs this ctest on an aarch64 build.
objdump -f "$lib" 2>/dev/null | grep -q 'x86-64' ||
    { echo "skipped: $lib is not an x86-64 object (the peak kernels checked here are x86-64)"; exit 77; }
fail=0
# check FUNCTION INSTRUCTION_REGEX: at least 16 such instructions in the function's body.
check() {
    n=$(objdump -d --no-show-raw-insn "$lib" |
        awk -v f="<$1>:" '$2 == f { p = 1; next } p && /^$/ { exit } p' | grep -cE "$2")
    if [ "$n" -ge 16 ]; then
        echo "ok: $1 has $n x $2"
    else
        echo "FAIL: $1 has $n x $2, expected 16 independent chains"
        fail=1
    fi
}
check fma512 vfmadd
check fma256 vfmadd
check dpbf16 vdpbf16ps
exit $fail
