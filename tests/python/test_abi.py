"""The package's ctypes mirror of include/cflash.h (python/cflash/_abi.py, made by
tools/gen_pybind.py) against the header itself, through a C compiler: every struct's size and
field offsets, every enum value and #define, and every function's prototype: the parameter types
the generator read must be exactly the header's (a compile-time check of the function's type),
and each ctypes argtype / restype has the size of its C type. A field or
function added to the header without regenerating fails gen_pybind_check (ctest); one the
generator misreads fails here. Skipped (saying so) without a C compiler."""

import ctypes
import importlib.util
import os
import shutil
import subprocess

import pytest

from cflash import _abi, _lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = os.path.join(ROOT, "include", "cflash.h")


def _gen():
    spec = importlib.util.spec_from_file_location("gen_pybind", os.path.join(ROOT, "tools", "gen_pybind.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _structs():
    return {n: v for n, v in vars(_abi).items() if isinstance(v, type) and issubclass(v, ctypes.Structure)}


def _values():
    """Every integer constant of _abi: enum values, #defines and the DLPack codes."""
    return {n: v for n, v in vars(_abi).items() if not n.startswith("_") and type(v) is int}


def _compile_and_run(tmp_path, body, decls=()):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to read include/cflash.h's layouts")
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "cflash.h"', *decls, "int main(void) {", *body,
             "return 0;", "}"]
    src, exe = tmp_path / "abi.c", tmp_path / "abi"
    src.write_text("\n".join(lines))
    inc = ["-I" + os.path.join(ROOT, "include")]
    if os.path.isdir(os.path.join(ROOT, "third_party")):
        inc.append("-I" + os.path.join(ROOT, "third_party"))
    r = subprocess.run([cc, "-std=gnu11", "-Wall", "-Werror", *inc, str(src), "-o", str(exe)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines())


def test_structs_and_values_match_the_header(tmp_path):
    structs, values = _structs(), _values()
    assert {"DLTensor", "cflash_attn_params", "cflash_kvcache_params"} <= set(structs)
    assert {"CFLASH_OK", "CFLASH_NORM_LAYER", "CFLASH_OP_NORM_BWD", "kDLBfloat", "CFLASH_VERSION_MINOR"} <= set(values)
    body = []
    for name, cls in structs.items():
        body.append('printf("%s %%zu\\n", sizeof(%s));' % (name, name))
        body += ['printf("%s.%s %%zu\\n", offsetof(%s, %s));' % (name, f, name, f) for f, _ in cls._fields_]
    body += ['printf("%s %%lld\\n", (long long)%s);' % (n, n) for n in values]
    c = _compile_and_run(tmp_path, body)
    for name, cls in structs.items():
        assert int(c[name]) == ctypes.sizeof(cls), "%s: sizeof %s in C, %d in ctypes" % (name, c[name],
                                                                                        ctypes.sizeof(cls))
        for f, _ in cls._fields_:
            assert int(c["%s.%s" % (name, f)]) == getattr(cls, f).offset, "%s.%s offset" % (name, f)
    for name, value in values.items():
        assert int(c[name]) == value, "%s: %s in C, %d in _abi" % (name, c[name], value)


def test_prototypes_match_the_header(tmp_path):
    model = _gen().parse(open(HEADER, encoding="utf-8").read())
    assert [f[0] for f in model.functions] == list(_abi.FUNCTIONS), "_abi.py is stale: run tools/gen_pybind.py"
    decls, body = [], []
    for name, result, params, variadic in model.functions:
        plist = ", ".join([t.c for _, t in params] + (["..."] if variadic else [])) or "void"
        decls.append('_Static_assert(__builtin_types_compatible_p(__typeof__(%s), %s(%s)), "%s: the generator '
                     'read other types");' % (name, result.c, plist, name))
        for j, (_, t) in enumerate([(None, result)] + params):
            if t.c != "void":
                body.append('printf("%s.%d %%zu\\n", sizeof(%s));' % (name, j, t.c))
    c = _compile_and_run(tmp_path, body, decls)
    for name, result, params, variadic in model.functions:
        restype, argtypes = _abi.FUNCTIONS[name]
        assert (argtypes is None) == variadic, name
        ctypes_list = [restype] + (argtypes or [])
        assert len(ctypes_list) == 1 + len(params) or variadic, "%s: %d parameters in C" % (name, len(params))
        for j, t in enumerate(ctypes_list):
            if t is None:
                assert j == 0 and result.c == "void", name
                continue
            assert ctypes.sizeof(t) == int(c["%s.%d" % (name, j)]), "%s: %s of %d bytes for C %s" % (
                name, t.__name__, ctypes.sizeof(t), ([result] + [p for _, p in params])[j].c)
            pointee = getattr(t, "_type_", None)  # a POINTER(struct) names the struct's mirror
            if isinstance(pointee, type) and issubclass(pointee, ctypes.Structure):
                assert pointee.__name__ in ([result] + [p for _, p in params])[j].c, name


def test_the_package_binds_every_prototype():
    for name, (restype, argtypes) in _abi.FUNCTIONS.items():
        f = getattr(_lib.lib, name)
        assert f.restype is restype, name
        if argtypes is not None:
            assert list(f.argtypes) == argtypes, name
    assert _lib.AttnParams is _abi.cflash_attn_params and _lib.OPS["norm_bwd"] == _abi.CFLASH_OP_NORM_BWD
