"""The library's attention calls on plain arrays (NumPy or torch, no autograd): allocate the
outputs like the inputs, build the params, call C on torch's current CUDA stream where relevant.
The public functions (flash_attn_interface.py) and the torch custom ops (_torch.py) sit on these."""

import ctypes
import threading

import numpy as np

from . import _lib
from ._lib import lib, check
from ._tensor import DL, dl, ptr, field, empty, host_int32, cuda_stream_of, device_guard, maybe_contiguous

_MASK64 = (1 << 64) - 1


# ---- Calling, or explaining the call ----

_explain = threading.local()


def explaining():
    return getattr(_explain, "sink", None) is not None


def _run(name, op, what, ctx, *args):
    """Calls the library function `name`; while cflash.explain() collects, the call is made in
    the context's explain mode (same validation and selection code, nothing computed or written)
    and its text is collected under `op`."""
    sink = getattr(_explain, "sink", None)
    if sink is None:
        check(_lib.fn(name)(ctx, *args), what)
        return
    buf = ctypes.create_string_buffer(16384)
    check(lib.cflash_context_set_explain(ctx, buf, len(buf)), "explain")
    try:
        st = _lib.fn(name)(ctx, *args)
    finally:  # the mode covers one call: never leave it set for a later real call
        lib.cflash_context_set_explain(ctx, None, 0)
    sink.append((op, st, buf.value.decode("utf-8", "replace")))


def make_params(dropout_p=0.0, softmax_scale=None, causal=False, window_left=-1, window_right=-1,
                softcap=0.0, alibi=None, seed=0, offset=0, deterministic=False, q_offset=0, k_offset=0):
    """A cflash_attn_params; alibi is a DL holder (or None) kept alive by the caller. q_offset,
    k_offset: positions of the call's first query / key in a longer sequence (ring attention)."""
    p = _lib.AttnParams()
    lib.cflash_attn_params_init(ctypes.byref(p))
    p.softmax_scale = 0.0 if softmax_scale is None else float(softmax_scale)
    p.causal = 1 if causal else 0
    p.window_left = int(window_left)
    p.window_right = int(window_right)
    p.softcap = float(softcap)
    p.alibi_slopes = field(alibi)
    p.dropout_p = float(dropout_p)
    p.seed = int(seed) & _MASK64
    p.offset = int(offset) & _MASK64
    p.deterministic = 1 if deterministic else 0
    p.q_offset, p.k_offset = int(q_offset), int(k_offset)
    return p


def _alibi(alibi_slopes, q):
    if alibi_slopes is None:
        return None
    return DL(maybe_contiguous(alibi_slopes), "alibi_slopes")


def attn_fwd(q, k, v, dropout_p, softmax_scale, causal, window_left, window_right, softcap,
             alibi_slopes, seed=0, offset=0, q_offset=0, k_offset=0):
    """out (B, Sq, H, Dv) like q, lse float32 (B, H, Sq)."""
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    _shape_check(q, 4, "q", "(batch, seqlen_q, nheads, headdim)")
    _shape_check(v, 4, "v", "(batch, seqlen_k, nheads_k, headdim_v)")
    B, Sq, H, _ = q.shape
    out = empty(q, (B, Sq, H, v.shape[-1]))
    lse = empty(q, (B, H, Sq), "f32")
    a = _alibi(alibi_slopes, q)
    p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap, a, seed, offset,
                    q_offset=q_offset, k_offset=k_offset)
    hq, hk, hv, ho, hl = DL(q, "q"), DL(k, "k"), DL(v, "v"), DL(out, "out"), DL(lse, "lse")
    with device_guard(q):
        ctx = _lib.context(cuda_stream_of(q))
        _run("cflash_attn_fwd", "attn_fwd", "attention forward", ctx, ctypes.byref(p), hq.ptr, hk.ptr, hv.ptr, ho.ptr,
             hl.ptr)
        if explaining():  # the backward of this call, with placeholder gradients
            hg = [DL(empty(x, x.shape), n) for x, n in ((q, "dq"), (k, "dk"), (v, "dv"))]
            _run("cflash_attn_bwd", "attn_bwd", "", ctx, ctypes.byref(p), ho.ptr, hq.ptr, hk.ptr, hv.ptr, ho.ptr,
                 hl.ptr, *[x.ptr for x in hg])
    return out, lse


