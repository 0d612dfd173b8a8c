#!/usr/bin/env python3
"""Writes python/cflash/_abi.py, the Python package's ctypes mirror of include/cflash.h: every
struct as a ctypes.Structure with its _fields_, every enum value and integer #define as a
constant, every CFLASH_API function's restype and argtypes. The package reads layouts and
prototypes from that one file, so a field or function added to the header reaches Python by
running this, and the check below fails until someone does.

    python3 tools/gen_pybind.py            rewrite python/cflash/_abi.py from include/cflash.h
    python3 tools/gen_pybind.py --check    exit 1, saying what differs, when the file is stale
                                           (ctest: gen_pybind_check)
    --header H --output O                  other paths (the wheel build writes into its build dir)

Pure Python, no C parser: cflash.h is written in a regular style, which this reads strictly.
Outside comments and preprocessor lines the header may hold only `typedef struct N N;` (opaque),
`typedef struct N { fields } N;`, `typedef enum N { values } N;` and `CFLASH_API` function
declarations; anything else, or a type this does not know, stops it with the line and what to do.
DLPack's DLDevice, DLDataType and DLTensor are not in cflash.h: their stable ABI is written below
(DLPACK), and tests/python/test_abi.py checks them, like all the rest, against a C compiler."""

import argparse
import difflib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "include", "cflash.h")
OUTPUT = os.path.join(ROOT, "python", "cflash", "_abi.py")


class HeaderError(Exception):
    """A construct of the header this generator does not read; the message names the line."""


# ---- C types -> ctypes -------------------------------------------------------------------------

SCALARS = {
    "char": "_c.c_char", "signed char": "_c.c_byte", "unsigned char": "_c.c_ubyte",
    "short": "_c.c_short", "unsigned short": "_c.c_ushort",
    "int": "_c.c_int", "signed": "_c.c_int", "unsigned": "_c.c_uint", "unsigned int": "_c.c_uint",
    "long": "_c.c_long", "unsigned long": "_c.c_ulong",
    "long long": "_c.c_longlong", "unsigned long long": "_c.c_ulonglong",
    "float": "_c.c_float", "double": "_c.c_double", "_Bool": "_c.c_bool", "bool": "_c.c_bool",
    "size_t": "_c.c_size_t", "ptrdiff_t": "_c.c_ssize_t",
    "int8_t": "_c.c_int8", "uint8_t": "_c.c_uint8", "int16_t": "_c.c_int16", "uint16_t": "_c.c_uint16",
    "int32_t": "_c.c_int32", "uint32_t": "_c.c_uint32", "int64_t": "_c.c_int64", "uint64_t": "_c.c_uint64",
}
BASE_WORDS = {"void", "char", "short", "int", "long", "float", "double", "signed", "unsigned", "_Bool"}

# DLPack (dlpack.h, its stable ABI since 0.6): the structs cflash.h passes and the codes the
# package uses. Not parsed from dlpack.h, whose layout cflash does not control.
DLPACK_STRUCTS = ["DLDevice", "DLDataType", "DLTensor"]
DLPACK = '''# ---- DLPack (dlpack.h): its stable ABI, written in tools/gen_pybind.py ----

kDLCPU = 1
kDLCUDA = 2
kDLCUDAHost = 3
kDLInt = 0
kDLUInt = 1
kDLFloat = 2
kDLBfloat = 4


class DLDevice(_c.Structure):
    _fields_ = [
        ("device_type", _c.c_int32),
        ("device_id", _c.c_int32),
    ]


class DLDataType(_c.Structure):
    _fields_ = [
        ("code", _c.c_uint8),
        ("bits", _c.c_uint8),
        ("lanes", _c.c_uint16),
    ]


class DLTensor(_c.Structure):
    _fields_ = [
        ("data", _c.c_void_p),
        ("device", DLDevice),
        ("ndim", _c.c_int32),
        ("dtype", DLDataType),
        ("shape", _c.POINTER(_c.c_int64)),
        ("strides", _c.POINTER(_c.c_int64)),
        ("byte_offset", _c.c_uint64),
    ]
'''


class CType:
    """A parsed C type: its spelling in C (`c`) and the ctypes expression that mirrors it (`py`)."""

    def __init__(self, c, py):
        self.c, self.py = c, py

    def __repr__(self):
        return "CType(%r, %r)" % (self.c, self.py)


class Model:
    """What the header declares, in header order."""

    def __init__(self):
        self.defines = []  # (name, int)
        self.opaque = []  # struct names used only through pointers
        self.structs = []  # (name, [(field, CType)])
        self.enums = []  # (name, [(enumerator, int)])
        self.functions = []  # (name, CType result, [(param name or None, CType)], variadic)


