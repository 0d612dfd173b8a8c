"""Not a test (pytest does not collect it): the Python package's per-call overhead, and cflash vs
torch SDPA on the CPU (fwd, fwd + bwd), both measured in this one process: median of repeats after
a warm-up. Run:
  CFLASH_LIBRARY=$PWD/build/libcflash.so PYTHONPATH=python OMP_NUM_THREADS=2 python3 tests/python/bench_vs_sdpa.py
"""
import time

import numpy as np
import torch

import cflash

F = torch.nn.functional


def median_s(f, n):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main():
    print("threads: torch %d; cflash: OMP_NUM_THREADS or all cores" % torch.get_num_threads())
    q = np.ones((1, 1, 1, 8), np.float32)
    print("per call, NumPy, (1,1,1,8) fp32: %.1f us" % (1e6 * median_s(lambda: cflash.flash_attn_func(q, q, q), 2000)))
    qt = torch.ones(1, 1, 1, 8)
    print("per call, torch custom op, (1,1,1,8) fp32: %.1f us"
          % (1e6 * median_s(lambda: cflash.flash_attn_func(qt, qt, qt), 2000)))

    B, S, H, D = 1, 1024, 8, 64
    q, k, v = (torch.randn(B, S, H, D) for _ in range(3))
    qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    shape = "B%d S%d H%d D%d fp32 causal" % (B, S, H, D)
    fwd = {"cflash": lambda: cflash.flash_attn_func(q, k, v, causal=True),
           "sdpa": lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)}
    for _ in range(2):  # alternate, twice: the machine may be shared
        for name, f in fwd.items():
            print("fwd %-6s %s: %.2f ms" % (name, shape, 1e3 * median_s(f, 15)))
    qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
    qsg, ksg, vsg = (x.clone().requires_grad_(True) for x in (qs, ks, vs))
    bwd = {"cflash": lambda: cflash.flash_attn_func(qg, kg, vg, causal=True).sum().backward(),
           "sdpa": lambda: F.scaled_dot_product_attention(qsg, ksg, vsg, is_causal=True).sum().backward()}
    for _ in range(2):
        for name, f in bwd.items():
            print("fwd+bwd %-6s %s: %.2f ms" % (name, shape, 1e3 * median_s(f, 7)))


if __name__ == "__main__":
    main()