def attn_bwd(dout, q, k, v, out, lse, dropout_p, softmax_scale, causal, window_left, window_right,
             softcap, alibi_slopes, deterministic, seed=0, offset=0, q_offset=0, k_offset=0):
    """dq, dk, dv like q, k, v."""
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    dq, dk, dv = empty(q, q.shape), empty(k, k.shape), empty(v, v.shape)
    a = _alibi(alibi_slopes, q)
    p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap, a, seed, offset,
                    deterministic, q_offset, k_offset)
    h = [DL(x, n) for x, n in ((dout, "dout"), (q, "q"), (k, "k"), (v, "v"), (out, "out"), (lse, "lse"),
                               (dq, "dq"), (dk, "dk"), (dv, "dv"))]
    with device_guard(q):
        ctx = _lib.context(cuda_stream_of(q))
        _run("cflash_attn_bwd", "attn_bwd", "attention backward", ctx, ctypes.byref(p), *[x.ptr for x in h])
    return dq, dk, dv


def attn_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                    softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, seed=0,
                    offset=0, q_offset=0, k_offset=0):
    """out (total_q, H, Dv) like q, lse float32 (H, total_q)."""
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    _shape_check(q, 3, "q", "(total_q, nheads, headdim)")
    _shape_check(v, 3, "v", "(total_k, nheads_k, headdim_v)")
    T, H, _ = q.shape
    out = empty(q, (T, H, v.shape[-1]))
    lse = empty(q, (H, T), "f32")
    cq, ck = host_int32(cu_seqlens_q, "cu_seqlens_q"), host_int32(cu_seqlens_k, "cu_seqlens_k")
    a = _alibi(alibi_slopes, q)
    p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap, a, seed, offset,
                    q_offset=q_offset, k_offset=k_offset)
    h = [DL(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (cq, "cu_seqlens_q"), (ck, "cu_seqlens_k"))]
    ho, hl = DL(out, "out"), DL(lse, "lse")
    with device_guard(q):
        ctx = _lib.context(cuda_stream_of(q))
        mq, mk = ctypes.c_int64(int(max_seqlen_q or 0)), ctypes.c_int64(int(max_seqlen_k or 0))
        _run("cflash_attn_varlen_fwd", "attn_varlen_fwd", "varlen attention forward", ctx, ctypes.byref(p),
             *[x.ptr for x in h], mq, mk, ho.ptr, hl.ptr)
        if explaining():
            hg = [DL(empty(x, x.shape), n) for x, n in ((q, "dq"), (k, "dk"), (v, "dv"))]
            _run("cflash_attn_varlen_bwd", "attn_varlen_bwd", "", ctx, ctypes.byref(p), ho.ptr, *[x.ptr for x in h[:3]],
                 ho.ptr, hl.ptr, *[x.ptr for x in h[3:]], mq, mk, *[x.ptr for x in hg])
    return out, lse


def attn_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    dropout_p, softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                    deterministic, seed=0, offset=0, q_offset=0, k_offset=0):
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    dq, dk, dv = empty(q, q.shape), empty(k, k.shape), empty(v, v.shape)
    cq, ck = host_int32(cu_seqlens_q, "cu_seqlens_q"), host_int32(cu_seqlens_k, "cu_seqlens_k")
    a = _alibi(alibi_slopes, q)
    p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap, a, seed, offset,
                    deterministic, q_offset, k_offset)
    h = [DL(x, n) for x, n in ((dout, "dout"), (q, "q"), (k, "k"), (v, "v"), (out, "out"), (lse, "lse"),
                               (cq, "cu_seqlens_q"), (ck, "cu_seqlens_k"))]
    hg = [DL(x, n) for x, n in ((dq, "dq"), (dk, "dk"), (dv, "dv"))]
    with device_guard(q):
        ctx = _lib.context(cuda_stream_of(q))
        _run("cflash_attn_varlen_bwd", "attn_varlen_bwd", "varlen attention backward", ctx, ctypes.byref(p),
             *[x.ptr for x in h], ctypes.c_int64(int(max_seqlen_q or 0)), ctypes.c_int64(int(max_seqlen_k or 0)),
             *[x.ptr for x in hg])
    return dq, dk, dv


