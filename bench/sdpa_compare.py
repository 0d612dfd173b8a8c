#!/usr/bin/env python3
"""PyTorch CPU scaled_dot_product_attention vs cflash, forward and backward, in one process.

Both get the same values (cflash in its (B, S, H, D) layout, PyTorch in (B, H, S, D)), the same
thread count and dtype; each figure is the median of --reps runs after a warm-up, the two sides run
alternately so they see the same load, and the speedup is given on wall time and on process CPU
time (robust on a shared machine). cflash is called
through ctypes on libcflash.so (no dependency on the Python package). Prints one line per
(dtype, seqlen, direction) with both timings, GFLOP/s (DESIGN.md convention) and the ratio, and
writes a PNG of GFLOP/s against sequence length.

    python3 bench/sdpa_compare.py --lib build-b/libcflash.so --threads 2 \
        --seqlens 512,1024,2048,4096 --dtypes fp32,bf16 --png bench/sdpa_compare.png
"""
import os

# Two OpenMP runtimes share this process (PyTorch's bundled one and libcflash's): passive waiting
# keeps the idle one from spinning on the cores the other is using. Set before either loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ctypes as C
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


class DLDevice(C.Structure):
    _fields_ = [("device_type", C.c_int32), ("device_id", C.c_int32)]


class DLDataType(C.Structure):
    _fields_ = [("code", C.c_uint8), ("bits", C.c_uint8), ("lanes", C.c_uint16)]


class DLTensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("device", DLDevice), ("ndim", C.c_int32),
                ("dtype", DLDataType), ("shape", C.POINTER(C.c_int64)),
                ("strides", C.POINTER(C.c_int64)), ("byte_offset", C.c_uint64)]


class AttnParams(C.Structure):
    _fields_ = [("softmax_scale", C.c_float), ("causal", C.c_int), ("window_left", C.c_int64),
                ("window_right", C.c_int64), ("softcap", C.c_float),
                ("alibi_slopes", C.POINTER(DLTensor)), ("dropout_p", C.c_float),
                ("seed", C.c_uint64), ("offset", C.c_uint64), ("deterministic", C.c_int)]


