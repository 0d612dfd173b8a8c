#!/usr/bin/env python3
"""Checks attn_mma.cu's fragment index math on the CPU: a model of mma.m16n8k16 (bf16/fp16, fp32
accumulators) and ldmatrix.x4 (.trans) fragments as the PTX ISA lays them out, run on the index
expressions the kernels use.

- calibration: mm_fb's O = P V (P from S's accumulator fragments, V by ldmatrix.x4.trans), the
  pattern that passed the GPU grid on the H200: the model must reproduce P V;
- dq_atomic (CF_BWD_ATOMIC_DQ, not yet run on a GPU): dS from the dS^T tile by ldmatrix.x4.trans
  as the A operand, times K in 32-column chunks: must equal dS K for each warp's 16 rows.

    python3 bench/mma_frag_model.py      # prints the max errors; exit 1 if any is above 1e-9

A model, not the hardware: it checks index expressions against the ISA's layouts, as read here.
"""
import sys

import numpy as np
rng = np.random.default_rng(1)
LDS = 136; LDSS = 72; BT = 64; DMAX = 128

def ldmatrix_x4(smem, addr_of_lane, trans=False):
    # smem: 1-D array of halves; addr_of_lane(l) -> element offset of row start for lane l
    regs = np.zeros((32, 4, 2))
    for i in range(4):
        rows = [smem[addr_of_lane(8 * i + r): addr_of_lane(8 * i + r) + 8] for r in range(8)]
        M = np.array(rows)  # stored 8x8
        if trans: M = M.T
        for t in range(32):
            regs[t, i] = M[t >> 2, 2 * (t % 4): 2 * (t % 4) + 2]
    return regs

def mma(acc, a, b):
    # acc[32][4], a[32][4][2], b[32][2][2] -> acc += A B with PTX layouts
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for t in range(32):
        g, tg = t >> 2, t % 4
        A[g, 2*tg:2*tg+2] = a[t, 0]; A[g+8, 2*tg:2*tg+2] = a[t, 1]
        A[g, 2*tg+8:2*tg+10] = a[t, 2]; A[g+8, 2*tg+8:2*tg+10] = a[t, 3]
        B[2*tg:2*tg+2, g] = b[t, 0]; B[2*tg+8:2*tg+10, g] = b[t, 1]
    C = A @ B
    for t in range(32):
        g, tg = t >> 2, t % 4
        acc[t, 0:2] += C[g, 2*tg:2*tg+2]; acc[t, 2:4] += C[g+8, 2*tg:2*tg+2]

def mm_fb(f, Bs_off, smem, KT, NT, n):
    # f[32][2*KT][2][2]: f[t][2kk][0] = a0 ... as in attn_mma.cu; returns acc[NT][32][4]
    acc = np.zeros((NT, 32, 4))
    for kk in range(KT):
        af = np.stack([f[:, 2*kk, 0], f[:, 2*kk, 1], f[:, 2*kk+1, 0], f[:, 2*kk+1, 1]], axis=1)
        for t in range(0, NT, 2):
            if t * 8 >= n: break
            bf = ldmatrix_x4(smem, lambda l: Bs_off + (kk*16 + (l & 15)) * LDS + t*8 + (l >> 4) * 8, trans=True)
            mma(acc[t], af, bf[:, 0:2])
            if (t + 1) * 8 < n: mma(acc[t+1], af, bf[:, 2:4])
    return acc

def acc_to_matrix(acc, NT):
    M = np.zeros((16, NT * 8))
    for t in range(NT):
        for l in range(32):
            g, tg = l >> 2, l % 4
            M[g, t*8+2*tg:t*8+2*tg+2] = acc[t, l, 0:2]; M[g+8, t*8+2*tg:t*8+2*tg+2] = acc[t, l, 2:4]
    return M

# (1) calibration: O(16 x 128) = P (16 x 64) V (64 x 128), P from S's accumulator layout repacked
P = rng.standard_normal((16, 64)); V = rng.standard_normal((64, 128))
smem = np.zeros(64 * LDS); 
for r in range(64): smem[r*LDS:r*LDS+128] = V[r]
# pf[t][0] = (row g, cols t*8+2tg..), pf[t][1] = row g+8; f[2kk] = pf[2kk], f[2kk+1] = pf[2kk+1]
f = np.zeros((32, 8, 2, 2))
for t in range(8):
    for l in range(32):
        g, tg = l >> 2, l % 4
        f[l, t, 0] = P[g, t*8+2*tg:t*8+2*tg+2]; f[l, t, 1] = P[g+8, t*8+2*tg:t*8+2*tg+2]
acc = mm_fb(f, 0, smem, 4, 16, 128)
errs = [("calibration P V", np.abs(acc_to_matrix(acc, 16) - P @ V).max())]

# (2) dq_atomic: Ss = dS^T [64 keys][LDSS], warp w's query rows 16w.., K in Ks [64][LDS]
dS = rng.standard_normal((64, 64))   # [query][key]
K = rng.standard_normal((64, 128))
D = 128
ss = np.zeros(64 * LDSS)
for k in range(64): ss[k*LDSS:k*LDSS+64] = dS[:, k]   # row k = dS^T[k][:]
ks = np.zeros(64 * LDS)
for r in range(64): ks[r*LDS:r*LDS+128] = K[r]
for w in range(4):
    f = np.zeros((32, 8, 2, 2))
    for kk in range(4):
        r = ldmatrix_x4(ss, lambda l: (kk*16 + (l & 7) + ((l >> 4) << 3)) * LDSS + w*16 + ((l >> 3) & 1) * 8, trans=True)
        f[:, 2*kk, 0] = r[:, 0]; f[:, 2*kk, 1] = r[:, 1]; f[:, 2*kk+1, 0] = r[:, 2]; f[:, 2*kk+1, 1] = r[:, 3]
    out = np.zeros((16, 128))
    for c0 in range(0, DMAX, 32):
        acc = mm_fb(f, c0, ks, 4, 4, D - c0)
        out[:, c0:c0+32] = acc_to_matrix(acc, 4)
    errs.append(("dq_atomic warp %d" % w, np.abs(out - dS[16*w:16*w+16] @ K).max()))
for name, e in errs:
    print("%s: max err %.2e" % (name, e))
sys.exit(1 if max(e for _, e in errs) > 1e-9 else 0)
