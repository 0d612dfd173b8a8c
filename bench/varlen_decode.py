#!/usr/bin/env python3
"""Decode rows through cflash.flash_attn_varlen_func, as a serving engine written for flash-attn
calls it: --rows query rows per sequence (1: a decode step; a few: a speculative draft) over
--lens keys each, causal, bf16; packed K/V (cu_seqlens_k), or with --page N pages of N keys in a
shuffled block_table with seqused_k (vLLM's layout). Prints the median of --reps calls after one
warm-up. Compare two builds by running it under each one's CFLASH_LIBRARY, alternately:

    CFLASH_LIBRARY=build/libcflash.so OMP_NUM_THREADS=2 PYTHONPATH=python \\
        python3 bench/varlen_decode.py --lens 32768,512,512,512 [--page 16]
"""
import argparse
import time

import numpy as np
import torch

import cflash


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lens", default="32768", help="keys of each sequence, comma separated")
    ap.add_argument("--rows", type=int, default=1, help="query rows of each sequence")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--page", type=int, default=0, help="keys per page (0: packed K/V)")
    a = ap.parse_args()
    lens = [int(x) for x in a.lens.split(",")]
    B, g = len(lens), torch.Generator().manual_seed(0)
    kv = (a.heads_kv, a.head_dim)
    if a.page:
        npp = [-(-n // a.page) for n in lens]  # pages per sequence
        k = torch.randn((sum(npp), a.page) + kv, generator=g).to(torch.bfloat16)
        v = torch.randn((sum(npp), a.page) + kv, generator=g).to(torch.bfloat16)
        perm = torch.randperm(sum(npp), generator=g).to(torch.int32)
        table = torch.zeros(B, max(npp), dtype=torch.int32)
        for b in range(B):
            table[b, :npp[b]] = perm[sum(npp[:b]):sum(npp[:b + 1])]
        extra = dict(block_table=table, seqused_k=torch.tensor(lens, dtype=torch.int32))
    else:
        k = torch.randn((sum(lens),) + kv, generator=g).to(torch.bfloat16)
        v = torch.randn((sum(lens),) + kv, generator=g).to(torch.bfloat16)
        extra = {}
    cu_k = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)
    cu_q = torch.arange(0, a.rows * (B + 1), a.rows, dtype=torch.int32)
    q = torch.randn(a.rows * B, a.heads, a.head_dim, generator=g).to(torch.bfloat16)

    def step():
        return cflash.flash_attn_varlen_func(q, k, v, cu_q, cu_k, a.rows, max(lens), causal=True,
                                             **extra)

    def timed():
        t = time.perf_counter()
        step()
        return time.perf_counter() - t

    timed()  # warm-up
    ts = [timed() for _ in range(a.reps)]
    paged = f" in pages of {a.page} (block_table, seqused_k)" if a.page else " packed"
    print(f"B{B} H{a.heads}/{a.heads_kv} D{a.head_dim}, {a.rows} rows over {a.lens} keys{paged}: "
          f"{1e3 * float(np.median(ts)):.3f} ms (median of {a.reps})")


if __name__ == "__main__":
    main()
