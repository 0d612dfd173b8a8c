"""`python -m cflash [--json]`: the library's report (what can run here, and why not)."""

import sys

from . import report

if __name__ == "__main__":
    print(report(json="--json" in sys.argv[1:]))
