#!/usr/bin/env python3
"""The layer rules of docs/ARCHITECTURE.md, checked over the #include lines of the tree: every
quoted include of every C/CUDA source and header is resolved to the layer it belongs to, and a
file may include only the layers its own layer is allowed. Prints each violation with file, line
and the layers allowed, and exits 1 when there is any.

usage: include_rules.py [ROOT]     (ROOT: the source tree, default: two folders up from here)
       include_rules.py --self-test  (the checker on a made-up tree with known violations)
"""
import os
import re
import sys
import tempfile

# Who may include whom. "public" is include/ (cflash.h, cflash_experimental.h).
ALLOWED = {
    "public": {"public"},
    "core": {"core", "public"},
    "probe": {"probe", "core", "public"},
    "cpu": {"cpu", "probe", "core", "public"},
    "cuda": {"cuda", "probe", "core", "public"},
    "dispatch": {"dispatch", "core", "public"},
    "api": {"api", "dispatch", "probe", "core", "public"},
    "oracle": {"oracle", "public"},
    "tool": {"tool", "oracle", "public"},
}
# Folders (relative to ROOT) and the layer of the files below them; the longest match wins.
# tests/ is absent: a test may include anything.
FOLDERS = {
    "include": "public",
    "src/core": "core",
    "src/probe": "probe",
    "src/cpu": "cpu",
    "src/cuda": "cuda",
    "src/dispatch": "dispatch",
    "src/api": "api",
    "tools/oracle": "oracle",
    "tools": "tool",
}
# The first component of a quoted include path ("core/tensor.h") and the layer it names.
PREFIXES = {
    "core": "core",
    "probe": "probe",
    "cpu": "cpu",
    "cuda": "cuda",
    "dispatch": "dispatch",
    "api": "api",
    "oracle": "oracle",
    "common": "tests",
}
PUBLIC_HEADERS = {"cflash.h", "cflash_experimental.h"}
SOURCE_EXT = (".c", ".h", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def layer_of_file(rel):
    best = None
    for folder, layer in FOLDERS.items():
        if rel == folder or rel.startswith(folder + "/"):
            if best is None or len(folder) > len(best[0]):
                best = (folder, layer)
    return best[1] if best else None


def layer_of_include(path, including_dir, root):
    if path in PUBLIC_HEADERS:
        return "public"
    if "/" not in path:  # beside the including file ("cli.h", "cf_common.cuh")
        if os.path.isfile(os.path.join(including_dir, path)):
            return layer_of_file(os.path.relpath(os.path.join(including_dir, path), root))
        return None
    return PREFIXES.get(path.split("/", 1)[0])


def check(root):
    violations = []
    for top in ("include", "src", "tools"):
        for d, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith(SOURCE_EXT):
                    continue
                full = os.path.join(d, name)
                rel = os.path.relpath(full, root)
                layer = layer_of_file(rel)
                if layer is None:
                    violations.append("%s: in no layer of docs/ARCHITECTURE.md" % rel)
                    continue
                with open(full, encoding="utf-8", errors="replace") as f:
                    for n, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        target = layer_of_include(m.group(1), d, root)
                        if target is None:
                            violations.append('%s:%d: "%s" belongs to no layer' % (rel, n, m.group(1)))
                        elif target not in ALLOWED[layer]:
                            violations.append('%s:%d: %s includes "%s" (%s); %s may include: %s' % (
                                rel, n, layer, m.group(1), target, layer, ", ".join(sorted(ALLOWED[layer]))))
    return violations


# A made-up tree: each file and whether its includes break the rules.
SELF_TEST = {
    "src/core/bad_core.c": ('#include "cuda/cuda_drv.h"\n', True),      # core knows no backend
    "src/dispatch/bad_dispatch.c": ('#include "cpu/attn_cpu.h"\n', True),  # nor does dispatch
    "src/api/bad_api.c": ('#include "cuda/kcache.h"\n', True),           # nor does the front door
    "src/cpu/bad_cpu.c": ('#include "dispatch/dispatch.h"\n', True),     # backends: no dispatcher
    "src/probe/bad_probe.c": ('#include "cuda/cuda_drv.h"\n', True),     # probe is below backends
    "tools/bad_tool.c": ('#include "core/tensor.h"\n', True),            # tools: public headers
    "tools/oracle/bad_oracle.c": ('#include "common/testutil.h"\n', True),  # no tests/ code
    "include/bad_public.h": ('#include "core/status.h"\n', True),
    "src/cpu/good_cpu.c": ('#include "core/backend.h"\n#include "probe/cpu_features.h"\n', False),
    "src/api/good_api.c": ('#include "dispatch/dispatch.h"\n#include "cflash.h"\n', False),
    "tools/good_tool.c": ('#include "cflash_experimental.h"\n#include "oracle/x.h"\n', False),
}


def self_test():
    with tempfile.TemporaryDirectory() as root:
        for rel, (text, _) in SELF_TEST.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write("/* made up by include_rules.py --self-test */\n" + text)
        found = check(root)
    failed = 0
    for rel, (_, bad) in sorted(SELF_TEST.items()):
        hit = any(v.startswith(rel + ":") for v in found)
        ok = hit == bad
        failed += not ok
        print("%s %s: %s" % ("ok  " if ok else "FAIL", rel, "reported" if hit else "not reported"))
    print("include rules self-test: %s" % ("FAILED" if failed else "every violation reported, no false alarm"))
    return 1 if failed else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", ".."))
    if not os.path.isdir(os.path.join(root, "src")):
        print("include_rules: %s has no src/" % root)
        return 2
    violations = check(root)
    for v in violations:
        print("FAIL " + v)
    print("include rules: %d violation(s)" % len(violations) if violations else "include rules: every #include keeps the layers")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
