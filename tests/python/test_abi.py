"""The ctypes mirrors of include/cflash.h (python/cflash/_lib.py) against the header itself: a C
program compiled here prints sizeof / offsetof of every struct the package passes and the enum
values it uses, so a field added to the header without the package following fails here, not
as silent memory corruption. Skipped (saying so) without a C compiler."""

import ctypes
import os
import shutil
import subprocess

import pytest

from cflash import _lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STRUCTS = {
    "DLTensor": (_lib.DLTensor, "DLTensor"),
    "AttnParams": (_lib.AttnParams, "cflash_attn_params"),
    "RotaryParams": (_lib.RotaryParams, "cflash_rotary_params"),
    "RotaryTableParams": (_lib.RotaryTableParams, "cflash_rotary_table_params"),
    "NormParams": (_lib.NormParams, "cflash_norm_params"),
    "KVCacheParams": (_lib.KVCacheParams, "cflash_kvcache_params"),
}
ENUMS = dict(
    [("CFLASH_OK", _lib.OK), ("CFLASH_ERR_INVALID_ARGUMENT", _lib.ERR_INVALID_ARGUMENT),
     ("CFLASH_NORM_RMS", _lib.NORM_RMS), ("CFLASH_NORM_LAYER", _lib.NORM_LAYER),
     ("kDLCPU", _lib.kDLCPU), ("kDLCUDA", _lib.kDLCUDA), ("kDLCUDAHost", _lib.kDLCUDAHost),
     ("kDLInt", _lib.kDLInt), ("kDLUInt", _lib.kDLUInt), ("kDLFloat", _lib.kDLFloat),
     ("kDLBfloat", _lib.kDLBfloat)]
    + [("CFLASH_OP_" + k.upper(), v) for k, v in _lib.OPS.items()])


def _c_layout(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to read include/cflash.h's layouts")
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "cflash.h"', "int main(void) {"]
    for key, (cls, cname) in STRUCTS.items():
        lines.append('printf("%s size %%zu\\n", sizeof(%s));' % (key, cname))
        for fname, _ in cls._fields_:
            lines.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));' % (key, fname, cname, fname))
    for name in ENUMS:
        lines.append('printf("%s %%d\\n", (int)%s);' % (name, name))
    lines += ["return 0;", "}"]
    src, exe = tmp_path / "abi.c", tmp_path / "abi"
    src.write_text("\n".join(lines))
    inc = ["-I" + os.path.join(ROOT, "include")]
    if os.path.isdir(os.path.join(ROOT, "third_party")):
        inc.append("-I" + os.path.join(ROOT, "third_party"))
    r = subprocess.run([cc, "-std=gnu11", *inc, str(src), "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines())


def test_ctypes_structs_and_enums_match_the_header(tmp_path):
    c = _c_layout(tmp_path)
    for key, (cls, cname) in STRUCTS.items():
        assert int(c[key + " size"]) == ctypes.sizeof(cls), "%s: sizeof %s in C, %d in ctypes" % (
            cname, c[key + " size"], ctypes.sizeof(cls))
        for fname, _ in cls._fields_:
            assert int(c["%s.%s" % (key, fname)]) == getattr(cls, fname).offset, "%s.%s offset" % (cname, fname)
    for name, value in ENUMS.items():
        assert int(c[name]) == value, "%s: %s in C, %d in the package" % (name, c[name], value)


def test_ctypes_prototypes_match_the_header():
    """Every function the package declares has, in the header, as many parameters as its argtypes."""
    import re

    text = open(os.path.join(ROOT, "include", "cflash.h")).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    protos = {m.group(1): m.group(2) for m in re.finditer(r"CFLASH_API[^;(]*?\b(cflash_\w+)\s*\(([^;]*?)\)\s*;", text, re.S)}
    checked = 0
    for name, params in protos.items():
        f = getattr(_lib.lib, name, None)
        if f is None or getattr(f, "argtypes", None) is None or "..." in params:
            continue
        n = 0 if params.strip() in ("", "void") else params.count(",") + 1
        assert n == len(f.argtypes), "%s: %d parameters in cflash.h, %d in the package" % (name, n, len(f.argtypes))
        checked += 1
    assert checked >= 15, "only %d prototypes found in the header" % checked