def dropout_mask(batch, nheads, seqlen_q, seqlen_k, dropout_p, seed, offset=0, q_offset=0, k_offset=0):
    """The keep mask every backend uses: uint8 NumPy (B, H, Sq, Sk), 1 = kept."""
    m = np.empty((batch, nheads, seqlen_q, seqlen_k), dtype=np.uint8)
    p = make_params(dropout_p=dropout_p, seed=seed, offset=offset, q_offset=q_offset, k_offset=k_offset)
    hm = DL(m, "mask")
    check(lib.cflash_attn_dropout_mask(ctypes.byref(p), hm.ptr), "dropout mask")
    return m


def _shape_check(x, ndim, name, layout):
    # Only what the output allocation needs; the library checks everything else.
    nd = x.dim() if hasattr(x, "dim") else x.ndim
    if nd != ndim:
        raise ValueError("%s: expected %d dims %s, got %d" % (name, ndim, layout, nd))


# ---- Rotary ----


def _host_offsets(seqlen_offsets):
    """(int offset, int32 host array or None) from an int or a (B,) tensor."""
    if seqlen_offsets is None or isinstance(seqlen_offsets, (int, np.integer)):
        return int(seqlen_offsets or 0), None
    x = seqlen_offsets
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 0:
        return int(x), None
    if x.dtype.kind not in "iu":
        raise ValueError("seqlen_offsets: dtype %s, expected an integer tensor (batch,)" % x.dtype)
    return 0, np.ascontiguousarray(x, dtype=np.int32)


def _table_dtype(t, x):
    """cos/sin as float32 or x's dtype (what the library takes), last dim contiguous."""
    t = maybe_contiguous(t)
    if t.dtype != x.dtype and str(t.dtype) not in ("float32", "torch.float32"):
        t = t.float() if hasattr(t, "float") else t.astype(np.float32)
    return t


def rotary(x, cos, sin, interleaved=False, conjugate=False, seqlen_offsets=0, cu_seqlens=None,
           max_seqlen=None, num_heads=0, inplace=False):
    """Rotates x (B, S, H, D) or varlen (total, H, D); returns the result (x itself when inplace)."""
    if not inplace:
        x = maybe_contiguous(x)
    cos, sin = _table_dtype(cos, x), _table_dtype(sin, x)
    off, offs = _host_offsets(seqlen_offsets)
    cu = host_int32(cu_seqlens, "cu_seqlens")
    p = _lib.RotaryParams()
    _lib.fn("cflash_rotary_params_init")(ctypes.byref(p))
    p.interleaved, p.conjugate = int(bool(interleaved)), int(bool(conjugate))
    p.seqlen_offset = off
    ho, hc = dl(offs, "seqlen_offsets"), dl(cu, "cu_seqlens")
    p.seqlen_offsets, p.cu_seqlens = field(ho), field(hc)
    p.max_seqlen = int(max_seqlen or 0)
    p.num_heads = int(num_heads or 0)
    out = x if inplace else empty(x, x.shape)
    hx, hcos, hsin, hout = DL(x, "x"), DL(cos, "cos"), DL(sin, "sin"), DL(out, "out")
    with device_guard(x):
        ctx = _lib.context(cuda_stream_of(x))
        _run("cflash_rotary_apply", "rotary", "rotary", ctx, ctypes.byref(p), hx.ptr, hcos.ptr, hsin.ptr, hout.ptr)
    return out


