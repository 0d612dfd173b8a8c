"""Ring attention on one machine: throughput and peak memory per rank for 1, 2 and 4 ranks
(cflash.distributed over torch.distributed with gloo, each rank a process with cores / P threads),
and the bytes each rank sends and receives, against the theoretical 2 (P - 1) / P |K + V| per
forward (each of the P - 1 steps sends this rank's K/V block, |K + V| / P, and receives one).

    CFLASH_LIBRARY=build/libcflash.so python3 bench/ring_bench.py --seqlen 8192 --heads 8 \\
        --head-dim 64 --dtype bf16 --causal --layout zigzag --ranks 1,2,4 --bwd [--json]

Rows: "single" is cflash.flash_attn_func on the whole sequence in one process (all cores); "P=n"
the ring with n processes. ms: median of --repeat timed calls after one warm-up, the slowest rank
(barriers around each call). TFLOP/s: DESIGN.md's convention (forward 4 B H S^2 D, halved for
causal; backward 2.5x) over the whole sequence. peak MiB: the largest per-rank rise of resident
memory (VmHWM, reset before the inputs are made) over one forward + backward. Timings depend on
what else the machine runs: measure on a quiet one."""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
if not os.environ.get("CFLASH_LIBRARY") and os.path.exists(os.path.join(ROOT, "build", "libcflash.so")):
    os.environ["CFLASH_LIBRARY"] = os.path.join(ROOT, "build", "libcflash.so")


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _inputs(torch, a, rank, world):
    g = torch.Generator().manual_seed(1234 + rank)
    n = a.seqlen // world
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    mk = lambda h: torch.randn((a.batch, n, h, a.head_dim), generator=g).to(dt)  # noqa: E731
    return mk(a.heads), mk(a.heads_kv), mk(a.heads_kv), mk(a.heads)


def _timed(torch, fn, repeat, barrier):
    ts = []
    for _ in range(repeat):
        barrier()
        t0 = time.perf_counter()
        fn()
        barrier()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _measure(torch, a, world, attn, barrier):
    """(fwd s, fwd+bwd s or None, peak kB) of attn(q, k, v) on this rank's inputs."""
    q, k, v, dout = _inputs(torch, a, barrier.rank, world)
    q.requires_grad_(a.bwd), k.requires_grad_(a.bwd), v.requires_grad_(a.bwd)

    def fwd():
        with torch.no_grad():
            attn(q, k, v)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        attn(q, k, v).backward(dout)

    fwd()  # warm-up (and links)
    t_fwd = _timed(torch, fwd, a.repeat, barrier)
    t_bwd = None
    if a.bwd:
        fwd_bwd()
        t_bwd = _timed(torch, fwd_bwd, a.repeat, barrier)
    del q, k, v, dout
    barrier()
    base = _rss_kb("VmRSS")
    ok = _reset_peak()
    q, k, v, dout = _inputs(torch, a, barrier.rank, world)
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    attn(q, k, v).backward(dout)
    peak = _rss_kb("VmHWM") - base if ok else None
    return t_fwd, t_bwd, peak


class _Barrier:
    def __init__(self, dist, rank):
        self.dist, self.rank = dist, rank

    def __call__(self):
        if self.dist is not None:
            self.dist.barrier()


def _rank_main(rank, world, store, a, out):
    threads = a.threads or max(1, (os.cpu_count() or 1) // world)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch
    import torch.distributed as dist

    import cflash
    from cflash.distributed import comm_stats, ring_flash_attn_func

    torch.set_num_threads(threads)
    cflash.set_num_threads(threads)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)

    def attn(q, k, v):
        return ring_flash_attn_func(q, k, v, causal=a.causal, layout=a.layout, heads_per_pass=a.heads_per_pass)

    barrier = _Barrier(dist, rank)
    t_fwd, t_bwd, peak = _measure(torch, a, world, attn, barrier)
    # One forward and one backward alone, for the communication counts.
    q, k, v, dout = _inputs(torch, a, rank, world)
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    comm_stats(reset=True)
    o = attn(q, k, v)
    fwd_comm = comm_stats(reset=True)["forward"]
    o.backward(dout)
    bwd_comm = comm_stats(reset=True)["backward"]
    row = dict(rank=rank, fwd_s=t_fwd, bwd_s=t_bwd, peak_kb=peak, fwd_comm=fwd_comm, bwd_comm=bwd_comm,
               threads=threads)
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def _single_main(_, a, out):
    """cflash.flash_attn_func on the whole sequence in one process (all cores)."""
    import torch

    import cflash

    threads = a.threads or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    cflash.set_num_threads(threads)

    def attn(q, k, v):
        return cflash.flash_attn_func(q, k, v, causal=a.causal)

    barrier = _Barrier(None, 0)
    t_fwd, t_bwd, peak = _measure(torch, a, 1, attn, barrier)
    with open(out, "w") as f:
        json.dump([dict(rank=0, fwd_s=t_fwd, bwd_s=t_bwd, peak_kb=peak, fwd_comm=None, bwd_comm=None,
                        threads=threads)], f)


def _single(a):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.json")
        mp.spawn(_single_main, args=(a, out), nprocs=1, join=True)
        with open(out) as f:
            return json.load(f)[0]


