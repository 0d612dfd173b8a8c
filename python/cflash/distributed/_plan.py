"""Which attention blocks a ring step computes: for the queries of this rank and the K/V block of
rank `src`, the pairs of row ranges whose keys some query can see, each with its global positions
(cflash_attn_params q_offset / k_offset) and the masks to pass. Pure Python and NumPy: no torch, no
communication, so the plans are tested on their own."""

from typing import NamedTuple, Optional, Tuple

import numpy as np

LAYOUTS = ("contiguous", "zigzag")


class Block(NamedTuple):
    q0: int  # local query rows [q0, q1)
    q1: int
    k0: int  # rows [k0, k1) of the K/V block being visited
    k1: int
    q_offset: int  # positions passed to the library (cflash_attn_params)
    k_offset: int
    causal: bool
    window: Tuple[int, int]
    cu_q: Optional[np.ndarray] = None  # varlen: int32 cu_seqlens of the call (else None)
    cu_k: Optional[np.ndarray] = None


def segments(layout, rank, world, seqlen_local):
    """(local row, length, global position) of each contiguous run of a rank's rows."""
    if layout == "contiguous":
        return [(0, seqlen_local, rank * seqlen_local)]
    if layout == "zigzag":
        if seqlen_local % 2:
            raise ValueError("zigzag layout: local seqlen %d, expected an even number (two chunks of "
                             "seqlen / (2 * world_size))" % seqlen_local)
        c = seqlen_local // 2
        return [(0, c, rank * c), (c, c, (2 * world - 1 - rank) * c)]
    raise ValueError("layout: %r, expected one of %s" % (layout, ", ".join(LAYOUTS)))


def _diff_range(qpos, n, kpos, m):
    """Smallest and largest key position minus query position over an n x m block."""
    return kpos - (qpos + n - 1), kpos + m - 1 - qpos


def _bounds(causal, window):
    """Allowed (key - query) position differences [lo, hi]; None = unbounded."""
    wl, wr = window
    lo = -wl if wl >= 0 else None
    hi = 0 if causal else (wr if wr >= 0 else None)
    return lo, hi


def visibility(qpos, n, kpos, m, causal, window):
    """'none', 'some' or 'all': which (query, key) pairs of the block the masks let through."""
    if n <= 0 or m <= 0:
        return "none"
    dmin, dmax = _diff_range(qpos, n, kpos, m)
    lo, hi = _bounds(causal, window)
    a = dmin if lo is None else max(dmin, lo)
    b = dmax if hi is None else min(dmax, hi)
    if a > b:
        return "none"
    return "all" if a == dmin and b == dmax else "some"


def dense_blocks(layout, rank, src, world, seqlen_local, causal, window):
    """Blocks of this rank's queries against rank src's K/V (batch layout). Every run of rows has
    the same length, so each block is square and its positions are its offsets."""
    out = []
    for q0, n, qpos in segments(layout, rank, world, seqlen_local):
        for k0, m, kpos in segments(layout, src, world, seqlen_local):
            if visibility(qpos, n, kpos, m, causal, window) != "none":
                out.append(Block(q0, q0 + n, k0, k0 + m, qpos, kpos, causal, window))
    return out


# ---- Varlen: documents packed end to end, the packed rows split contiguously across ranks ------


def _pieces(cu, lo, hi):
    """(doc, first row, end row) of the documents overlapping packed rows [lo, hi)."""
    d0 = int(np.searchsorted(cu, lo, side="right")) - 1
    out = []
    for d in range(max(d0, 0), len(cu) - 1):
        a, b = max(int(cu[d]), lo), min(int(cu[d + 1]), hi)
        if int(cu[d]) >= hi:
            break
        if a < b:
            out.append((d, a, b))
    return out


def _cu(docs, lens):
    """cu_seqlens for consecutive documents docs[0].. with the given lengths, led by docs[0] empty
    sequences so that the library's sequence index b is the global document index (ALiBi [B, H]
    slopes and dropout keys)."""
    c = np.zeros(docs[0] + len(lens) + 1, dtype=np.int32)
    c[docs[0] + 1:] = np.cumsum(lens)
    return c


class VarlenUnsupported(NotImplementedError):
    pass


def varlen_blocks(cu, rank, src, world, total_local, causal, window, alibi, dropout):
    """Blocks of this rank's packed rows against rank src's, for self-attention over the documents
    of the global cu_seqlens `cu` (rank r holds packed rows [r * total_local, (r + 1) * total_local)).
    Within one rank the pieces of each document have equal query and key lengths; across ranks at
    most one document spans both (pieces of lengths a and b): the library aligns masks by the
    call's own b - a, which the offsets absorb unless dropout also needs the exact positions."""
    qlo, klo = rank * total_local, src * total_local
    qp = _pieces(cu, qlo, qlo + total_local)
    if src == rank:
        out = []
        head = [p for p in qp if p[1] > cu[p[0]]]  # a document that began on an earlier rank
        rest = [p for p in qp if p[1] == cu[p[0]]]
        for group, pos in ((head, None), (rest, 0)):
            if not group:
                continue
            docs = [p[0] for p in group]
            lens = [p[2] - p[1] for p in group]
            off = int(group[0][1] - cu[group[0][0]]) if pos is None else 0
            c = _cu(docs, lens)
            r0, r1 = group[0][1] - qlo, group[-1][2] - qlo
            out.append(Block(r0, r1, r0, r1, off, off, causal, window, c, c))
        return out
    kp = {p[0]: p for p in _pieces(cu, klo, klo + total_local)}
    out = []
    for d, a0, a1 in qp:
        if d not in kp:
            continue
        _, b0, b1 = kp[d]
        qpos, kpos, n, m = a0 - int(cu[d]), b0 - int(cu[d]), a1 - a0, b1 - b0
        vis = visibility(qpos, n, kpos, m, causal, window)
        if vis == "none":
            continue
        delta = m - n  # the call's own Sk - Sq
        if delta == 0:
            qo, ko, cz, win = qpos, kpos, causal, window
        elif vis == "all" and not alibi:
            qo, ko, cz, win = qpos, kpos, False, (-1, -1)  # nothing depends on the alignment
        elif dropout > 0:
            raise VarlenUnsupported(
                "ring varlen: document %d spans ranks %d and %d with pieces of %d queries and %d keys, "
                "and with dropout the masks/ALiBi there cannot be aligned: cflash_attn_params aligns by "
                "the call's own Sk - Sq, and dropout needs the exact positions (q_offset %d, k_offset %d)"
                % (d, src, rank, n, m, qpos, kpos))
        elif delta < 0:
            qo, ko, cz, win = qpos - delta, kpos, causal, window
        else:
            qo, ko, cz, win = qpos, kpos + delta, causal, window
        c_q, c_k = _cu([d], [n]), _cu([d], [m])
        out.append(Block(a0 - qlo, a1 - qlo, b0 - klo, b1 - klo, qo, ko, cz, win, c_q, c_k))
    return out
