"""Table of a block-shape sweep (bench/attn_blocks_sweep.sh output, JSON lines): per dtype, op and
mask, each blocks setting's GFLOP/s (wall and per CPU-second) and its ratio to the first setting
(today's default), so the per-family defaults in src/cpu/attn_blocks.c can be chosen.
Usage: python3 bench/attn_blocks_sweep.py sweep.jsonl [more.jsonl ...] (runs are pooled: median)."""
import json
import statistics
import sys


def main(paths):
    rows = {}
    order = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                if "blocks" not in r:
                    continue
                key = (r["dtype"], r["op"], "causal" if r["causal"] else "full")
                if r["blocks"] not in order:
                    order.append(r["blocks"])
                rows.setdefault(key, {}).setdefault(r["blocks"], []).append(r)
    for key in sorted(rows):
        print("%s %s %s" % key)
        print("  %-18s %10s %12s %8s  %s" % ("blocks", "GFLOP/s", "per CPU-s", "vs 1st", "backend"))
        base = None
        for b in order:
            runs = rows[key].get(b)
            if not runs:
                continue
            wall = statistics.median(r["gflops"] for r in runs)
            cpu = statistics.median(r["gflops_cpu"] for r in runs)
            base = base or cpu
            print("  %-18s %10.1f %12.1f %8.3f  %s" % (b, wall, cpu, cpu / base, runs[0]["backend"]))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
