"""NumPy fp64 references of the ops, written from the definitions (scores materialised), for tests
and for checking results by hand. Independent of libcflash. Shapes as in flash-attn:
q (B, Sq, H, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv)."""

import numpy as np


def _f64(x):
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def visible(sq, sk, causal=False, window_size=(-1, -1)):
    """bool (sq, sk): query i sees key j (masks aligned bottom-right)."""
    wl, wr = window_size
    if causal:
        wr = 0
    i = np.arange(sq)[:, None] + sk - sq
    j = np.arange(sk)[None, :]
    ok = np.ones((sq, sk), dtype=bool)
    if wl >= 0:
        ok &= j >= i - wl
    if wr >= 0:
        ok &= j <= i + wr
    return ok


def _qk(q, kk):
    """q . k (B, H, Sq, Sk). fp64 inputs: exact enough (the reference). fp32 ones (the naive
    computation): summed over d one product at a time, each product and sum rounded to fp32, as a
    plain loop does (the C oracle's naive); NumPy's einsum sums in blocks, more accurately than a
    naive computation, and the rule's bound came out tighter than its definition."""
    if q.dtype != np.float32:
        return np.einsum("bihd,bjhd->bhij", q, kk)
    qt, kt = q.transpose(0, 2, 1, 3), kk.transpose(0, 2, 1, 3)  # (B, H, S, D)
    s = np.zeros(qt.shape[:3] + (kt.shape[2],), np.float32)
    for d in range(qt.shape[3]):
        s += qt[:, :, :, None, d] * kt[:, :, None, :, d]
    return s


def _scores(q, k, scale, softcap, slopes, ok, rnd):
    """Transformed scores (B, H, Sq, Sk) with -inf where masked, and the scaled ones."""
    B, Sq, H, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    kk = np.repeat(k, H // Hk, axis=2)
    s = rnd(scale * _qk(q, kk))
    t = softcap * np.tanh(s / softcap) if softcap > 0 else s.copy()
    if slopes is not None:
        sl = slopes.reshape(-1, H) if slopes.ndim == 2 else slopes.reshape(1, H)
        dist = np.abs(np.arange(Sq)[:, None] + Sk - Sq - np.arange(Sk)[None, :]).astype(t.dtype)
        t = t - sl[:, :, None, None].astype(t.dtype) * dist[None, None]
    t = np.where(ok[None, None], t, -np.inf)
    return t, s


def _prec(dtype):
    """(working dtype, rounding function) for a computation in `dtype` (None = fp64 exact)."""
    if dtype is None:
        return np.float64, lambda x: x
    dt = np.dtype(dtype)
    if dt == np.float32:
        return np.float32, lambda x: x.astype(np.float32)
    return np.float32, lambda x: x.astype(dt).astype(np.float32)


def _cast(x, work):
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x).astype(work)


