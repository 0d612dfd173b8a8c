#!/usr/bin/env python3
"""Static instruction count of cuda-mma's forward (or dQ) loop on a full tile, without a GPU.

Compiles src/cuda/kernels/attn_mma.cu with nvcc for one arch and variant defines, disassembles
cf_attn_fwd_mma (cuobjdump; the CUDA toolkit here has none: Triton's wheel carries one, e.g.
`pip download --no-deps triton && unzip -o triton-*.whl 'triton/backends/nvidia/bin/*'`, then
--cuobjdump triton/backends/nvidia/bin/cuobjdump), and walks the main loop's path for a 64-key
tile that every row sees whole, without softcap / ALiBi / dropout: from the loop head to its
back-edge, taking the plain-tile branch (the first branch on two predicates after the head) and
the dropout skips of the softmax (`@!P4 BRA` before the first DEPBAR after it), falling through
every other branch. Loops inside the path (load_tile's) count once: multiply by hand. --kernel dq
walks cf_attn_bwd_dq_mma the same way (its plain-tile branch is the same shape; the dK/dV
kernel's nested loops are not handled). --full
counts CF_FULL_N's products (the build then assumes D = Dv = CF_DMAX: for counting only).

    python3 bench/sass_fwd_path.py --cuobjdump /tmp/cuobjdump -D CF_LOAD_T=1 -D CF_EX2_FTZ=1

Counts are leads (which instructions a tile issues), not times: the GPU decides those.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile


def walk(sass):
    ins = []
    for line in sass.split("\n"):
        m = re.match(r"\s+/\*([0-9a-f]{4,6})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    at = {a: i for i, (a, _) in enumerate(ins)}

    def target(t):
        m = re.search(r"BRA (?:.*, )?0x([0-9a-f]+)$", t)
        return int(m.group(1), 16) if m else None

    back = [(a, target(t)) for a, t in ins if "BRA" in t and target(t) is not None and target(t) < a]
    if not back:
        sys.exit("no loop found")
    end, head = max(back, key=lambda e: e[0] - e[1])  # the outermost loop
    i, path, plain, dep = at[head], [], False, False
    while True:
        a, t = ins[i]
        path.append(t)
        if a == end:
            break
        if not plain and re.match(r"@!?P\d BRA !?P\d, 0x", t):
            plain = True
            i = at[target(t)]
            continue
        dep = dep or (plain and "DEPBAR" in t)
        if plain and not dep and re.match(r"@!P4 BRA 0x", t):
            i = at[target(t)]
            continue
        if re.match(r"BRA 0x", t):
            i = at[target(t)]
            continue
        i += 1
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in path)
    return head, end, len(path), ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuobjdump", default="cuobjdump")
    ap.add_argument("--kernel", choices=("fwd", "dq"), default="fwd")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--dtype", type=int, default=2, help="CF_DTYPE: 1 fp16, 2 bf16")
    ap.add_argument("--dmax", type=int, default=128)
    ap.add_argument("-D", action="append", default=[], help="a define, NAME=VALUE")
    ap.add_argument("--full", action="store_true",
                    help="CF_FULL_N's path: compile with CF_IS_FULL 1 (for counting only)")
    a = ap.parse_args()
    fn = "cf_attn_fwd_mma" if a.kernel == "fwd" else "cf_attn_bwd_dq_mma"
    if a.full:
        a.D += ["CF_FULL_N=1", "CF_IS_FULL=1"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    kdir = os.path.join(root, "src", "cuda", "kernels")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        cmd = ["nvcc", "-arch=" + a.arch, "-cubin", "-std=c++17", "-DCF_DTYPE=%d" % a.dtype,
               "-DCF_DMAX=%d" % a.dmax, "-I" + kdir, os.path.join(kdir, "attn_mma.cu"), "-o", cubin]
        cmd[5:5] = ["-D" + d for d in a.D]
        subprocess.run(cmd, check=True)
        sass = subprocess.run([a.cuobjdump, "-sass", "-fun", fn, cubin], check=True,
                              capture_output=True, text=True).stdout
    head, end, n, ops = walk(sass)
    print("%s %s CF_DTYPE=%d CF_DMAX=%d %s: loop 0x%x..0x%x, %d instructions on the full-tile "
          "path (%d without NOP), %d HMMA" % (fn, a.arch, a.dtype, a.dmax, " ".join(a.D), head, end,
                                             n, n - ops["NOP"], ops["HMMA"]))
    print("  " + ", ".join("%s %d" % kv for kv in ops.most_common(20)))


if __name__ == "__main__":
    main()
