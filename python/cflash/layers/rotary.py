"""Rotary position embedding (RoPE) with flash-attn's API (flash_attn.layers.rotary):
apply_rotary_emb, apply_rotary_emb_qkv_, apply_rotary_emb_kv_ and the RotaryEmbedding module, on
libcflash. NumPy arrays or torch tensors; with torch, differentiable (the backward is the
conjugate rotation). RotaryEmbedding needs torch and is built on first access."""

import numpy as np

from .. import _core
from .._tensor import is_torch, to_array

__all__ = ["apply_rotary_emb", "apply_rotary_emb_func", "apply_rotary_emb_qkv_", "apply_rotary_emb_kv_",
           "apply_rotary_emb_torch", "RotaryEmbedding"]


def _torch():
    from .. import _torch as t

    return t


def _offsets(seqlen_offsets):
    """(tensor or None, int) for the custom ops."""
    if isinstance(seqlen_offsets, (int, np.integer)):
        return None, int(seqlen_offsets)
    return seqlen_offsets, 0


def _rotate_parts(x, cos, sin, interleaved, seqlen_offsets, parts, cos_k=None, sin_k=None, num_heads=0,
                  cu_seqlens=None, max_seqlen=None):
    """Rotates views of x in place (all of x when parts is empty); returns x."""
    if is_torch(x):
        offs, off = _offsets(seqlen_offsets)
        if offs is not None and not is_torch(offs):
            offs = _torch().torch.as_tensor(np.asarray(offs, dtype=np.int32))
        return _torch().rotate_inplace(x, cos, sin, offs, off, cu_seqlens, int(max_seqlen or 0), bool(interleaved),
                                       int(num_heads), parts, cos_k, sin_k)
    if not parts:
        _core.rotary(x, cos, sin, interleaved, False, seqlen_offsets, cu_seqlens, max_seqlen, num_heads,
                     inplace=True)
        return x
    for n, part in enumerate(parts):
        c, s = (cos, sin) if n == 0 or cos_k is None else (cos_k, sin_k)
        idx = [slice(None)] * x.ndim
        idx[part[1]] = part[2] if part[0] == "select" else slice(part[2], part[2] + part[3])
        _core.rotary(x[tuple(idx)], c, s, interleaved, False, seqlen_offsets, None, None, 0, inplace=True)
    return x


def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                     max_seqlen=None):
    """x (batch, seqlen, nheads, headdim), or (total_seqlen, nheads, headdim) with cu_seqlens
    (batch + 1,); cos, sin (seqlen_rotary, rotary_dim / 2); rotary_dim <= headdim, the rest passes
    through. interleaved: GPT-J pairs (even, odd) instead of GPT-NeoX halves. seqlen_offsets: int
    or (batch,): each sequence starts at that position. Returns the rotated x (x itself when
    inplace)."""
    x, cos, sin = to_array(x, "x"), to_array(cos, "cos"), to_array(sin, "sin")
    cu_seqlens = to_array(cu_seqlens, "cu_seqlens")
    if inplace:
        return _rotate_parts(x, cos, sin, interleaved, seqlen_offsets, None, cu_seqlens=cu_seqlens,
                             max_seqlen=max_seqlen)
    if is_torch(x):
        offs, off = _offsets(seqlen_offsets)
        if offs is not None and not is_torch(offs):
            offs = _torch().torch.as_tensor(np.asarray(offs, dtype=np.int32))
        return _torch().torch.ops.cflash.rotary(x, cos, sin, offs, off, cu_seqlens, int(max_seqlen or 0),
                                                bool(interleaved), False)
    return _core.rotary(x, cos, sin, interleaved, False, seqlen_offsets, cu_seqlens, max_seqlen)


apply_rotary_emb_func = apply_rotary_emb  # flash-attn's older name


def apply_rotary_emb_torch(x, cos, sin, interleaved=False):
    """Plain-torch rotation, flash-attn's reference: x (..., seqlen, nheads, headdim), cos / sin
    (seqlen, rotary_dim / 2) or (batch, seqlen, rotary_dim / 2), positions from 0."""
    import torch

    r = cos.shape[-1]
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    if interleaved:
        a, b = x[..., 0:2 * r:2], x[..., 1:2 * r:2]
        rot = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)
    else:
        a, b = x[..., :r], x[..., r:2 * r]
        rot = torch.cat((a * c - b * s, a * s + b * c), dim=-1)
    return torch.cat((rot, x[..., 2 * r:]), dim=-1)


def apply_rotary_emb_qkv_(qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False, seqlen_offsets=0,
                          num_heads_q=None):
    """In place on q and k of qkv (batch, seqlen, 3, nheads, headdim), or of the GQA layout
    (batch, seqlen, num_heads_q + 2 * num_heads_k, headdim) with num_heads_q given. cos_k / sin_k,
    when given, rotate k (XPos). Returns qkv."""
    qkv, cos, sin = to_array(qkv, "qkv"), to_array(cos, "cos"), to_array(sin, "sin")
    cos_k, sin_k = to_array(cos_k, "cos_k"), to_array(sin_k, "sin_k")
    nd = qkv.dim() if is_torch(qkv) else qkv.ndim
    if nd == 5:
        if qkv.shape[2] != 3:
            raise ValueError("qkv: shape %s, expected (batch, seqlen, 3, nheads, headdim)" % (tuple(qkv.shape),))
        parts = [("select", 2, 0), ("select", 2, 1)]
        return _rotate_parts(qkv, cos, sin, interleaved, seqlen_offsets, parts, cos_k, sin_k)
    if nd != 4 or num_heads_q is None:
        raise ValueError("qkv: shape %s, expected (batch, seqlen, 3, nheads, headdim), or 4 dims "
                         "(batch, seqlen, num_heads_q + 2 * num_heads_k, headdim) with num_heads_q given"
                         % (tuple(qkv.shape),))
    hq = int(num_heads_q)
    hk = (qkv.shape[2] - hq) // 2
    if hq < 1 or hk < 1 or qkv.shape[2] != hq + 2 * hk:
        raise ValueError("num_heads_q: %d with %d heads in qkv, expected heads = num_heads_q + 2 * num_heads_k"
                         % (hq, qkv.shape[2]))
    if cos_k is None and sin_k is None:
        return _rotate_parts(qkv, cos, sin, interleaved, seqlen_offsets, None, num_heads=hq + hk)
    parts = [("narrow", 2, 0, hq), ("narrow", 2, hq, hk)]
    return _rotate_parts(qkv, cos, sin, interleaved, seqlen_offsets, parts, cos_k, sin_k)


def apply_rotary_emb_kv_(kv, cos, sin, interleaved=False, seqlen_offsets=0):
    """In place on k of kv (batch, seqlen, 2, nheads_k, headdim). Returns kv."""
    kv, cos, sin = to_array(kv, "kv"), to_array(cos, "cos"), to_array(sin, "sin")
    nd = kv.dim() if is_torch(kv) else kv.ndim
    if nd != 5 or kv.shape[2] != 2:
        raise ValueError("kv: shape %s, expected (batch, seqlen, 2, nheads_k, headdim)" % (tuple(kv.shape),))
    return _rotate_parts(kv, cos, sin, interleaved, seqlen_offsets, [("select", 2, 0)])


def __getattr__(name):
    if name == "RotaryEmbedding":
        from ._rotary_module import RotaryEmbedding

        globals()["RotaryEmbedding"] = RotaryEmbedding
        return RotaryEmbedding
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
