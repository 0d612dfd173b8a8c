#!/usr/bin/env python3
"""A decode step as transformers runs it on SDPA with a padded batch: query (B, H, 1, D), the
cache's keys / values (B, Hk, Sk, D), and a padding mask (B, 1, 1, Sk) that hides the first
pad_b keys of sequence b (pad_b = b * Sk / (2B): left padding) and, with --static F, the last
F of them (a static cache's unfilled slots); boolean, or additive (0 and the dtype's finfo.min,
as transformers writes float masks). PyTorch's CPU SDPA (enable_gqa) against cflash's drop-in
(cflash.sdpa), alternated in one process, medians of --reps after one warm-up. The package
finds the library at $CFLASH_LIBRARY (a path to libcflash.so) or next to itself.

    CFLASH_LIBRARY=build/libcflash.so PYTHONPATH=python python3 bench/sdpa_decode_mask.py \\
        --seqlen-k 4096 --threads 2 [--mask float] [--static 512]
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # two OpenMP runtimes share the process

import argparse
import statistics
import time

import torch

import cflash
import cflash.sdpa as cs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--seqlen-k", type=int, default=4096)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--mask", default="bool", choices=("bool", "float"))
    ap.add_argument("--static", type=int, default=0, help="unfilled slots at the end of every cache")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cflash.set_num_threads(a.threads)
    torch.manual_seed(0)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    B, H, Hk, Sk, D = a.batch, a.heads, a.heads_kv, a.seqlen_k, a.head_dim
    q = torch.randn(B, H, 1, D, dtype=dt)
    k, v = torch.randn(B, Hk, Sk, D, dtype=dt), torch.randn(B, Hk, Sk, D, dtype=dt)
    keep = torch.ones(B, 1, 1, Sk, dtype=torch.bool)
    for b in range(B):
        keep[b, ..., :b * Sk // (2 * B)] = False
    if a.static:
        keep[..., Sk - a.static:] = False
    mask = keep if a.mask == "bool" else torch.zeros(keep.shape, dtype=dt).masked_fill(~keep, torch.finfo(dt).min)
    sides = (("torch", torch.nn.functional.scaled_dot_product_attention), ("cflash", cs.scaled_dot_product_attention))
    with torch.no_grad():
        outs = [fn(q, k, v, attn_mask=mask, enable_gqa=True).float() for _, fn in sides]
        times = {name: [] for name, _ in sides}
        for rep in range(a.reps + 1):  # (the first round warms up)
            for name, fn in sides:
                t0 = time.perf_counter()
                fn(q, k, v, attn_mask=mask, enable_gqa=True)
                if rep:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    t = statistics.median(times["torch"])
    c = statistics.median(times["cflash"])
    print("decode B%d H%d/%d Sk%d D%d %s, %s padding mask%s, %d threads: torch %.2f ms, cflash %.2f ms (%.2fx); "
          "max |diff| %.2g" % (B, H, Hk, Sk, D, a.dtype, a.mask, " + %d unfilled" % a.static if a.static else "",
                               a.threads, t, c, t / c, (outs[0] - outs[1]).abs().max().item()))


if __name__ == "__main__":
    main()
