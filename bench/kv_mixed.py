#!/usr/bin/env python3
"""A serving step through cflash.flash_attn_with_kvcache with varlen queries (cu_seqlens_q): B
sequences with caches of --cache keys each, the first with a chunk of --chunk query rows (chunked
prefill), the others one decode row each; causal, bf16, no new keys; with --page N the caches are
pages of N keys in a shuffled block_table (vLLM's layout). Prints the median of --reps calls after
one warm-up. Compare two builds by running it under each one's CFLASH_LIBRARY,
alternately:

    CFLASH_LIBRARY=build/libcflash.so OMP_NUM_THREADS=2 PYTHONPATH=python \\
        python3 bench/kv_mixed.py --batch 8 --chunk 64
"""
import argparse
import time

import numpy as np
import torch

import cflash


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=64, help="query rows of the first sequence")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--cache", type=int, default=16384, help="keys in each sequence's cache")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--page", type=int, default=0, help="keys per page (0: contiguous caches)")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    npp = -(-a.cache // a.page) if a.page else 0  # pages per sequence
    shape = ((a.batch * npp, a.page) if a.page else (a.batch, a.cache)) + (a.heads_kv, a.head_dim)
    kc = torch.randn(shape, generator=g).to(torch.bfloat16)
    vc = torch.randn(shape, generator=g).to(torch.bfloat16)
    table = (torch.randperm(a.batch * npp, generator=g).to(torch.int32).reshape(a.batch, npp)
             if a.page else None)
    rows = [a.chunk] + [1] * (a.batch - 1)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(rows)]), dtype=torch.int32)
    q = torch.randn(int(cu[-1]), a.heads, a.head_dim, generator=g).to(torch.bfloat16)
    seqlens = torch.full((a.batch,), a.cache, dtype=torch.int32)

    def step():
        return cflash.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, causal=True,
                                              cu_seqlens_q=cu, max_seqlen_q=max(rows),
                                              block_table=table)

    step()
    ts = []
    for _ in range(a.reps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    paged = f" in pages of {a.page}" if a.page else ""
    print(f"B{a.batch} H{a.heads}/{a.heads_kv} D{a.head_dim}, caches of {a.cache}{paged}: a chunk of "
          f"{a.chunk} rows + {a.batch - 1} decode rows: {1e3 * float(np.median(ts)):.1f} ms "
          f"(median of {a.reps})")


if __name__ == "__main__":
    main()
