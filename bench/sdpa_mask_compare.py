#!/usr/bin/env python3
"""PyTorch CPU scaled_dot_product_attention with an additive float mask in the model's dtype (as
transformers builds its 4-D masks) against cflash's drop-in (cflash.sdpa, which hands such a call
to libcflash as attn_bias), forward and forward + backward, in one process, alternated.

--mask noise: the last eighth of the keys padding (the dtype's finfo.min), small noise elsewhere.
--mask finfo-causal: causal plus the first 1/16 of the keys as padding, all finfo.min (not -inf),
as transformers writes them; cflash runs twice, as it does and with its far-key hiding turned off
(cflash._torch._hide_far_keys: the dense call such a mask cost before).
Shape (B, 1, S, S). Medians of --reps runs after one warm-up; the package finds the library at
$CFLASH_LIBRARY (a path to libcflash.so) or next to itself.

    CFLASH_LIBRARY=build/libcflash.so PYTHONPATH=python python3 bench/sdpa_mask_compare.py \\
        --seqlen 2048 --threads 2 [--mask finfo-causal]
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # two OpenMP runtimes share the process

import argparse
import statistics
import time

import torch

import cflash._torch as ct
import cflash.sdpa as cs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--mask", default="noise", choices=("noise", "finfo-causal"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    B, H, S, D = a.batch, a.heads, a.seqlen, a.head_dim
    q, k, v = (torch.randn(B, H, S, D, dtype=dt) for _ in range(3))
    mn = torch.finfo(dt).min
    if a.mask == "noise":
        mask = (torch.randn(B, 1, S, S) * 0.1).to(dt)
        mask[..., S - S // 8:] = mn
    else:
        mask = torch.full((S, S), mn, dtype=dt).triu(1)[None, None].repeat(B, 1, 1, 1)
        mask[..., :S // 16] = mn
    hide = ct._hide_far_keys
    sides = [("torch", torch.nn.functional.scaled_dot_product_attention, None),
             ("cflash", cs.scaled_dot_product_attention, hide)]
    if a.mask == "finfo-causal":
        sides.append(("cflash dense", cs.scaled_dot_product_attention, lambda *x: (None, False)))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]

    def fwd(fn):
        with torch.no_grad():
            fn(q, k, v, attn_mask=mask)

    def fwd_bwd(fn):
        fn(*leaves, attn_mask=mask).sum().backward()

    for what, run in (("forward", fwd), ("forward+backward", fwd_bwd)):
        times = {name: [] for name, _, _ in sides}
        for rep in range(a.reps + 1):  # (the first round warms up)
            for name, fn, h in sides:
                if h:
                    ct._hide_far_keys = h
                t0 = time.perf_counter()
                run(fn)
                if rep:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        ct._hide_far_keys = hide
        t = statistics.median(times["torch"])
        print("%s B%d H%d S%d D%d %s, %s mask, %d threads: torch %.1f ms; %s" % (
            what, B, H, S, D, a.dtype, a.mask, a.threads, t,
            "; ".join("%s %.1f ms (%.2fx)" % (n, statistics.median(x), t / statistics.median(x))
                      for n, x in times.items() if n != "torch")))


if __name__ == "__main__":
    main()
