"""tools/gen_pybind.py on made-up headers: every kind of declaration cflash.h may grow (DLTensor
pointers, int64 and unsigned fields, enums as fields and values, arrays, nested structs, several
declarators in one line, char buffers, opaque handles, variadic functions) comes out as ctypes
whose layout a C compiler confirms, and what the generator cannot read stops it with the line.
The real header is checked by test_abi.py and by ctest's gen_pybind_check."""

import ctypes
import importlib.util
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gen():
    spec = importlib.util.spec_from_file_location("gen_pybind", os.path.join(ROOT, "tools", "gen_pybind.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _gen()

HEADER = r"""/* A made-up public header in cflash.h's style. */
#ifndef T_H
#define T_H

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#if defined(__GNUC__)
#define CFLASH_API __attribute__((visibility("default")))
#else
#define CFLASH_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define T_ANSWER 42
#define T_NEG (-7)
#define T_EXPR (T_ANSWER * 2) /* not a literal: left out */

typedef enum t_mode { T_A = 0, T_B = -3, T_C, T_D = T_A, T_E = 0x10, } t_mode;

typedef struct t_handle t_handle; /* opaque */

typedef struct t_inner {
    int8_t a;
    double b;
} t_inner;

typedef struct t_params {
    const DLTensor* tensor;     /* a DLTensor pointer field */
    int64_t a, *pa, b;          /* several declarators */
    t_mode mode;                /* an enum field */
    uint8_t flags[3];
    t_inner inner;              /* a struct by value */
    const char* name;
    float f;
    uint16_t u16;
    void* raw;
    size_t n;
    unsigned long long ull;
    unsigned u;
    DLTensor by_value;
} t_params;

CFLASH_API t_mode t_get(t_handle* h, const t_params* p, int64_t n, char* buf, size_t len);
CFLASH_API void t_void(void);
CFLASH_API int t_var(const char* fmt, ...);
CFLASH_API const char* t_name(t_handle** out, t_mode m, const uint64_t x[4]);
CFLASH_API uint32_t t_unnamed(int, const t_params*);

#ifdef __cplusplus
}
#endif

#endif
"""


def _module(text):
    ns = {}
    exec(compile(gen.render(gen.parse(text), "t.h"), "t_abi.py", "exec"), ns)
    return ns


def _compile_and_run(tmp_path, header, body):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to check the layouts")
    (tmp_path / "t.h").write_text(header)
    src = tmp_path / "t.c"
    src.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "t.h"\nint main(void) {\n%s\nreturn 0;\n}\n'
                   % "\n".join(body))
    inc = ["-I" + str(tmp_path)]
    if os.path.isdir(os.path.join(ROOT, "third_party")):
        inc.append("-I" + os.path.join(ROOT, "third_party"))
    exe = tmp_path / "t"
    r = subprocess.run([cc, "-std=gnu11", "-Wall", "-Werror", *inc, str(src), "-o", str(exe)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines())


def test_layouts_values_and_prototypes_of_a_made_up_header(tmp_path):
    m = _module(HEADER)
    body = []
    for cname in ("t_inner", "t_params"):
        body.append('printf("%s %%zu\\n", sizeof(%s));' % (cname, cname))
        for f, _ in m[cname]._fields_:
            body.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));' % (cname, f, cname, f))
    for name in ("T_A", "T_B", "T_C", "T_D", "T_E", "T_ANSWER", "T_NEG"):
        body.append('printf("%s %%lld\\n", (long long)%s);' % (name, name))
    c = _compile_and_run(tmp_path, HEADER, body)
    for cname in ("t_inner", "t_params"):
        cls = m[cname]
        assert int(c[cname]) == ctypes.sizeof(cls), cname
        for f, _ in cls._fields_:
            assert int(c["%s.%s" % (cname, f)]) == getattr(cls, f).offset, "%s.%s" % (cname, f)
    for name in ("T_A", "T_B", "T_C", "T_D", "T_E", "T_ANSWER", "T_NEG"):
        assert int(c[name]) == m[name], name
    assert "T_EXPR" not in m
    assert m["ENUMS"]["t_mode"] == {"T_A": 0, "T_B": -3, "T_C": -2, "T_D": 0, "T_E": 16}

    P = ctypes.POINTER
    fields = dict(m["t_params"]._fields_)
    assert fields["tensor"] is not None and fields["tensor"]._type_ is m["DLTensor"]
    assert fields["pa"]._type_ is ctypes.c_int64 and fields["mode"] is ctypes.c_int
    assert fields["by_value"] is m["DLTensor"] and fields["inner"] is m["t_inner"]
    F = m["FUNCTIONS"]
    restype, argtypes = F["t_get"]
    assert restype is ctypes.c_int
    assert [a if a in (ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t) else a._type_ for a in argtypes] == [
        ctypes.c_void_p, m["t_params"], ctypes.c_int64, ctypes.c_char, ctypes.c_size_t]
    assert F["t_void"] == (None, [])
    assert F["t_var"] == (ctypes.c_int, None)  # variadic: no argtypes
    restype, argtypes = F["t_name"]
    assert restype is ctypes.c_char_p and argtypes[0]._type_ is ctypes.c_void_p and argtypes[1] is ctypes.c_int
    assert argtypes[2]._type_ is ctypes.c_uint64  # an array parameter is a pointer
    assert F["t_unnamed"] == (ctypes.c_uint32, [ctypes.c_int, P(m["t_params"])])


@pytest.mark.parametrize("bad, says", [
    ("typedef struct t_s { mystery_t x; } t_s;", "cflash.h:2: struct t_s.x: unknown type 'mystery_t'"),
    ("typedef struct t_s { int (*fn)(int); } t_s;", "function pointers"),
    ("typedef struct t_s { int x : 3; } t_s;", "bit-fields"),
    ("typedef struct t_s { struct t_i* x; } t_s;", "write the typedef name"),
    ("typedef enum t_e { T_X = 1 << 2 } t_e;", "T_X's value must be an integer"),
    ("CFLASH_API int t_f(t_h h);", "unknown type 't_h'"),
    ("typedef struct t_h t_h;\nCFLASH_API int t_f(t_h h);", "opaque struct t_h used by value"),
    ("int t_g(void);", "cflash.h:2: cannot read 'int t_g ( void )"),
    ("#ifdef T_FEATURE\nCFLASH_API int t_f(void);\n#endif", "declarations inside #if"),
])
def test_what_it_cannot_read_stops_it_with_the_line(bad, says):
    with pytest.raises(gen.HeaderError) as e:
        gen.parse("/* t */\n" + bad + "\n")
    assert says in str(e.value), str(e.value)


def test_check_mode_fails_on_a_stale_file(tmp_path):
    h, out = tmp_path / "t.h", tmp_path / "t_abi.py"
    h.write_text(HEADER)
    assert gen.main(["--header", str(h), "--output", str(out)]) == 0
    assert gen.main(["--header", str(h), "--output", str(out), "--check"]) == 0
    h.write_text(HEADER.replace("    unsigned u;\n", "    unsigned u;\n    int64_t added;\n"))
    assert gen.main(["--header", str(h), "--output", str(out), "--check"]) == 1
    assert "added" not in out.read_text()  # --check never writes
    assert gen.main(["--header", str(h), "--output", str(out)]) == 0 and '("added", _c.c_int64)' in out.read_text()