def _ring(a, world):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.json")
        mp.spawn(_rank_main, args=(world, os.path.join(d, "store"), a, out), nprocs=world, join=True)
        with open(out) as f:
            return json.load(f)


def _summary(a, name, world, rows):
    elt = {"fp32": 4, "fp16": 2, "bf16": 2}[a.dtype]
    kv = 2 * a.batch * a.seqlen * a.heads_kv * a.head_dim * elt  # |K + V| of the whole sequence
    flops = 4.0 * a.batch * a.heads * a.seqlen * a.seqlen * a.head_dim * (0.5 if a.causal else 1.0)
    fwd = max(r["fwd_s"] for r in rows)
    bwd = max(r["bwd_s"] for r in rows) if a.bwd else None
    peaks = [r["peak_kb"] for r in rows if r["peak_kb"] is not None]
    s = dict(name=name, ranks=world, threads_per_rank=rows[0]["threads"], fwd_ms=fwd * 1e3,
             fwd_tflops=flops / fwd / 1e12, fwd_bwd_ms=None if bwd is None else bwd * 1e3,
             fwd_bwd_tflops=None if bwd is None else 3.5 * flops / bwd / 1e12,
             peak_mib_per_rank=max(peaks) / 1024 if peaks else None, kv_bytes=kv)
    if rows[0]["fwd_comm"] is not None:
        fc = rows[0]["fwd_comm"]
        steps = max(world - 1, 1)
        s.update(fwd_sent_per_step=fc["sent"] / steps if world > 1 else 0,
                 fwd_traffic_per_rank=max(r["fwd_comm"]["sent"] + r["fwd_comm"]["received"] for r in rows),
                 fwd_traffic_theory=2.0 * (world - 1) / world * kv,
                 fwd_messages=fc["messages"],
                 bwd_traffic_per_rank=max(r["bwd_comm"]["sent"] + r["bwd_comm"]["received"] for r in rows))
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seqlen", type=int, default=8192, help="the whole sequence")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--heads-kv", type=int, default=None, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="bf16")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--layout", choices=("contiguous", "zigzag"), default="zigzag")
    p.add_argument("--heads-per-pass", type=int, default=None, help="KV heads per ring pass (default: the library's)")
    p.add_argument("--ranks", default="1,2,4", help="comma-separated process counts")
    p.add_argument("--bwd", action="store_true", help="also time forward + backward")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="per rank; 0 = cores / ranks")
    p.add_argument("--no-single", action="store_true", help="skip the single-process flash_attn_func row")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    a = p.parse_args()
    a.heads_kv = a.heads_kv or a.heads
    # Large buffers as their own mappings, returned when freed: the peak RSS follows live memory.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    ranks = [int(x) for x in a.ranks.split(",") if x]
    for w in ranks:
        need = w * (2 if a.layout == "zigzag" else 1)
        if a.seqlen % need:
            p.error("--seqlen %d: expected a multiple of %d for %d ranks (%s)" % (a.seqlen, need, w, a.layout))
    out = []
    if not a.no_single:
        out.append(_summary(a, "single", 1, [_single(a)]))
    for w in ranks:
        out.append(_summary(a, "P=%d" % w, w, _ring(a, w)))
    shape = "B%d S%d H%d/%d D%d %s%s %s" % (a.batch, a.seqlen, a.heads, a.heads_kv, a.head_dim, a.dtype,
                                          " causal" if a.causal else "", a.layout)
    if a.json:
        for s in out:
            print(json.dumps(dict(s, shape=shape)))
        return
    mib = 1024.0 * 1024.0
    print("ring attention, %s, |K+V| = %.1f MiB (the whole sequence)" % (shape, out[0]["kv_bytes"] / mib))
    print("%-7s %7s %9s %9s %11s %12s %10s %13s %13s %8s %13s" % (
        "", "thr/rk", "fwd ms", "fwd TF/s", "f+b ms", "f+b TF/s", "peak MiB", "fwd MiB/step",
        "fwd traffic", "theory", "bwd traffic"))
    for s in out:
        bwd = "%11.1f" % s["fwd_bwd_ms"] if s["fwd_bwd_ms"] is not None else "%11s" % "-"
        fbt = "%12.3f" % s["fwd_bwd_tflops"] if s["fwd_bwd_tflops"] is not None else "%12s" % "-"
        peak = "%10.1f" % s["peak_mib_per_rank"] if s["peak_mib_per_rank"] is not None else "%10s" % "-"
        if "fwd_traffic_per_rank" in s:
            comm = "%13.2f %13.2f %8.2f %13.2f" % (s["fwd_sent_per_step"] / mib, s["fwd_traffic_per_rank"] / mib,
                                                    s["fwd_traffic_theory"] / mib, s["bwd_traffic_per_rank"] / mib)
        else:
            comm = "%13s %13s %8s %13s" % ("-", "-", "-", "-")
        print("%-7s %7d %9.1f %9.3f %s %s %s %s" % (s["name"], s["threads_per_rank"], s["fwd_ms"], s["fwd_tflops"],
                                                   bwd, fbt, peak, comm))
    print("traffic: bytes sent + received per rank (MiB) in one call; theory 2 (P - 1) / P |K + V| for the "
          "forward; the backward sends K/V again plus the fp32 dK/dV sums")


if __name__ == "__main__":
    main()