def rotary_tables(seqlen, rotary_dim, base=10000.0, interpolation_factor=1.0, dtype=np.float32, position_start=0):
    """cos, sin (seqlen, rotary_dim / 2) as NumPy arrays, computed in fp64 by the library."""
    cos = np.empty((seqlen, rotary_dim // 2), dtype=dtype)
    sin = np.empty_like(cos)
    p = _lib.RotaryTableParams()
    _lib.fn("cflash_rotary_table_params_init")(ctypes.byref(p))
    p.base, p.interpolation_factor, p.position_start = float(base), float(interpolation_factor), int(position_start)
    hc, hs = DL(cos, "cos"), DL(sin, "sin")
    check(_lib.fn("cflash_rotary_tables")(ctypes.byref(p), hc.ptr, hs.ptr), "rotary tables")
    return cos, sin


# ---- Norm ----


def _norm_params(is_rms_norm, eps, dropout_p, seed):
    p = _lib.NormParams()
    _lib.fn("cflash_norm_params_init")(ctypes.byref(p))
    p.type = _lib.NORM_RMS if is_rms_norm else _lib.NORM_LAYER
    p.eps, p.dropout_p = float(eps), float(dropout_p)
    p.seed, p.offset = int(seed) & _MASK64, 0
    return p


def _rows(x, n):
    return x.reshape(-1, n) if x is not None else None


def norm_fwd(x, weight, bias, residual, eps, dropout_p, seed, is_rms_norm, residual_in_fp32):
    """y like x, h (the summed input, "residual_out") or None when it would equal x, mean (or None),
    rstd; all 2-D (M, N) except y, which has x's shape."""
    N = x.shape[-1]
    shape = tuple(x.shape)
    x2 = maybe_contiguous(_rows(x, N))
    r2 = maybe_contiguous(_rows(residual, N))
    weight, bias = maybe_contiguous(weight), maybe_contiguous(bias)
    M = x2.shape[0]
    y = empty(x2, (M, N))
    if residual is not None:
        res_dtype = "f32" if str(residual.dtype).endswith("float32") else None
        h = empty(r2, (M, N), res_dtype if res_dtype else None)
    elif residual_in_fp32 and not str(x.dtype).endswith("float32") or dropout_p > 0:
        h = empty(x2, (M, N), "f32" if residual_in_fp32 else None)
    else:
        h = None
    mean = None if is_rms_norm else empty(x2, (M,), "f32")
    rstd = empty(x2, (M,), "f32")
    p = _norm_params(is_rms_norm, eps, dropout_p, seed)
    hs = [dl(t, n) for t, n in ((x2, "x"), (r2, "residual"), (weight, "weight"), (bias, "bias"), (y, "out"),
                                (h, "residual_out"), (mean, "mean"), (rstd, "rstd"))]
    with device_guard(x):
        ctx = _lib.context(cuda_stream_of(x))
        _run("cflash_norm_fwd", "norm_fwd", "norm forward", ctx, ctypes.byref(p), *[ptr(t) for t in hs])
    if explaining():  # the backward of this call (same code as the real one), placeholder gradients
        norm_bwd(y, h if h is not None else x2, weight, bias, mean, rstd, None, eps, dropout_p, seed, is_rms_norm,
                 x2, r2 is not None, r2)
    return y.reshape(shape), h, mean, rstd


def norm_bwd(dy, h, weight, bias, mean, rstd, dresidual_out, eps, dropout_p, seed, is_rms_norm, x_dtype_like,
             has_residual, residual_like=None):
    """dx (like x_dtype_like, 2-D), dweight, dbias (or None), dresidual (or None)."""
    N = h.shape[-1]
    dy2 = maybe_contiguous(_rows(dy, N))
    dro = maybe_contiguous(_rows(dresidual_out, N))
    M = h.shape[0]
    dx = empty(x_dtype_like, (M, N))
    # The library takes weight / bias in float32 or h's dtype: with h kept in fp32
    # (residual_in_fp32) and a bf16/fp16 weight, pass an fp32 copy (N elements) and cast back.
    w_like, b_like = weight, bias
    if weight is not None and not _same_dtype(weight, h) and not _is_f32(weight):
        weight = _to_f32(weight)
    if bias is not None and not _same_dtype(bias, h) and not _is_f32(bias):
        bias = _to_f32(bias)
    dw = empty(weight, weight.shape) if weight is not None else None
    db = empty(bias, bias.shape) if bias is not None else None
    dres = empty(residual_like if residual_like is not None else h, (M, N)) if has_residual else None
    p = _norm_params(is_rms_norm, eps, dropout_p, seed)
    hs = [dl(t, n) for t, n in ((dy2, "dy"), (h, "x"), (weight, "weight"), (bias, "bias"), (mean, "mean"),
                                (rstd, "rstd"), (dro, "dresidual_out"), (dx, "dx"), (dw, "dweight"),
                                (db, "dbias"), (dres, "dresidual"))]
    with device_guard(h):
        ctx = _lib.context(cuda_stream_of(h))
        _run("cflash_norm_bwd", "norm_bwd", "norm backward", ctx, ctypes.byref(p), *[ptr(t) for t in hs])
    if explaining():
        return dx, dw, db, dres  # nothing was computed: no casts of uninitialised memory
    if dw is not None and not _same_dtype(dw, w_like):
        dw = _cast_like(dw, w_like)
    if db is not None and not _same_dtype(db, b_like):
        db = _cast_like(db, b_like)
    return dx, dw, db, dres


def _is_f32(t):
    return str(t.dtype) in ("float32", "torch.float32")


def _same_dtype(a, b):
    return a.dtype == b.dtype


def _to_f32(t):
    return t.float() if hasattr(t, "float") and not isinstance(t, np.ndarray) else t.astype(np.float32)


def _cast_like(t, like):
    return t.to(like.dtype) if not isinstance(t, np.ndarray) else t.astype(like.dtype)


# ---- KV cache ----


def attn_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                 cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                 window_left=-1, window_right=-1, softcap=0.0, rotary_interleaved=True, alibi_slopes=None,
                 num_splits=0):
    """out (B, Sq, H, Dv) like q, lse float32 (B, H, Sq); k_cache / v_cache updated in place."""
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    _shape_check(q, 4, "q", "(batch, seqlen_q, nheads, headdim)")
    B, Sq, H, _ = q.shape
    out = empty(q, (B, Sq, H, v_cache.shape[-1]))
    lse = empty(q, (B, H, Sq), "f32")
    kp = _lib.KVCacheParams()
    _lib.fn("cflash_kvcache_params_init")(ctypes.byref(kp))
    if rotary_cos is not None:
        rotary_cos, rotary_sin = _table_dtype(rotary_cos, q), _table_dtype(rotary_sin, q)
    seqlen = -1
    if isinstance(cache_seqlens, (int, np.integer)):
        seqlen, cache_seqlens = int(cache_seqlens), None
    idx = [host_int32(t, n) for t, n in ((cache_seqlens, "cache_seqlens"), (cache_batch_idx, "cache_batch_idx"),
                                          (cache_leftpad, "cache_leftpad"), (block_table, "block_table"))]
    hold = [dl(t, n) for t, n in ((k, "k"), (v, "v"), (rotary_cos, "rotary_cos"), (rotary_sin, "rotary_sin"))]
    hidx = [dl(t, n) for t, n in zip(idx, ("cache_seqlens", "cache_batch_idx", "cache_leftpad", "block_table"))]
    kp.k_new, kp.v_new, kp.rotary_cos, kp.rotary_sin = [field(t) for t in hold]
    kp.cache_seqlens, kp.cache_batch_idx, kp.cache_leftpad, kp.block_table = [field(t) for t in hidx]
    kp.rotary_interleaved = int(bool(rotary_interleaved))
    kp.cache_seqlen = seqlen
    kp.num_splits = int(num_splits)
    a = _alibi(alibi_slopes, q)
    p = make_params(0.0, softmax_scale, causal, window_left, window_right, softcap, a)
    hq, hk, hv, ho, hl = DL(q, "q"), DL(k_cache, "k_cache"), DL(v_cache, "v_cache"), DL(out, "out"), DL(lse, "lse")
    with device_guard(q):
        ctx = _lib.context(cuda_stream_of(q))
        _run("cflash_attn_kvcache_fwd", "kvcache_fwd", "flash_attn_with_kvcache", ctx, ctypes.byref(p), ctypes.byref(kp),
             hq.ptr, hk.ptr, hv.ptr, ho.ptr, hl.ptr)
    return out, lse


def attn_merge(out_partial, lse_partial):
    """Merges partial results (NS, B, Sq, H, Dv) / (NS, B, H, Sq) by LSE: out, lse."""
    out = empty(out_partial, out_partial.shape[1:])
    lse = empty(out_partial, lse_partial.shape[1:], "f32")
    hs = [DL(t, n) for t, n in ((out_partial, "out_partial"), (lse_partial, "lse_partial"), (out, "out"),
                                (lse, "lse"))]
    with device_guard(out_partial):
        ctx = _lib.context(cuda_stream_of(out_partial))
        _run("cflash_attn_merge", "attn_merge", "attention merge", ctx, *[t.ptr for t in hs])
    return out, lse
