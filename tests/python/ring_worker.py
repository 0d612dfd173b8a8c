"""The per-rank side of the ring attention tests (tests/python/test_ring.py), in its own module so
that torch.multiprocessing.spawn can import it in each child: join a gloo group through a file
store, build every case's whole inputs from its seed, run this rank's part forward and backward
twice, save the results for the parent to check. Also the memory probes (peak RSS of one run)."""

import os
import sys
import time

import numpy as np


def case_inputs(case):
    """Whole-sequence inputs of a case (the same on every rank and in the parent), fp32 NumPy."""
    rng = np.random.default_rng(case["seed"])
    H, Hk, D, Dv = case["H"], case["Hk"], case["D"], case.get("Dv", case["D"])
    if case.get("cu") is not None:
        T = case["total"]
        shapes = [(T, H, D), (T, Hk, D), (T, Hk, Dv), (T, H, Dv)]
    else:
        B, S = case["B"], case["S"]
        shapes = [(B, S, H, D), (B, S, Hk, D), (B, S, Hk, Dv), (B, S, H, Dv)]
    q, k, v, dout = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    slopes = None
    if case.get("alibi"):
        nb = len(case["cu"]) - 1 if case.get("cu") is not None else case["B"]
        shape = (nb, H) if case["alibi"] == "BH" else (H,)
        slopes = rng.uniform(0.05, 0.5, shape).astype(np.float32)
    return q, k, v, dout, slopes


def _setup(rank, world, store):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
    import cflash

    cflash.set_num_threads(1)
    return torch, dist


def _call(case, q, k, v, slopes):
    from cflash.distributed import ring_flash_attn_func, ring_flash_attn_varlen_func

    kw = dict(dropout_p=case.get("dropout", 0.0), causal=case["causal"], window_size=case.get("window", (-1, -1)),
              softcap=case.get("softcap", 0.0), alibi_slopes=slopes, return_attn_probs=True,
              heads_per_pass=case.get("heads_per_pass"))
    if case.get("cu") is not None:
        import torch

        return ring_flash_attn_varlen_func(q, k, v, torch.tensor(case["cu"], dtype=torch.int32), None, **kw)
    return ring_flash_attn_func(q, k, v, layout=case["layout"], **kw)


def run_cases(rank, world, store, cases, out_dir):
    torch, dist = _setup(rank, world, store)
    from cflash.distributed import VarlenUnsupported, ring_shard

    results = []
    for case in cases:
        dt = getattr(torch, case["dtype"])
        q, k, v, dout, slopes = case_inputs(case)
        varlen = case.get("cu") is not None
        layout, dim = ("contiguous", 0) if varlen else (case["layout"], 1)
        loc = [ring_shard(torch.from_numpy(x), rank, world, layout, dim).to(dt).contiguous()
               for x in (q, k, v, dout)]
        al = torch.from_numpy(slopes) if slopes is not None else None
        runs = []
        for _ in range(2):  # twice: the results must be bit-identical
            torch.manual_seed(case["seed"])
            xs = [x.clone().requires_grad_(True) for x in loc[:3]]
            try:
                out, lse, _ = _call(case, *xs, al)
            except VarlenUnsupported as e:
                runs.append({"error": str(e)})
                continue
            out.backward(loc[3])
            runs.append({"out": out.detach(), "lse": lse, "dq": xs[0].grad, "dk": xs[1].grad, "dv": xs[2].grad})
        results.append(runs)
    torch.save(results, os.path.join(out_dir, "rank%d.pt" % rank))
    dist.destroy_process_group()


# ---- Memory ------------------------------------------------------------------------------------------
# Peak resident memory of one forward + backward, above the process's resident memory just before
# the inputs are made. Linux's VmHWM (the RSS high-water mark) is reset by writing 5 to
# /proc/self/clear_refs; MALLOC_MMAP_THRESHOLD_ (set by the parent) makes every large buffer its own
# mapping, returned to the system when freed, so the mark follows live memory: tensors, the
# library's workspaces and the communication buffers alike.


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/self/status" % field)


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _memory_inputs(torch, shape, hk, dt, rank, world):
    B, S, H, D = shape
    g = torch.Generator().manual_seed(1000 + rank)
    n = S // world
    q = torch.randn((B, n, H, D), generator=g).to(dt).requires_grad_(True)
    k = torch.randn((B, n, hk, D), generator=g).to(dt).requires_grad_(True)
    v = torch.randn((B, n, hk, D), generator=g).to(dt).requires_grad_(True)
    dout = torch.randn((B, n, H, D), generator=g).to(dt)
    return q, k, v, dout


def memory_rank(rank, world, store, spec, out_dir):
    """One rank of the ring at spec's shape: writes its peak (kB above the start) to out_dir."""
    torch, dist = _setup(rank, world, store)
    from cflash.distributed import ring_flash_attn_func

    dt = getattr(torch, spec["dtype"])
    small = _memory_inputs(torch, (1, 8 * world, 2, 8), 1, dt, rank, world)  # warm-up: links, library
    ring_flash_attn_func(*small[:3], causal=True).backward(small[3])
    dist.barrier()
    base = _rss_kb("VmRSS")
    _reset_peak()
    q, k, v, dout = _memory_inputs(torch, spec["shape"], spec["Hk"], dt, rank, world)
    out = ring_flash_attn_func(q, k, v, causal=True, heads_per_pass=spec.get("heads_per_pass"))
    out.backward(dout)
    peak = _rss_kb("VmHWM") - base
    dist.barrier()
    with open(os.path.join(out_dir, "peak%d" % rank), "w") as f:
        f.write(str(peak))
    dist.destroy_process_group()


def memory_single(spec, out_path):
    """The single-process call on the whole sequence, measured the same way."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    import cflash

    torch.set_num_threads(1)
    cflash.set_num_threads(1)
    dt = getattr(torch, spec["dtype"])
    small = _memory_inputs(torch, (1, 8, 2, 8), 1, dt, 0, 1)
    cflash.flash_attn_func(*small[:3], causal=True).backward(small[3])
    base = _rss_kb("VmRSS")
    _reset_peak()
    q, k, v, dout = _memory_inputs(torch, spec["shape"], spec["Hk"], dt, 0, 1)
    out = cflash.flash_attn_func(q, k, v, causal=True)
    out.backward(dout)
    peak = _rss_kb("VmHWM") - base
    with open(out_path, "w") as f:
        f.write(str(peak))


if __name__ == "__main__":  # python ring_worker.py single SPEC_REPR OUT
    import ast

    t0 = time.time()
    memory_single(ast.literal_eval(sys.argv[2]), sys.argv[3])
