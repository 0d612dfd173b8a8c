"""Not a test (pytest does not collect it): the Python package's per-call overhead and cflash vs
torch SDPA on the CPU, both measured in this one process (median of repeats, after a warm-up).
Run: CFLASH_LIBRARY=$PWD/build/libcflash.so PYTHONPATH=python OMP_NUM_THREADS=2 \
     python3 tests/python/bench_vs_sdpa.py"""
import time

import numpy as np
import torch

import cflash

torch.set_num_threads(2)
def med(f, n):
    f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return sorted(ts)[len(ts)//2]
q=np.ones((1,1,1,8),np.float32)
print("numpy tiny call: %.1f us" % (1e6*med(lambda: cflash.flash_attn_func(q,q,q), 2000)))
qt=torch.ones(1,1,1,8)
print("torch tiny call (custom op): %.1f us" % (1e6*med(lambda: cflash.flash_attn_func(qt,qt,qt), 2000)))
B,S,H,D=1,1024,8,64
q,k,v=(torch.randn(B,S,H,D) for _ in range(3))
f1=lambda: cflash.flash_attn_func(q,k,v,causal=True)
qs,ks,vs=(x.transpose(1,2).contiguous() for x in (q,k,v))
f2=lambda: torch.nn.functional.scaled_dot_product_attention(qs,ks,vs,is_causal=True)
for name,f in (("cflash",f1),("sdpa",f2),("cflash",f1),("sdpa",f2)):
    print("fwd %s B1 S1024 H8 D64 fp32 causal: %.2f ms" % (name, 1e3*med(f, 15)))
qg,kg,vg=(x.clone().requires_grad_(True) for x in (q,k,v))
qsg,ksg,vsg=(x.clone().requires_grad_(True) for x in (qs,ks,vs))
def b1():
    cflash.flash_attn_func(qg,kg,vg,causal=True).sum().backward()
def b2():
    torch.nn.functional.scaled_dot_product_attention(qsg,ksg,vsg,is_causal=True).sum().backward()
for name,f in (("cflash",b1),("sdpa",b2),("cflash",b1),("sdpa",b2)):
    print("fwd+bwd %s: %.2f ms" % (name, 1e3*med(f, 7)))
