#!/bin/sh
# Installs what building and testing cflash need, only when missing: a C compiler, make, CMake and
# DLPack's header (apt), and NumPy + pytest for the Python tests (pip). Safe to run repeatedly.
set -e

need_apt=""
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || need_apt="$need_apt gcc libc6-dev"
command -v make >/dev/null 2>&1 || need_apt="$need_apt make"
command -v cmake >/dev/null 2>&1 || need_apt="$need_apt cmake"
[ -f /usr/include/dlpack/dlpack.h ] || [ -f /usr/local/include/dlpack/dlpack.h ] ||
    need_apt="$need_apt libdlpack-dev"
command -v python3 >/dev/null 2>&1 || need_apt="$need_apt python3 python3-pip"

if [ -n "$need_apt" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "deps: apt-get install$need_apt"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need_apt
fi

# Python test requirements (only used when tests/python exists).
if [ -d tests/python ] || [ -d "$(dirname "$0")/../tests/python" ]; then
    missing=""
    python3 -c "import numpy" >/dev/null 2>&1 || missing="$missing numpy"
    python3 -c "import pytest" >/dev/null 2>&1 || missing="$missing pytest"
    if [ -n "$missing" ]; then
        echo "deps: pip install$missing"
        python3 -m pip install -q $missing ||
            python3 -m pip install -q --break-system-packages $missing
    fi
fi
