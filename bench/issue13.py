#!/usr/bin/env python3
"""Issue 13's figures in one run: what each attention feature costs against the plain kernel, how
much masked-block skipping saves, MLA shapes against D = 128, and quantized-cache decode against
bf16. Each comparison alternates its two calls round after round (so both see the same load) and
compares medians; the figures go to docs/PERF.md with the CPU they ran on.

    python3 bench/issue13.py [--build build] [--rounds 3] [--only cost,skip,mla,decode] [--huge-pages]

cost:   B1 H16 S4096 D128 bf16, forward and backward: plain vs sinks, bias, dbias, a boolean mask
        keeping every tile, block-sparse lists keeping every block, chunks of S (nothing masked,
        the chunk test still made), ALiBi and softcap for scale. Ratio = time / plain time (> 1 is
        a cost).
skip:   B1 H16 S8192 D128 bf16: dense vs 10 % of the (query block, key block) pairs visible
        (block-sparse lists, a boolean mask of whole tiles, a causal window of S / 10 keys):
        speed-up = dense time / sparse time (target >= 5).
mla:    B1 H16 Hk1 S4096 bf16: D 576 / Dv 512 against D 128, as FLOP rates (target: MLA >= 0.8).
decode: B1 H32 Hk8 D128 Sq1 Sk131072: bf16 cache vs fp8 e4m3 / e5m2 / int8 caches (target:
        >= 1.8x the bf16 speed); --huge-pages: every cache on 2 MB pages (README, "Ops")."""
import argparse
import json
import statistics
import subprocess
import sys


def bench(build, args):
    out = subprocess.run([build + "/cflash", "bench"] + args + ["--json"], check=True, capture_output=True,
                         text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def compare(build, rounds, base, other):
    """Median ms per op (attn_fwd, attn_bwd, ...) of base and other, alternated."""
    times = {}
    for _ in range(rounds):
        for tag, args in (("a", base), ("b", other)):
            for r in bench(build, args):
                times.setdefault((tag, r["op"]), []).append(r)
    res = {}
    for (tag, op), rs in times.items():
        res.setdefault(op, {})[tag] = (statistics.median(r["ms"] for r in rs),
                                       statistics.median(r.get("gflops", 0.0) for r in rs), rs[0]["backend"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="cost,skip,mla,decode")
    ap.add_argument("--huge-pages", action="store_true", help="decode: the caches on 2 MB pages")
    a = ap.parse_args()
    only = set(a.only.split(","))
    common = ["--batch", "1", "--heads", "16", "--dtype", "bf16", "--warmup", "1", "--reps", "3"]
    ok = True
    if "cost" in only:
        shape = common + ["--seqlen", "4096", "--head-dim", "128", "--bwd"]
        print("# feature cost, B1 H16 S4096 D128 bf16 (time / plain time)")
        for name, extra in (("sinks", ["--sinks"]), ("bias fp32", ["--bias"]), ("bias + dbias", ["--dbias"]),
                            ("bool mask, all tiles", ["--mask", "1"]),
                            ("block-sparse, all blocks", ["--block-sparse", "1"]),
                            ("chunk = S", ["--chunk", "4096"]), ("alibi", ["--alibi"]),
                            ("softcap 30", ["--softcap", "30"])):
            res = compare(a.build, a.rounds, shape, shape + extra)
            cols = ["%s %.1f -> %.1f ms (%.2fx)" % (op[5:], r["a"][0], r["b"][0], r["b"][0] / r["a"][0])
                    for op, r in sorted(res.items(), key=lambda kv: kv[0] != "attn_fwd")]
            print("%-26s %s  [%s]" % (name, "; ".join(cols), res["attn_fwd"]["b"][2]))
    if "skip" in only:
        shape = common + ["--seqlen", "8192", "--head-dim", "128", "--bwd"]
        print("# masked-block skipping, B1 H16 S8192 D128 bf16, 10 % visible (dense time / sparse time; "
              "target >= 5)")
        for name, extra in (("block-sparse 0.1", ["--block-sparse", "0.1", "--block-size", "128"]),
                            ("bool mask 0.1 of tiles", ["--mask", "0.1", "--block-size", "128"]),
                            ("causal window 818", ["--causal", "--window", "818,0"])):
            res = compare(a.build, a.rounds, shape, shape + extra)
            cols = []
            for op, r in sorted(res.items(), key=lambda kv: kv[0] != "attn_fwd"):
                sp = r["a"][0] / r["b"][0]
                ok &= sp >= 5.0
                cols.append("%s %.0f -> %.0f ms (%.1fx)" % (op[5:], r["a"][0], r["b"][0], sp))
            print("%-26s %s" % (name, "; ".join(cols)))
    if "mla" in only:
        base = common + ["--heads-kv", "1", "--seqlen", "4096", "--bwd"]
        print("# MLA, B1 H16 Hk1 S4096 bf16: D576/Dv512 vs D128 (GFLOP/s; target >= 0.8)")
        res = compare(a.build, a.rounds, base + ["--head-dim", "128"],
                      base + ["--head-dim", "576", "--head-dim-v", "512"])
        for op, r in sorted(res.items(), key=lambda kv: kv[0] != "attn_fwd"):
            f = r["b"][1] / r["a"][1]
            ok &= f >= 0.8
            print("%-10s D128 %.0f GFLOP/s, MLA %.0f GFLOP/s (%.2f) [%s / %s]" % (op, r["a"][1], r["b"][1], f,
                                                                              r["a"][2], r["b"][2]))
    if "decode" in only:
        shape = ["decode", "--batch", "1", "--heads", "32", "--heads-kv", "8", "--head-dim", "128", "--seqlen-q",
                 "1", "--seqlen-k", "131072", "--dtype", "bf16", "--reps", "9"] + (["--huge-pages"] if a.huge_pages else [])
        print("# decode, B1 H32 Hk8 D128 Sk131072%s: bf16 cache vs quantized (bf16 time / time; target >= 1.8)" %
              (", 2 MB pages" if a.huge_pages else ""))
        for q in ("e4m3", "e5m2", "int8"):
            try:
                res = compare(a.build, a.rounds, shape, shape + ["--kv-quant", q])
            except subprocess.CalledProcessError as e:
                print("%-10s not run: %s" % (q, (e.stderr or "").strip()[:200]))
                ok = False
                continue
            for op, r in res.items():
                sp = r["a"][0] / r["b"][0]
                ok &= sp >= 1.8
                print("%-10s %s bf16 %.2f ms, %s %.2f ms (%.2fx)" % (q, op, r["a"][0], q, r["b"][0], sp))
    print("targets met" if ok else "targets NOT all met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
