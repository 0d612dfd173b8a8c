#!/bin/sh
# The peak kernels of src/cpu/peak.c keep all their independent chains in their loop (16; fma256
# 12: AVX2's 16 ymm registers), in registers: a compiler that folds or merges them (GCC 12 merged
# the 16 identical vdpbf16ps chains into one) makes `cflash bench peak` count 16 instructions per
# iteration while running one, overstating the peak; one that spills them to the stack (fma256
# with 16 chains did) runs a third of the FMA rate, understating it.
# Reads the disassembly of libcflash.so. Usage: peak_kernels.sh PATH_TO_LIBCFLASH_SO
lib=$1
command -v objdump >/dev/null 2>&1 || { echo "skipped: objdump not found"; exit 77; }
# The library's own architecture, not the host's: make test-arm runs this ctest on an aarch64 build.
objdump -f "$lib" 2>/dev/null | grep -q 'x86-64' ||
    { echo "skipped: $lib is not an x86-64 object (the peak kernels checked here are x86-64)"; exit 77; }
fail=0
# check FUNCTION INSTRUCTION_REGEX N: at least N such instructions in the function's body, and no
# ymm / zmm register stored to or loaded from the stack (a spilled accumulator).
check() {
    body=$(objdump -d --no-show-raw-insn "$lib" |
        awk -v f="<$1>:" '$2 == f { p = 1; next } p && /^$/ { exit } p')
    n=$(printf '%s\n' "$body" | grep -cE "$2")
    spills=$(printf '%s\n' "$body" | grep -E 'vmovap|vmovup' | grep -E '%[yz]mm' | grep -c '(%rsp)\|(%rbp)')
    if [ "$n" -ge "$3" ] && [ "$spills" -eq 0 ]; then
        echo "ok: $1 has $n x $2, no vector register on the stack"
    else
        echo "FAIL: $1 has $n x $2 (expected $3 independent chains) and $spills vector moves to or from the stack"
        fail=1
    fi
}
check fma512 vfmadd 16
check fma256 vfmadd 12
check dpbf16 vdpbf16ps 16
exit $fail
