"""Block offsets (cflash_attn_params q_offset / k_offset), the piece ring attention is built on:
an attention cut into blocks of queries x keys, each computed with its positions and merged by
LSE (cflash.attn_merge), equals the whole call, with every mask feature and dropout; the block
gradients sum to the whole call's. NumPy only (no torch, no processes)."""

import numpy as np
import pytest

import cflash
from cflash import _core

FEATURES = [  # (causal, window, softcap, alibi, dropout)
    (True, (-1, -1), 0.0, False, 0.0),
    (False, (5, 3), 0.0, False, 0.0),
    (True, (7, -1), 1.5, True, 0.2),
    (False, (-1, -1), 0.0, True, 0.3),
]


def _whole_and_blocks(rng, feat, cuts):
    causal, window, softcap, alibi, dropout = feat
    B, S, H, Hk, D = 2, 24, 4, 2, 16
    q = rng.standard_normal((B, S, H, D)).astype(np.float32)
    k = rng.standard_normal((B, S, Hk, D)).astype(np.float32)
    v = rng.standard_normal((B, S, Hk, D)).astype(np.float32)
    dout = rng.standard_normal((B, S, H, D)).astype(np.float32)
    slopes = (rng.uniform(0.1, 0.5, (B, H)).astype(np.float32)) if alibi else None
    seed = int(rng.integers(1, 2**62))
    args = (dropout, None, causal, window[0], window[1], softcap, slopes)
    out, lse = _core.attn_fwd(q, k, v, *args, seed=seed)
    dq, dk, dv = _core.attn_bwd(dout, q, k, v, out, lse, *args, False, seed=seed)
    edges = [0] + list(cuts) + [S]
    rows = list(zip(edges[:-1], edges[1:]))
    bout, blse = np.zeros_like(out), np.full_like(lse, -np.inf)
    bdq, bdk, bdv = np.zeros_like(dq), np.zeros_like(dk), np.zeros_like(dv)
    for i0, i1 in rows:
        parts, lses = [], []
        for j0, j1 in rows:
            o, l = _core.attn_fwd(q[:, i0:i1], k[:, j0:j1], v[:, j0:j1], *args, seed=seed, q_offset=i0,
                                  k_offset=j0)
            parts.append(o)
            lses.append(l)
        m, ml = cflash.attn_merge(np.stack(parts), np.stack(lses))
        bout[:, i0:i1], blse[:, :, i0:i1] = m, ml
    for i0, i1 in rows:  # the backward of each block with the whole call's out and lse
        for j0, j1 in rows:
            g = _core.attn_bwd(dout[:, i0:i1], q[:, i0:i1], k[:, j0:j1], v[:, j0:j1], out[:, i0:i1],
                               lse[:, :, i0:i1], *args, False, seed=seed, q_offset=i0, k_offset=j0)
            bdq[:, i0:i1] += g[0]
            bdk[:, j0:j1] += g[1]
            bdv[:, j0:j1] += g[2]
    return (out, lse, dq, dk, dv), (bout, blse, bdq, bdk, bdv)


def _close(name, got, want):
    """Blocks and the whole call are fp32 computations of the same sums in other orders (and the
    merge's rounding): equal to a few fp32 units of the largest magnitude."""
    assert not np.isnan(got).any(), "%s: NaN (an element not written?)" % name
    fin = np.isfinite(want)
    assert np.array_equal(fin, np.isfinite(got)), "%s: -inf rows differ" % name
    tol = 64 * 2.0**-24 * max(1.0, float(np.max(np.abs(want[fin]))) if fin.any() else 1.0)
    err = float(np.max(np.abs(got[fin] - want[fin]))) if fin.any() else 0.0
    assert err <= tol, "%s: max difference %.3g > %.3g" % (name, err, tol)


@pytest.mark.parametrize("feat", FEATURES, ids=lambda f: "c%d-w%d_%d-cap%g-al%d-dp%g" % (
    f[0], f[1][0], f[1][1], f[2], f[3], f[4]))
@pytest.mark.parametrize("cuts", [(12,), (6, 12, 18)], ids=["halves", "quarters"])
def test_blocks_merge_to_the_whole_call(rng, feat, cuts):
    whole, blocks = _whole_and_blocks(rng, feat, cuts)
    for name, w, b in zip(("out", "lse", "dq", "dk", "dv"), whole, blocks):
        _close(name, b, w)


def test_uneven_blocks_without_alignment_dependent_masks(rng):
    """Blocks with Sq != Sk keep the call's own Sk - Sq in masks and ALiBi, so only features that
    do not depend on the alignment compose freely; dropout (keyed by positions) and softcap do."""
    whole, blocks = _whole_and_blocks(rng, (False, (-1, -1), 2.0, False, 0.3), (5, 13, 18))
    for name, w, b in zip(("out", "lse", "dq", "dk", "dv"), whole, blocks):
        _close(name, b, w)


def test_dropout_mask_of_a_block_is_a_slice_of_the_whole():
    whole = _core.dropout_mask(2, 3, 40, 40, 0.4, seed=1234)
    for qo, ko in ((0, 0), (5, 3), (17, 29), (1, 2)):
        blk = _core.dropout_mask(2, 3, 11, 9, 0.4, seed=1234, q_offset=qo, k_offset=ko)
        assert np.array_equal(blk, whole[:, :, qo:qo + 11, ko:ko + 9]), (qo, ko)


def test_offsets_out_of_range_are_rejected():
    q = np.ones((1, 4, 1, 8), np.float32)
    with pytest.raises(ValueError, match=r"q_offset: -1, expected 0 <= q_offset <= 2\^32 - Sq"):
        _core.attn_fwd(q, q, q, 0.0, None, False, -1, -1, 0.0, None, q_offset=-1)
    with pytest.raises(ValueError, match=r"k_offset: 4294967293, expected"):
        _core.attn_fwd(q, q, q, 0.0, None, False, -1, -1, 0.0, None, k_offset=2**32 - 3)