def _ctype(model, const, base, stars, where, role):
    """The CType of `const base **...` used as `role` (param, result, field)."""
    c = ("const " if const else "") + base + "*" * stars
    enums = {n for n, _ in model.enums}
    structs = {n for n, _ in model.structs} | set(DLPACK_STRUCTS)
    opaque = set(model.opaque)
    if base in enums:
        py = "_c.c_int"  # C enums are ints (_enum checks that the values fit)
    elif base in structs:
        py = base
    elif base in opaque:
        if stars == 0:
            raise HeaderError("%s: opaque struct %s used by value" % (where, base))
        py, stars = "_c.c_void_p", stars - 1  # a handle: only its address crosses
    elif base in SCALARS:
        py = SCALARS[base]
    elif base == "void":
        if stars == 0:
            if role != "result":
                raise HeaderError("%s: void used as a %s type" % (where, role))
            return CType(c, "None")
        py, stars = "_c.c_void_p", stars - 1
    else:
        raise HeaderError("%s: unknown type '%s' (define it in cflash.h before use, or add it to SCALARS "
                          "in tools/gen_pybind.py)" % (where, base))
    if base == "char" and stars == 1:
        # const char* in: bytes or None; out: bytes. A char* parameter is a buffer the library
        # writes (ctypes.create_string_buffer), which c_char_p would not accept as writable.
        return CType(c, "_c.c_char_p" if const or role == "result" else "_c.POINTER(_c.c_char)")
    for _ in range(stars):
        py = "_c.POINTER(%s)" % py
    return CType(c, py)


# ---- Reading the header ------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:([A-Za-z_]\w*)|(0[xX][0-9a-fA-F]+|\d+)[uUlL]*|(\.\.\.|\S))")


def _strip(text):
    """Comments blanked (newlines kept, for line numbers), then preprocessor lines read: integer
    #defines kept, the extern "C" guard's block dropped, anything else conditional refused when it
    holds declarations. Returns (code with directives blanked, [(name, value)])."""
    text = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = text.split("\n")
    defines, out, stack, i = [], [], [], 0  # stack: "skip" (__cplusplus), "keep", "directives only"
    while i < len(lines):
        line, n = lines[i], i + 1
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
            out.append("")
        s = line.strip()
        i += 1
        if not s.startswith("#"):
            if s and "skip" in stack:
                out.append("")
            elif s and "directives only" in stack:
                raise HeaderError("cflash.h:%d: declarations inside #if/#ifdef (only the include guard "
                                  "and the __cplusplus block are read)" % n)
            else:
                out.append(line)
            continue
        out.append("")
        d = s[1:].split()
        if not d:
            continue
        if d[0] == "ifdef" and d[1:2] == ["__cplusplus"]:
            stack.append("skip")
        elif d[0] == "ifndef" and not stack and not defines and len(d) == 2:
            stack.append("keep")  # the include guard
        elif d[0] in ("if", "ifdef", "ifndef"):
            stack.append("directives only")
        elif d[0] in ("elif", "else"):
            if stack and stack[-1] == "skip":
                raise HeaderError("cflash.h:%d: #%s of the __cplusplus block" % (n, d[0]))
        elif d[0] == "endif":
            if not stack:
                raise HeaderError("cflash.h:%d: #endif without #if" % n)
            stack.pop()
        elif d[0] == "define" and "skip" not in stack and "directives only" not in stack:
            m = re.match(r"#\s*define\s+([A-Za-z_]\w*)\s+\(?\s*(-?(?:0[xX][0-9a-fA-F]+|\d+))[uUlL]*\s*\)?\s*$", s)
            if m:
                v = m.group(2)
                defines.append((m.group(1), -_int(v[1:]) if v[0] == "-" else _int(v)))
    return "\n".join(out), defines


def _tokens(code):
    toks, line, pos = [], 1, 0
    while pos < len(code):
        m = _TOKEN.match(code, pos)
        if not m or m.end() == pos:
            break
        line += code.count("\n", pos, m.end())
        pos = m.end()
        toks.append((next(g for g in m.groups() if g), line))
    return toks


def _statements(toks):
    """Top-level declarations: token lists ending at a ';' outside braces."""
    stmts, cur, depth = [], [], 0
    for tok in toks:
        cur.append(tok)
        if tok[0] == "{":
            depth += 1
        elif tok[0] == "}":
            depth -= 1
        elif tok[0] == ";" and depth == 0:
            stmts.append(cur)
            cur = []
    if cur:
        raise HeaderError("cflash.h:%d: declaration without its ';'" % cur[0][1])
    return stmts


def _int(v):
    """An integer literal of C (decimal, hex, octal), its suffix already dropped by the tokenizer."""
    return int(v, 16) if v[:2] in ("0x", "0X") else int(v, 8) if len(v) > 1 and v[0] == "0" else int(v)


