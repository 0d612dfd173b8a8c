"""cflash.distributed: attention over a sequence split across processes (context parallelism, ring
attention) on torch.distributed: gloo for CPU tensors, NCCL for CUDA tensors, the same code.

Each rank holds its slice of the sequence (q, k, v of the same length on every rank). K/V blocks
travel around the ring by P2P while each rank computes its queries against the block it holds; the
partial results merge by their LSE (cflash_attn_merge), and the backward passes dK/dV back around
the ring. Masks, ALiBi and dropout use global positions (cflash_attn_params q_offset / k_offset),
so the result equals the single-process call on the whole sequence (the same dropout mask, too).

    import torch.distributed as dist
    from cflash.distributed import ring_flash_attn_func, ring_shard, ring_unshard
    dist.init_process_group("gloo")                       # or "nccl" with CUDA tensors
    r, P = dist.get_rank(), dist.get_world_size()
    q, k, v = (ring_shard(x, r, P, layout="zigzag") for x in (Q, K, V))   # (B, S / P, H, D)
    out = ring_flash_attn_func(q, k, v, causal=True, layout="zigzag")
    out.sum().backward()

Layouts: "contiguous" (default; rank r holds rows [r * S / P, (r + 1) * S / P)) and "zigzag" (the
sequence in 2P chunks, rank r holding chunks r and 2P - 1 - r: balanced work under a causal mask).
ring_shard / ring_unshard cut and reassemble tensors for either; ring_positions gives the global
positions of a rank's rows (for rotary embeddings). torch is imported with this module."""

from .._tensor import is_torch
from ..flash_attn_interface import _scale, _window
from ._layout import ring_positions, ring_shard, ring_unshard
from ._plan import LAYOUTS, VarlenUnsupported
from . import _ring

__all__ = [
    "ring_flash_attn_func",
    "zigzag_ring_flash_attn_func",
    "ring_flash_attn_varlen_func",
    "ring_shard",
    "ring_unshard",
    "ring_positions",
    "comm_stats",
    "VarlenUnsupported",
]


def _check(q, k, v, alibi_slopes, dropout_p, ndim, layout):
    import torch

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not is_torch(x):
            raise ValueError("%s: %s, expected a torch.Tensor (ring attention runs on torch.distributed)"
                             % (name, type(x).__name__))
        if x.dim() != ndim:
            raise ValueError("%s: %d dims, expected %d" % (name, x.dim(), ndim))
    rd = ndim - 3
    if k.shape[rd] != q.shape[rd] or v.shape[rd] != q.shape[rd]:
        raise ValueError("q, k, v: local seqlens %d, %d, %d, expected equal (each rank holds the same slice "
                         "of one sequence for queries and keys)" % (q.shape[rd], k.shape[rd], v.shape[rd]))
    if layout not in LAYOUTS:
        raise ValueError("layout: %r, expected one of %s" % (layout, ", ".join(LAYOUTS)))
    if not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError("dropout_p: %g, expected a value in [0, 1)" % dropout_p)
    if alibi_slopes is not None and not is_torch(alibi_slopes):
        alibi_slopes = torch.as_tensor(alibi_slopes, device=q.device)
    return alibi_slopes


def _run(q, k, v, alibi_slopes, cfg, dropout_p, return_attn_probs):
    ring = cfg.ring
    if dropout_p > 0:
        from .._torch import new_seed

        cfg.seed = ring.broadcast_seed(new_seed(), q.device)
    out, lse = _ring.RingAttention.apply(q, k, v, alibi_slopes, cfg)
    return (out, lse, None) if return_attn_probs else out


