"""Attention scores and probabilities materialised in NumPy fp64, for what flash-attn's
return_attn_probs hands back (S_dmask). Package code: the test oracle (cflash.reference) stays
apart from it, so that the tests check the library against code the library does not use.
Shapes as in flash-attn: q (B, Sq, H, D), k (B, Sk, Hk, D); query head h reads KV head
h // (H // Hk). Semantics as include/cflash.h states them."""

import numpy as np


def _f64(x):
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def scores(q, k, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    """(B, H, Sq, Sk) fp64: s = scale * q.k, then softcap c * tanh(s / c), then the ALiBi bias
    -slope * |i + Sk - Sq - j|; -inf where query i does not see key j (causal / window, aligned
    bottom-right). Each row's softmax is taken over these."""
    q, k, slopes = _f64(q), _f64(k), _f64(alibi_slopes)
    B, Sq, H, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    s = scale * np.einsum("bihd,bjhd->bhij", q, np.repeat(k, H // Hk, axis=2))
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    ahead = np.arange(Sq)[:, None] + (Sk - Sq) - np.arange(Sk)[None, :]  # i + Sk - Sq - j
    if slopes is not None:
        s = s - slopes.reshape(-1, H)[:, :, None, None] * np.abs(ahead)
    left, right = window_size
    right = 0 if causal else right
    seen = np.ones((Sq, Sk), dtype=bool)
    if left >= 0:
        seen &= ahead <= left
    if right >= 0:
        seen &= ahead >= -right
    return np.where(seen, s, -np.inf)


def probabilities(q, k, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    """(B, H, Sq, Sk) fp64: the softmax over keys of scores(...); 0 in a row that sees no key."""
    s = scores(q, k, softmax_scale, causal, window_size, softcap, alibi_slopes)
    if s.shape[-1] == 0:
        return np.zeros(s.shape)
    top = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(top), top, 0.0))  # exp(-inf) = 0 where masked
    z = e.sum(axis=-1, keepdims=True)
    return np.divide(e, z, out=np.zeros_like(e), where=z > 0)