def _decl(toks, where, allow_no_name=False):
    """`[const] base [*...] [name] [[N]]` -> (const, base, stars, name, array length or None, the
    number of tokens of the specifiers `[const] base`)."""
    words = [t for t, _ in toks]
    const, base, i = False, [], 0
    while i < len(words):  # qualifiers, then one type name or a run of C's base words
        w = words[i]
        if w in ("struct", "enum", "union"):
            raise HeaderError("%s: write the typedef name, not '%s NAME'" % (where, w))
        if w in ("const", "volatile"):
            const |= w == "const"
        elif w in BASE_WORDS and all(b in BASE_WORDS for b in base):
            base.append(w)
        elif re.match(r"[A-Za-z_]\w*$", w) and not base:
            base.append(w)
        else:
            break
        i += 1
    nspec, stars = i, 0
    while i < len(words) and words[i] in ("*", "const"):  # `* const` is a top-level qualifier
        stars += words[i] == "*"
        i += 1
    name = None
    if i < len(words) and re.match(r"[A-Za-z_]\w*$", words[i]):
        name, i = words[i], i + 1
    array = None
    if words[i:i + 1] == ["["]:
        if words[i + 2:i + 3] != ["]"] or not words[i + 1].isdigit():
            raise HeaderError("%s: an array length must be an integer literal" % where)
        array, i = _int(words[i + 1]), i + 3
    if i != len(words) or not base or (name is None and not allow_no_name):
        raise HeaderError("%s: cannot read the declaration '%s' (function pointers, bit-fields and "
                          "nested types are not supported)" % (where, " ".join(words)))
    base = {"signed": "int", "signed int": "int", "long int": "long", "short int": "short"}.get(" ".join(base),
                                                                                             " ".join(base))
    return const, base, stars, name, array, nspec


def _split(toks, sep=","):
    parts, cur, depth = [], [], 0
    for tok in toks:
        if tok[0] in "([":
            depth += 1
        elif tok[0] in ")]":
            depth -= 1
        if tok[0] == sep and depth == 0:
            parts.append(cur)
            cur = []
        else:
            cur.append(tok)
    parts.append(cur)
    return parts


def _struct(model, name, body, line):
    fields = []
    for stmt in _statements(body):
        where = "cflash.h:%d: struct %s" % (stmt[0][1], name)
        first, *more = _split(stmt[:-1])
        const, base, stars, fname, array, nspec = _decl(first, where)
        items = [(stars, fname, array)]
        for d in more:  # `int64_t a, *b;`: the specifiers once, each declarator with its own stars
            items.append(_decl(first[:nspec] + d, where)[2:5])
        for s, n, a in items:
            t = _ctype(model, const, base, s, "%s.%s" % (where, n), "field")
            if a is not None:
                t = CType("%s[%d]" % (t.c, a), "%s * %d" % (t.py, a))
            fields.append((n, t))
    if not fields:
        raise HeaderError("cflash.h:%d: struct %s has no fields" % (line, name))
    model.structs.append((name, fields))


def _enum(model, name, body, line):
    values, nxt, known = [], 0, {}
    for item in _split(body):
        if not item:
            continue  # a trailing comma
        words = [t for t, _ in item]
        where = "cflash.h:%d: enum %s" % (item[0][1], name)
        if not re.match(r"[A-Za-z_]\w*$", words[0]) or (len(words) > 1 and words[1] != "="):
            raise HeaderError("%s: cannot read '%s'" % (where, " ".join(words)))
        if len(words) > 1:  # NAME = [+-] (integer | earlier NAME)
            expr, sign = words[2:], 1
            if expr[:1] in (["-"], ["+"]):
                sign, expr = (-1 if expr[0] == "-" else 1), expr[1:]
            if len(expr) != 1 or not (expr[0] in known or expr[0][0].isdigit()):
                raise HeaderError("%s: %s's value must be an integer or an earlier value of the enum, got '%s'"
                                  % (where, words[0], " ".join(words[2:])))
            nxt = sign * (known[expr[0]] if expr[0] in known else _int(expr[0]))
        if not -2**31 <= nxt < 2**31:
            raise HeaderError("%s: %s = %d does not fit an int" % (where, words[0], nxt))
        values.append((words[0], nxt))
        known[words[0]] = nxt
        nxt += 1
    model.enums.append((name, values))


