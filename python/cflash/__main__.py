"""The `cflash` console script of the Python package, and `python -m cflash`:
    cflash report [--json]    what this machine can run, per op and backend, and why not
    cflash version            the package's and the loaded library's versions and paths
(`python -m cflash` alone prints the report.) The C tool of the same name (built by CMake, not in
the wheel) also has `check` and `bench`."""

import sys

USAGE = """usage: cflash report [--json]   what can run here (CPU features, CUDA driver / NVRTC, op x backend)
       cflash version           versions and where the library was loaded from
(`check` and `bench` are in the C tool: build with CMake, see the README)"""


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    cmd = args[0] if args and not args[0].startswith("-") else "report"
    rest = args[1:] if args and not args[0].startswith("-") else args
    if cmd in ("-h", "--help", "help") or "-h" in rest or "--help" in rest:
        print(USAGE)
        return 0
    import cflash

    if cmd == "report" and set(rest) <= {"--json"}:
        out = cflash.report(json="--json" in rest)
        if isinstance(out, dict):
            import json

            out = json.dumps(out, indent=1)
        print(out)
        return 0
    if cmd == "version" and not rest:
        print("cflash %s (Python package %s, library %s)" % (cflash.__version__, cflash.__file__, cflash.library_path))
        return 0
    print("cflash: unknown command or option %r\n%s" % (" ".join(args), USAGE), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