def ring_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                         softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                         group=None, layout="contiguous", heads_per_pass=None):
    """flash_attn_func over a sequence split across the ranks of `group` (default: the default
    process group; a plain single-process call when torch.distributed is not initialised).

    q (batch, seqlen / P, nheads, headdim), k, v (batch, seqlen / P, nheads_k, headdim[_v]): this
    rank's rows in `layout` ("contiguous" or "zigzag", see ring_shard). Arguments as flash-attn's
    flash_attn_func, for the whole sequence: causal and window_size by global positions, ALiBi
    slopes (nheads,) or (batch, nheads), dropout with one seed for all ranks (drawn from torch's
    generator on rank 0). heads_per_pass: KV heads per trip around the ring (None: ceil(nheads_k /
    8)); fewer heads keep less memory in flight per rank at the cost of more messages; with dropout
    all heads go in one pass. Returns this rank's out (batch, seqlen / P, nheads, headdim_v); with
    return_attn_probs (out, softmax_lse (batch, nheads, seqlen / P), None): the probabilities of
    the whole rows are not materialised. Differentiable (dq, dk, dv of this rank's rows)."""
    alibi_slopes = _check(q, k, v, alibi_slopes, dropout_p, 4, layout)
    wl, wr = _window(window_size)
    cfg = _ring.Config(_ring.Ring(group), False, layout, float(dropout_p), _scale(softmax_scale, q), bool(causal),
                       (wl, wr), float(softcap), alibi_slopes is not None, bool(deterministic), 0, heads_per_pass)
    return _run(q, k, v, alibi_slopes, cfg, dropout_p, return_attn_probs)


def zigzag_ring_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                                softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                                group=None, heads_per_pass=None):
    """ring_flash_attn_func with layout="zigzag" (each rank holds chunks r and 2P - 1 - r)."""
    return ring_flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                deterministic, return_attn_probs, group, "zigzag", heads_per_pass)


def ring_flash_attn_varlen_func(q, k, v, cu_seqlens, max_seqlen=None, dropout_p=0.0, softmax_scale=None,
                                causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                                deterministic=False, return_attn_probs=False, group=None, heads_per_pass=None):
    """flash_attn_varlen_func (self-attention) over documents packed end to end into one sequence
    of total rows, split contiguously across the ranks: rank r holds packed rows [r * T, (r + 1) *
    T) as q, k, v (T, nheads[_k], headdim), T the same on every rank; documents may cross rank
    boundaries. cu_seqlens: int32 (batch + 1,), the documents of the whole packed sequence (the
    same on every rank; rows past cu_seqlens[-1] belong to no document: out 0, lse -inf).
    max_seqlen is accepted for flash-attn's signature and not needed. alibi_slopes (nheads,) or
    (batch, nheads) by document. Returns this rank's out (T, nheads, headdim_v), or (out,
    softmax_lse (nheads, T), None). One case is not served: with dropout, a document that
    crosses ranks in pieces of unequal length under a window or ALiBi raises VarlenUnsupported
    (the library aligns masks by each call's own lengths; see README)."""
    import numpy as np

    alibi_slopes = _check(q, k, v, alibi_slopes, dropout_p, 3, "contiguous")
    cu = cu_seqlens.detach().cpu().numpy() if is_torch(cu_seqlens) else np.asarray(cu_seqlens)
    cu = cu.astype(np.int64)
    ring = _ring.Ring(group)
    total = q.shape[0] * ring.world
    if cu.ndim != 1 or len(cu) < 1 or cu[0] != 0 or np.any(np.diff(cu) < 0) or cu[-1] > total:
        raise ValueError("cu_seqlens: expected 0, non-decreasing, ending at most at the packed total %d "
                         "(= %d rows x %d ranks)" % (total, q.shape[0], ring.world))
    wl, wr = _window(window_size)
    cfg = _ring.Config(ring, True, "contiguous", float(dropout_p), _scale(softmax_scale, q), bool(causal), (wl, wr),
                       float(softcap), alibi_slopes is not None, bool(deterministic), 0, heads_per_pass, cu)
    cfg.check_varlen(q.shape[0])
    return _run(q, k, v, alibi_slopes, cfg, dropout_p, return_attn_probs)


def comm_stats(reset=False):
    """Bytes sent / received and messages posted by this rank's ring calls since the last reset:
    {"forward": {"sent", "received", "messages"}, "backward": {...}}. For bench/ring_bench.py."""
    snap = {k: dict(v) for k, v in _ring.STATS.items()}
    if reset:
        _ring.reset_stats()
    return snap
