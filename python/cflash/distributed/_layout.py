"""How a sequence is laid out across the ranks of a ring, and helpers that cut a whole tensor into
a rank's part and put the parts back together. contiguous: rank r holds rows [r * n, (r + 1) * n);
zigzag (balanced for causal attention): the sequence is cut into 2 * world_size chunks and rank r
holds chunks r and 2 * world_size - 1 - r, so every rank has as many visible (query, key) pairs."""

import numpy as np

from ._plan import LAYOUTS, segments


def _check(seqlen, world_size, rank, layout):
    if layout not in LAYOUTS:
        raise ValueError("layout: %r, expected one of %s" % (layout, ", ".join(LAYOUTS)))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError("rank %d, world_size %d: expected 0 <= rank < world_size" % (rank, world_size))
    parts = world_size * (2 if layout == "zigzag" else 1)
    if seqlen % parts:
        raise ValueError("seqlen %d: expected a multiple of %d for the %s layout over %d ranks"
                         % (seqlen, parts, layout, world_size))
    return seqlen // world_size


def ring_positions(seqlen, rank, world_size, layout="contiguous"):
    """Global positions (int64 NumPy, length seqlen / world_size) of a rank's rows, in local order:
    what rotary embeddings and position ids need on that rank."""
    n = _check(seqlen, world_size, rank, layout)
    return np.concatenate([np.arange(p, p + m) for _, m, p in segments(layout, rank, world_size, n)])


def _narrow(x, dim, start, length):
    if hasattr(x, "narrow"):  # torch
        return x.narrow(dim, start, length)
    idx = [slice(None)] * x.ndim
    idx[dim] = slice(start, start + length)
    return x[tuple(idx)]


def _cat(xs, dim):
    if hasattr(xs[0], "narrow"):
        import torch

        return torch.cat(xs, dim=dim)
    return np.concatenate(xs, axis=dim)


def ring_shard(x, rank, world_size, layout="contiguous", dim=1):
    """The rows of x (a torch tensor or NumPy array, the sequence along `dim`: 1 for (batch, seqlen,
    heads, dim), 0 for packed varlen rows) that `rank` holds. contiguous: a view; zigzag: a copy."""
    n = _check(x.shape[dim], world_size, rank, layout)
    runs = [_narrow(x, dim, p, m) for _, m, p in segments(layout, rank, world_size, n)]
    return runs[0] if len(runs) == 1 else _cat(runs, dim)


def ring_unshard(parts, layout="contiguous", dim=1):
    """The whole tensor from every rank's part (a list in rank order), inverse of ring_shard."""
    world_size = len(parts)
    n = parts[0].shape[dim]
    runs = []
    for r, x in enumerate(parts):
        for local, m, pos in segments(layout, r, world_size, n):
            runs.append((pos, _narrow(x, dim, local, m)))
    runs.sort(key=lambda t: t[0])
    return _cat([x for _, x in runs], dim)