DL_CODES = {torch.float32: (2, 32), torch.float16: (2, 16), torch.bfloat16: (4, 16)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dl(t, keep):
    """A DLTensor view of a contiguous CPU torch tensor (keep holds the shape array alive)."""
    assert t.is_contiguous()
    shape = (C.c_int64 * t.dim())(*t.shape)
    keep.append(shape)
    code, bits = DL_CODES[t.dtype]
    x = DLTensor(C.c_void_p(t.data_ptr()), DLDevice(1, 0), t.dim(), DLDataType(code, bits, 1),
                 shape, None, 0)
    keep.append(x)
    return C.byref(x)


class Cflash:
    def __init__(self, path, threads, backend):
        self.lib = C.CDLL(path)
        L = self.lib
        L.cflash_last_error.restype = C.c_char_p
        L.cflash_context_create.argtypes = [C.POINTER(C.c_void_p)]
        self.ctx = C.c_void_p()
        self.check(L.cflash_context_create(C.byref(self.ctx)))
        self.check(L.cflash_context_set_threads(self.ctx, threads))
        if backend:
            self.check(L.cflash_context_set_backend(self.ctx, backend.encode()))
        self.params = AttnParams()
        L.cflash_attn_params_init(C.byref(self.params))

    def check(self, status):
        if status != 0:
            raise RuntimeError("cflash: %s" % self.lib.cflash_last_error().decode())

    def backend_for(self, bwd, args):
        """The backend the forward (bwd 0) or backward (1) call on args would use: explain mode."""
        buf = C.create_string_buffer(4096)
        self.check(self.lib.cflash_context_set_explain(self.ctx, buf, C.c_size_t(len(buf))))
        call = self.lib.cflash_attn_bwd if bwd else self.lib.cflash_attn_fwd
        call(self.ctx, C.byref(self.params), *args)
        for line in buf.value.decode().splitlines():
            if line.startswith("-> "):
                return line[3:]
        return "?"


def paired_ms(fa, fb, warmup, reps):
    """Medians of wall and process-CPU ms of fa and fb, run alternately so both see the same load
    on a shared machine. Returns ((wall_a, cpu_a), (wall_b, cpu_b))."""
    for _ in range(warmup):
        fa()
        fb()
    res = {0: ([], []), 1: ([], [])}
    for _ in range(reps):
        for k, f in ((0, fa), (1, fb)):
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            res[k][0].append((time.perf_counter() - t0) * 1e3)
            res[k][1].append((time.process_time() - c0) * 1e3)
    return tuple((statistics.median(res[k][0]), statistics.median(res[k][1])) for k in (0, 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--lib", default=os.path.join(here, "..", "build", "libcflash.so"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlens", default="512,1024,2048,4096")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--no-bwd", action="store_true")
    ap.add_argument("--backend", default=None, help="force a cflash backend (default auto)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--png", default=None, help="write the plot here")
    ap.add_argument("--json", action="store_true", help="one JSON object per result")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    cf = Cflash(a.lib, a.threads, a.backend)
    cf.params.causal = int(a.causal)
    B, H, D = a.batch, a.heads, a.head_dim
    rows = []
    print("# torch %s, %d threads, cflash %s, B=%d H=%d D=%d causal=%d"
          % (torch.__version__, a.threads, a.lib, B, H, D, int(a.causal)))
    for dname in a.dtypes.split(","):
        dt = DTYPES[dname]
        for S in [int(s) for s in a.seqlens.split(",")]:
            g = torch.Generator().manual_seed(S)
            q, k, v, do = (torch.randn(B, S, H, D, generator=g).to(dt) for _ in range(4))
            out = torch.empty(B, S, H, D, dtype=dt)
            lse = torch.empty(B, H, S, dtype=torch.float32)
            dq, dk, dv = (torch.empty(B, S, H, D, dtype=dt) for _ in range(3))
            keep = []
            T = [dl(t, keep) for t in (q, k, v, out, lse, do, dq, dk, dv)]
            fwd_args = (T[0], T[1], T[2], T[3], T[4])
            bwd_args = (T[5], T[0], T[1], T[2], T[3], T[4], T[6], T[7], T[8])
            L = cf.lib

            def cf_fwd():
                cf.check(L.cflash_attn_fwd(cf.ctx, C.byref(cf.params), *fwd_args))

            def cf_bwd():
                cf.check(L.cflash_attn_bwd(cf.ctx, C.byref(cf.params), *bwd_args))

            # PyTorch: the same values in its (B, H, S, D) layout.
            tq, tk, tv, tdo = (x.transpose(1, 2).contiguous() for x in (q, k, v, do))

            def t_fwd():
                with torch.no_grad():
                    F.scaled_dot_product_attention(tq, tk, tv, is_causal=a.causal)

            flops = 4.0 * B * H * S * S * D * (0.5 if a.causal else 1.0)
            res = {"dtype": dname, "S": S}
            fb = cf.backend_for(0, fwd_args)
            res["fwd"] = paired_ms(t_fwd, cf_fwd, a.warmup, a.reps)
            # Accuracy sanity: cflash vs torch outputs on the same inputs.
            with torch.no_grad():
                ref = F.scaled_dot_product_attention(tq.float(), tk.float(), tv.float(),
                                                     is_causal=a.causal).transpose(1, 2)
            cf_fwd()
            err = (out.float() - ref).abs().max().item()
            if not a.no_bwd:
                bb = cf.backend_for(1, bwd_args)
                rq, rk, rv = (x.detach().clone().requires_grad_(True) for x in (tq, tk, tv))
                o = F.scaled_dot_product_attention(rq, rk, rv, is_causal=a.causal)

                def t_bwd():
                    torch.autograd.grad(o, (rq, rk, rv), tdo, retain_graph=True)

                res["bwd"] = paired_ms(t_bwd, cf_bwd, a.warmup, a.reps)
            for dirn in ("fwd", "bwd"):
                if dirn not in res:
                    continue
                (tm, tc), (cm, cc) = res[dirn]
                fl = flops * (2.5 if dirn == "bwd" else 1.0)
                r = {"dtype": dname, "seqlen": S, "dir": dirn, "B": B, "H": H, "D": D,
                     "causal": int(a.causal), "threads": a.threads,
                     "cflash_backend": fb if dirn == "fwd" else bb,
                     "torch_ms": round(tm, 3), "cflash_ms": round(cm, 3),
                     "torch_gflops": round(fl / tm * 1e-6, 2), "cflash_gflops": round(fl / cm * 1e-6, 2),
                     "speedup": round(tm / cm, 3), "torch_cpu_ms": round(tc, 3),
                     "cflash_cpu_ms": round(cc, 3), "speedup_cpu": round(tc / cc, 3),
                     "max_abs_diff_fwd": err}
                rows.append(r)
                if a.json:
                    print(json.dumps(r))
                else:
                    print("%s S=%-6d %s  torch %9.2f ms %7.1f GFLOP/s | cflash (%s) %9.2f ms %7.1f "
                          "GFLOP/s | speedup %.2fx wall, %.2fx CPU time"
                          % (dname, S, dirn, tm, r["torch_gflops"], r["cflash_backend"], cm,
                             r["cflash_gflops"], r["speedup"], r["speedup_cpu"]))
                sys.stdout.flush()

    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        dts = a.dtypes.split(",")
        fig, axes = plt.subplots(1, len(dts), figsize=(6 * len(dts), 4.5), squeeze=False)
        for ax, dname in zip(axes[0], dts):
            for dirn, style in (("fwd", "-"), ("bwd", "--")):
                sel = [r for r in rows if r["dtype"] == dname and r["dir"] == dirn]
                if not sel:
                    continue
                xs = [r["seqlen"] for r in sel]
                ax.plot(xs, [r["cflash_gflops"] for r in sel], "o" + style, label="cflash " + dirn)
                ax.plot(xs, [r["torch_gflops"] for r in sel], "s" + style, label="torch SDPA " + dirn)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length")
            ax.set_ylabel("GFLOP/s")
            ax.set_title("%s, B=%d H=%d D=%d%s, %d threads" % (dname, B, H, D,
                                                            " causal" if a.causal else "", a.threads))
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(a.png, dpi=100)
        print("# wrote", a.png)


if __name__ == "__main__":
    main()