def attention(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
              alibi_slopes=None, dropout_p=0.0, dropout_mask=None, dtype=None):
    """Returns out (B, Sq, H, Dv), lse (B, H, Sq) and the probabilities P (B, H, Sq, Sk).
    dropout_mask (B, H, Sq, Sk), 1 = kept, applies with scaling 1/(1 - dropout_p).
    dtype None: fp64 throughout (the reference). dtype float32 / float16: the naive same-precision
    computation of the error rule (scores and P materialised and rounded to dtype, fp32 sums)."""
    work, rnd = _prec(dtype)
    q, k, v = _cast(q, work), _cast(k, work), _cast(v, work)
    slopes = _cast(alibi_slopes, work)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    H, Hk = q.shape[2], k.shape[2]
    ok = visible(q.shape[1], k.shape[1], causal, window_size)
    t, _ = _scores(q, k, scale, softcap, slopes, ok, rnd)
    m = t.max(axis=-1, keepdims=True) if t.shape[-1] else np.full(t.shape[:-1] + (1,), -np.inf, work)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(t - m)
    z = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(z[..., 0] > 0, np.log(z[..., 0]) + m[..., 0], -np.inf)
        p = np.where(z > 0, e / z, 0.0)
    pd = p
    if dropout_mask is not None and dropout_p > 0:
        pd = p * dropout_mask / (1.0 - dropout_p)
    vv = np.repeat(v, H // Hk, axis=2)
    out = rnd(np.einsum("bhij,bjhd->bihd", rnd(pd), vv))
    return out, lse, p


def scores(q, k, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    """The scaled, softcapped, ALiBi-biased scores (B, H, Sq, Sk) in fp64, -inf where masked: what
    each row's softmax is taken over."""
    q, k, slopes = _f64(q), _f64(k), _f64(alibi_slopes)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    ok = visible(q.shape[1], k.shape[1], causal, window_size)
    return _scores(q, k, scale, softcap, slopes, ok, lambda x: x)[0]


def attention_bwd(dout, q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                  alibi_slopes=None, dropout_p=0.0, dropout_mask=None, dtype=None):
    """Gradients dq, dk, dv of sum(out * dout) for attention(...); dtype as there."""
    work, rnd = _prec(dtype)
    q, k, v, dout = _cast(q, work), _cast(k, work), _cast(v, work), _cast(dout, work)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    H, Hk = q.shape[2], k.shape[2]
    g = H // Hk
    out, lse, p = attention(q, k, v, scale, causal, window_size, softcap, alibi_slopes, dropout_p, dropout_mask,
                            dtype)
    keep = 1.0
    if dropout_mask is not None and dropout_p > 0:
        keep = dropout_mask / (1.0 - dropout_p)
    kk, vv = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    dp = np.einsum("bihd,bjhd->bhij", dout, vv) * keep
    if dtype is None:  # exact: dS = P (dP - rowsum(P dP))
        dsum = (p * dp).sum(axis=-1, keepdims=True)
    else:  # as a plain same-precision backward does: P from the saved fp32 LSE, D = rowsum(dO O)
        ok = visible(q.shape[1], k.shape[1], causal, window_size)
        t, _ = _scores(q, k, scale, softcap, _cast(alibi_slopes, work), ok, rnd)
        with np.errstate(invalid="ignore"):
            p = np.where(np.isfinite(lse)[..., None], np.exp(t - lse[..., None]), 0.0).astype(work)
        p = rnd(p)
        dsum = np.einsum("bihd,bihd->bhi", dout, out)[..., None]
    dvv = np.einsum("bhij,bihd->bjhd", rnd(p * keep), dout)
    dt = p * (dp - dsum)
    if softcap > 0:
        s = scale * np.einsum("bihd,bjhd->bhij", q, kk)
        dt = dt * (1.0 - np.tanh(s / softcap) ** 2)
    dt = rnd(dt)
    dq = scale * np.einsum("bhij,bjhd->bihd", dt, kk)
    dkk = scale * np.einsum("bhij,bihd->bjhd", dt, q)
    B, Sk = k.shape[0], k.shape[1]
    dk = dkk.reshape(B, Sk, Hk, g, -1).sum(axis=3)
    dv = dvv.reshape(B, Sk, Hk, g, -1).sum(axis=3)
    return rnd(dq), rnd(dk), rnd(dv)


def rotary(x, cos, sin, interleaved=False, seqlen_offsets=0, conjugate=False):
    """x (B, S, H, D) rotated on its first 2 * cos.shape[-1] dims; cos, sin (S_ro, rotary_dim / 2);
    seqlen_offsets int or (B,). fp64."""
    x, cos, sin = _f64(x), _f64(cos), _f64(sin)
    B, S = x.shape[0], x.shape[1]
    r = cos.shape[-1]
    off = np.broadcast_to(np.asarray(seqlen_offsets, dtype=np.int64).reshape(-1), (B,))
    pos = off[:, None] + np.arange(S)[None, :]  # (B, S)
    c, s = cos[pos][:, :, None, :], sin[pos][:, :, None, :]
    if conjugate:
        s = -s
    out = x.copy()
    if interleaved:
        x1, x2 = x[..., 0:2 * r:2], x[..., 1:2 * r:2]
        out[..., 0:2 * r:2] = x1 * c - x2 * s
        out[..., 1:2 * r:2] = x1 * s + x2 * c
    else:
        x1, x2 = x[..., :r], x[..., r:2 * r]
        out[..., :r] = x1 * c - x2 * s
        out[..., r:2 * r] = x1 * s + x2 * c
    return out


def norm(x, weight, bias=None, residual=None, eps=1e-6, is_rms_norm=False):
    """y = norm(x + residual) * weight + bias over the last dim, and the summed input (fp64)."""
    h = _f64(x)
    if residual is not None:
        h = h + _f64(residual)
    if is_rms_norm:
        y = h / np.sqrt((h * h).mean(axis=-1, keepdims=True) + eps)
    else:
        mu = h.mean(axis=-1, keepdims=True)
        y = (h - mu) / np.sqrt(((h - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y, h


def norm_bwd(dy, h, weight, eps=1e-6, is_rms_norm=False):
    """Gradients (dh, dweight, dbias) of sum(y * dy) for y = norm(h) * weight + bias (fp64)."""
    dy, h, w = _f64(dy), _f64(h), _f64(weight)
    if is_rms_norm:
        r = 1.0 / np.sqrt((h * h).mean(axis=-1, keepdims=True) + eps)
        xhat = h * r
    else:
        mu = h.mean(axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(((h - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
        xhat = (h - mu) * r
    g = dy * w
    dh = g - xhat * (g * xhat).mean(axis=-1, keepdims=True)
    if not is_rms_norm:
        dh = dh - g.mean(axis=-1, keepdims=True)
    dh = dh * r
    axes = tuple(range(dy.ndim - 1))
    return dh, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
