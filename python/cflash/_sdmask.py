"""flash-attn's S_dmask, the third result of return_attn_probs=True, in the form its CUDA kernel
writes it, so that code (and tests) that decode it work unchanged. Materialised in NumPy from the
fp64 scores of _scores.py (not the test oracle): meant for tests and inspection, not for speed.

flash-attn (2.x) returns it only with dropout (an empty tensor otherwise), shaped (batch, nheads,
round_multiple(seqlen_q, 128), round_multiple(seqlen_k, 128)), in q's dtype. Its kernel walks the
key blocks of block_size_n columns from the last to the first, so entry (i, j) holds
exp(s_ij - m), m being the running maximum of row i over the blocks visited so far (that of j and
every later one), not the final softmax; dropped entries carry a set sign bit. Masked entries and
the padding hold 0 (flash-attn leaves some of them unwritten)."""

import numpy as np

from . import _core, _scores
from ._tensor import is_torch


def round_multiple(x, m):
    return (x + m - 1) // m * m


def block_size_n(head_dim, is_dropout, is_causal):
    """Key-block width of flash-attn's forward kernel (its _get_block_size_n, sm80 column): the
    blocks of S_dmask's running maximum. Head dims above 256 (which flash-attn refuses) use 64."""
    if head_dim <= 32:
        return 128
    if head_dim <= 64:
        return 64 if is_dropout else 128
    if head_dim <= 96:
        return 64
    if head_dim <= 128:
        return 32 if is_dropout else 64
    return 64


def _host(x):
    if x is None:
        return None
    if is_torch(x):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _unnormalised(t, block, keep):
    """t (1, H, Sq, Sk) masked fp64 scores -> exp(t - running block maximum), negated where
    keep == 0."""
    Sk = t.shape[-1]
    if Sk == 0:
        return t.copy()
    nb = -(-Sk // block)
    padded = np.full(t.shape[:-1] + (nb * block,), -np.inf)
    padded[..., :Sk] = t
    bmax = padded.reshape(t.shape[:-1] + (nb, block)).max(axis=-1)
    running = np.maximum.accumulate(bmax[..., ::-1], axis=-1)[..., ::-1]  # blocks j..last
    m = np.repeat(running, block, axis=-1)[..., :Sk]
    with np.errstate(invalid="ignore", over="ignore"):
        u = np.where(np.isfinite(m) & np.isfinite(t), np.exp(t - np.where(np.isfinite(m), m, 0.0)), 0.0)
    return np.where(keep.astype(bool), u, -u)


def s_dmask(q, k, softmax_scale, causal, window_size, softcap, alibi_slopes, dropout_p, seed,
            cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
    """S_dmask of an attention call (batch or varlen layout), of q's kind, device and dtype."""
    if not dropout_p > 0:
        out = np.empty((0,), dtype=np.float32)
        return _like(out, q)
    qn, kn, al = _host(q), _host(k), _host(alibi_slopes)
    H, D = qn.shape[-2], qn.shape[-1]
    block = block_size_n(D, True, causal)
    keep_all = None
    if cu_seqlens_q is None:
        B, Sq, Sk = qn.shape[0], qn.shape[1], kn.shape[1]
        seqs = [(b, qn[b:b + 1], kn[b:b + 1], al if al is None or al.ndim == 1 else al[b]) for b in range(B)]
        mq, mk = Sq, Sk
        keep_all = _core.dropout_mask(B, H, Sq, Sk, dropout_p, seed)
    else:
        cq, ck = _host(cu_seqlens_q).astype(np.int64), _host(cu_seqlens_k).astype(np.int64)
        B = len(cq) - 1
        seqs = [(b, qn[None, cq[b]:cq[b + 1]], kn[None, ck[b]:ck[b + 1]],
                 al if al is None or al.ndim == 1 else al[b]) for b in range(B)]
        mq = int(max_seqlen_q) if max_seqlen_q else int(max(np.diff(cq), default=0))
        mk = int(max_seqlen_k) if max_seqlen_k else int(max(np.diff(ck), default=0))
    out = np.zeros((B, H, round_multiple(mq, 128), round_multiple(mk, 128)))
    for b, qb, kb, ab in seqs:
        Sq, Sk = qb.shape[1], kb.shape[1]
        if Sq == 0 or Sk == 0:
            continue
        t = _scores.scores(qb, kb, softmax_scale, causal, window_size, softcap, ab)
        if keep_all is not None:
            keep = keep_all[b:b + 1]
        else:  # varlen: sequence b's mask is keyed by index b, rows and columns within it
            keep = _core.dropout_mask(b + 1, H, Sq, Sk, dropout_p, seed)[b:b + 1]
        out[b, :, :Sq, :Sk] = _unnormalised(t, block, keep)[0]
    return _like(out, q)


def _like(a, q):
    if is_torch(q):
        import torch

        return torch.from_numpy(a).to(device=q.device, dtype=q.dtype)
    return a.astype(q.dtype)