def _function(model, stmt):
    line = stmt[0][1]
    where = "cflash.h:%d" % line
    words = [t for t, _ in stmt]
    if "(" not in words or words[-2] != ")":
        raise HeaderError("%s: cannot read the function declaration '%s'" % (where, " ".join(words)))
    lp = words.index("(")
    const, base, stars, name, array, _ = _decl(stmt[1:lp], where)
    if array is not None:
        raise HeaderError("%s: %s returns an array" % (where, name))
    result = _ctype(model, const, base, stars, "%s: %s" % (where, name), "result")
    params, variadic = [], False
    plist = stmt[lp + 1:-2]
    if [t for t, _ in plist] not in ([], ["void"]):
        for p in _split(plist):
            if [t for t, _ in p] == ["..."]:
                variadic = True
                continue
            pwhere = "%s: %s, parameter %d" % (where, name, len(params) + 1)
            pc, pb, ps, pn, pa, _ = _decl(p, pwhere, allow_no_name=True)
            if pa is not None:
                ps += 1  # an array parameter is a pointer
            params.append((pn, _ctype(model, pc, pb, ps, pwhere, "param")))
    model.functions.append((name, result, params, variadic))


def parse(text):
    """The Model of a header's text; HeaderError names the first line it cannot read."""
    model = Model()
    code, model.defines = _strip(text)
    for stmt in _statements(_tokens(code)):
        words = [t for t, _ in stmt]
        line = stmt[0][1]
        if words[:2] == ["extern", "C"]:
            raise HeaderError("cflash.h:%d: extern outside the __cplusplus block" % line)
        if words[0] == "CFLASH_API":
            _function(model, stmt)
        elif words[0] == "typedef" and len(words) == 5 and words[1] == "struct" and words[2] == words[3]:
            model.opaque.append(words[2])
        elif (words[0] == "typedef" and words[1] in ("struct", "enum") and len(words) >= 7 and words[3] == "{"
              and words[-3] == "}" and words[-2] == words[2]):
            body = stmt[4:-3]
            (_struct if words[1] == "struct" else _enum)(model, words[2], body, line)
        else:
            raise HeaderError("cflash.h:%d: cannot read '%s' (expected a typedef struct/enum N { ... } N, "
                              "typedef struct N N, or a CFLASH_API function)" % (line, " ".join(words[:12])))
    return model


# ---- Writing _abi.py ---------------------------------------------------------------------------

def render(model, header_name="include/cflash.h"):
    out = ['"""ctypes mirror of %s, written by tools/gen_pybind.py: do not edit. After changing the header, run'
           % header_name,
           "`python3 tools/gen_pybind.py` (ctest's gen_pybind_check fails while this file is stale); the wheel",
           'build writes it afresh from the header it builds."""',
           "",
           "import ctypes as _c",
           "",
           DLPACK]
    if model.defines:
        out += ["# ---- Integer #defines ----", ""]
        out += ["%s = %d" % d for d in model.defines]
        out.append("")
    out += ["# ---- Enums: each value, and ENUMS[enum name] = {value name: value} ----", ""]
    for name, values in model.enums:
        out.append("# %s" % name)
        out += ["%s = %d" % v for v in values]
        out.append("")
    out.append("ENUMS = {")
    for name, values in model.enums:
        out += ['    "%s": {' % name] + ['        "%s": %s,' % (v, v) for v, _ in values] + ["    },"]
    out += ["}", "", "", "# ---- Structs ----"]
    for name, fields in model.structs:
        out += ["", "", "class %s(_c.Structure):" % name, "    _fields_ = ["]
        out += ['        ("%s", %s),  # %s' % (f, t.py, t.c) for f, t in fields]
        out.append("    ]")
    out += ["", "", "# ---- Functions: name -> (restype, argtypes); argtypes None for a variadic one ----", "",
            "FUNCTIONS = {"]
    for name, result, params, variadic in model.functions:
        if variadic or not params:
            out.append('    "%s": (%s, %s),  # %s' % (name, result.py, "None" if variadic else "[]", result.c))
            continue
        out.append('    "%s": (%s, [  # %s' % (name, result.py, result.c))
        out += ["        %s,  # %s%s" % (t.py, t.c, " " + n if n else "") for n, t in params]
        out.append("    ]),")
    out += ["}", ""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--header", default=HEADER)
    ap.add_argument("--output", default=OUTPUT)
    ap.add_argument("--check", action="store_true", help="exit 1 when --output differs from what the header gives")
    a = ap.parse_args(argv)
    with open(a.header, encoding="utf-8") as f:
        text = f.read()
    try:
        new = render(parse(text))
    except HeaderError as e:
        print("gen_pybind: %s: %s" % (a.header, e), file=sys.stderr)
        return 2
    old = None
    if os.path.exists(a.output):
        with open(a.output, encoding="utf-8") as f:
            old = f.read()
    if a.check:
        if old == new:
            print("gen_pybind: %s is up to date with %s" % (a.output, a.header))
            return 0
        diff = difflib.unified_diff((old or "").splitlines(), new.splitlines(), a.output, "from " + a.header,
                                    lineterm="", n=1)
        print("gen_pybind: %s is stale; run python3 tools/gen_pybind.py\n%s" % (a.output, "\n".join(list(diff)[:60])),
              file=sys.stderr)
        return 1
    if old != new:
        os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
