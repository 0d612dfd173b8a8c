#!/usr/bin/env python3
"""transformers-style additive mask (causal, plus the first 1/16 of the keys as left padding, all
filled with the dtype's finfo.min) through PyTorch's SDPA and cflash's drop-in, the latter with
and without its far-key hiding (cflash._torch._far_keys_hidden), the three alternated in one
process; forward and forward + backward, medians after a warm-up round.

    CFLASH_LIBRARY=build/libcflash.so PYTHONPATH=python python3 bench/sdpa_finfo_mask.py 2048
"""
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # two OpenMP runtimes share the process

import torch

import cflash._torch as ct
import cflash.sdpa as cs

S = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)
B, H, D, dt = 1, 16, 128, torch.bfloat16
q, k, v = (torch.randn(B, H, S, D, dtype=dt) for _ in range(3))
mn = torch.finfo(dt).min
m = torch.full((S, S), mn, dtype=dt).triu(1)[None, None].clone()
m[..., :, :S // 16] = mn
hide = ct._far_keys_hidden
sides = [("torch", torch.nn.functional.scaled_dot_product_attention, None),
         ("cflash dense", cs.scaled_dot_product_attention, lambda *a: None),
         ("cflash", cs.scaled_dot_product_attention, hide)]
leaves = [x.clone().requires_grad_() for x in (q, k, v)]


def fwd(fn):
    with torch.no_grad():
        fn(q, k, v, attn_mask=m)


def fwd_bwd(fn):
    fn(*leaves, attn_mask=m).sum().backward()


for what, run in (("forward", fwd), ("forward+backward", fwd_bwd)):
    t = {n: [] for n, _, _ in sides}
    for _ in range(4):
        for n, fn, h in sides:
            if h:
                ct._far_keys_hidden = h
            t0 = time.perf_counter()
            run(fn)
            t[n].append((time.perf_counter() - t0) * 1e3)
    print("%s B%d H%d S%d D%d bf16, causal + padding finfo.min mask, %d threads: %s" % (
        what, B, H, S, D, threads, "; ".join("%s %.1f ms" % (n, statistics.median(x[1:])) for n, x in t.items())))
