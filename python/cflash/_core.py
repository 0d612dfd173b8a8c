"""The library's calls on plain arrays (NumPy or torch, no autograd): allocate the outputs like the
inputs, build the params, call C on torch's current CUDA stream where relevant. The public
functions (flash_attn_interface.py, layers, ops) and the torch custom ops (_torch.py) sit on these.

Arrays reach C as DLTensor addresses (see _fast.py: torch and NumPy write the DLTensor
themselves), so a small call costs microseconds here; the library validates every argument, so
Python checks only what it needs to allocate the outputs."""

import ctypes
import threading

import numpy as np

from . import _abi, _fast, _lib
from ._lib import lib, check
from ._tensor import empty, empty_like, host_int32, cuda_stream_of, device_guard, maybe_contiguous

_MASK64 = (1 << 64) - 1
_void = ctypes.c_void_p
_i64 = ctypes.c_int64


# ---- Calling, or explaining the call ----

class _Explaining(threading.local):
    sink = None  # a list while cflash.explain() collects on this thread


_explain = _Explaining()


def explaining():
    return _explain.sink is not None


class _Args(list):
    """DLTensor addresses for one call (None passes NULL); the list keeps them valid until it is
    dropped, after the call."""

    __slots__ = ()

    def __call__(self, x, name):
        return None if x is None else _fast.address(x, name, self)


def _run(name, op, what, x, *args):
    """Calls the library function `name` on x's device (CUDA: that device current, torch's current
    stream); while cflash.explain() collects, the call is made in the context's explain mode
    (same validation and selection code, nothing computed or written) and its text is collected
    under `op`. Pointer arguments are addresses (ints), params by ctypes.byref. Returns the status
    when `what` is None (the caller handles a failure), else raises on one."""
    if type(x) is np.ndarray or x.is_cpu:
        return _run_on(name, op, what, _lib.context(None), args)
    with device_guard(x):
        return _run_on(name, op, what, _lib.context(cuda_stream_of(x)), args)


def _run_on(name, op, what, ctx, args):
    sink = _explain.sink
    if sink is None:
        st = _fast.handle(name)(ctx, *args)
        if what is None:
            return st
        check(st, what)
        return st
    buf = ctypes.create_string_buffer(16384)
    check(lib.cflash_context_set_explain(ctx, buf, len(buf)), "explain")
    try:
        st = _fast.handle(name)(ctx, *args)
    finally:  # the mode covers one call: never leave it set for a later real call
        lib.cflash_context_set_explain(ctx, None, 0)
    text = buf.value.decode("utf-8", "replace")
    if st != _lib.OK and not text:
        text = "error: " + _lib.last_error()
    sink.append((op, st, text))
    return st


def make_params(dropout_p=0.0, softmax_scale=None, causal=False, window_left=-1, window_right=-1,
                softcap=0.0, alibi=None, seed=0, offset=0, deterministic=False, q_offset=0, k_offset=0,
                extras=None, attention_chunk=0):
    """A cflash_attn_params; alibi is a DLTensor address (or None) kept valid by the caller. q_offset,
    k_offset: positions of the call's first query / key in a longer sequence (ring attention).
    extras: {field: address or None} for issue 13's pointer fields (sinks, attn_bias, attn_mask,
    dsinks, dbias, block_table, seqused_q, seqused_k); attention_chunk > 0: chunked local attention.
    Those without ALiBi, dropout, offsets or extras are made once and shared (the library only
    reads them)."""
    extras = {n: x for n, x in (extras or {}).items() if x is not None}
    if alibi is None and not dropout_p and not q_offset and not k_offset and not extras and not attention_chunk:
        return _fast.attn_params(0.0 if softmax_scale is None else float(softmax_scale), bool(causal),
                                 int(window_left), int(window_right), float(softcap), bool(deterministic))
    p = _lib.AttnParams()
    lib.cflash_attn_params_init(ctypes.byref(p))
    p.softmax_scale = 0.0 if softmax_scale is None else float(softmax_scale)
    p.causal = 1 if causal else 0
    p.window_left = int(window_left)
    p.window_right = int(window_right)
    p.softcap = float(softcap)
    _fast.set_pointer(p, "alibi_slopes", alibi)
    p.dropout_p = float(dropout_p)
    p.seed = int(seed) & _MASK64
    p.offset = int(offset) & _MASK64
    p.deterministic = 1 if deterministic else 0
    p.q_offset, p.k_offset = int(q_offset), int(k_offset)
    p.attention_chunk = int(attention_chunk)
    for name, x in extras.items():
        _fast.set_pointer(p, name, x)
    return p


def _alibi(alibi_slopes, a):
    return a(maybe_contiguous(alibi_slopes), "alibi_slopes") if alibi_slopes is not None else None


def _extras(a, **arrays):
    """Issue 13: {field: address or None} of the arrays given (sinks, attn_bias, attn_mask,
    dsinks, dbias), for make_params; a keeps them valid for the call."""
    return {n: a(maybe_contiguous(x), n) if x is not None else None for n, x in arrays.items()}


def _serving(a, block_table, seqused_q, seqused_k):
    """{field: address or None} of the paged-K/V and used-length index tensors (host int32)."""
    return {n: a(host_int32(x, n), n) for x, n in ((block_table, "block_table"), (seqused_q, "seqused_q"),
                                                    (seqused_k, "seqused_k"))}


# ---- Attention ----


def attn_fwd(q, k, v, dropout_p, softmax_scale, causal, window_left, window_right, softcap,
             alibi_slopes, seed=0, offset=0, q_offset=0, k_offset=0, want_lse=True, sinks=None, attn_bias=None,
             attn_mask=None, attention_chunk=0):
    """out (B, Sq, H, Dv) like q, lse float32 (B, H, Sq) (None unless want_lse). sinks fp32 (H,),
    attn_bias (fp32 or q's dtype) and attn_mask (bool / uint8), 4 dims (B|1, H|1, Sq, Sk), and
    attention_chunk (> 0: chunked local attention): issue 13's features.
    A CPU call at a decode shape (seqlen_q 1, no dropout, no block offsets) is served by the
    library's decode entry, cflash_attn_kvcache_fwd with k, v as the whole cache: the same out
    and lse, from the kernel made for it (cflash_attn_fwd serves when that entry refuses the
    call)."""
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    if q.ndim != 4 or v.ndim != 4:
        _shape_check(q, 4, "q", "(batch, seqlen_q, nheads, headdim)")
        _shape_check(v, 4, "v", "(batch, seqlen_k, nheads_k, headdim_v)")
    B, Sq, H, D = q.shape
    Dv = v.shape[-1]
    out = empty_like(q) if Dv == D else empty(q, (B, Sq, H, Dv))
    sink = _explain.sink
    lse = empty(q, (B, H, Sq), "f32") if want_lse or sink is not None else None
    a = _Args()
    # what the decode entry does not take (it takes ALiBi)
    extra = (dropout_p or q_offset or k_offset or sinks is not None or attn_bias is not None
             or attn_mask is not None or attention_chunk)
    if alibi_slopes is None and not extra:  # the shared params (decode steps: most calls)
        p = _fast.attn_params(0.0 if softmax_scale is None else float(softmax_scale), bool(causal),
                              int(window_left), int(window_right), float(softcap), False)
    else:
        ex = _extras(a, sinks=sinks, attn_bias=attn_bias, attn_mask=attn_mask)
        p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap,
                        _alibi(alibi_slopes, a), seed, offset, q_offset=q_offset, k_offset=k_offset, extras=ex,
                        attention_chunk=attention_chunk)
    pp = ctypes.byref(p)
    addr = _fast.address
    hq, hk, hv, ho = addr(q, "q", a), addr(k, "k", a), addr(v, "v", a), addr(out, "out", a)
    hl = None if lse is None else addr(lse, "lse", a)
    if Sq == 1 and not extra and _fast.KV_DEFAULTS is not None and (type(q) is np.ndarray or q.is_cpu):
        if sink is None:  # a decode step (most calls): _run's path, inline
            if _fast.handle("cflash_attn_kvcache_fwd")(_lib.context(None), pp, _fast.KV_DEFAULTS, hq, hk, hv, ho,
                                                        hl) == _lib.OK:
                return out, lse
        else:
            n = len(sink)
            if _run("cflash_attn_kvcache_fwd", "kvcache_fwd", None, q, pp, _fast.KV_DEFAULTS, hq, hk, hv, ho,
                    hl) == _lib.OK:
                _explain_bwd(q, k, v, out, lse, pp, hq, hk, hv, ho, hl, a)
                return out, lse
            del sink[n:]  # that entry would refuse: the general one serves (explained next)
    _run("cflash_attn_fwd", "attn_fwd", "attention forward", q, pp, hq, hk, hv, ho, hl)
    if sink is not None:
        _explain_bwd(q, k, v, out, lse, pp, hq, hk, hv, ho, hl, a)
    return out, lse


def _explain_bwd(q, k, v, out, lse, pp, hq, hk, hv, ho, hl, a):
    # the backward of this call, with placeholder gradients
    hg = [a(empty(x, x.shape), n) for x, n in ((q, "dq"), (k, "dk"), (v, "dv"))]
    _run("cflash_attn_bwd", "attn_bwd", "", q, pp, ho, hq, hk, hv, ho, hl, *hg)


def attn_bwd(dout, q, k, v, out, lse, dropout_p, softmax_scale, causal, window_left, window_right,
             softcap, alibi_slopes, deterministic, seed=0, offset=0, q_offset=0, k_offset=0, sinks=None,
             attn_bias=None, attn_mask=None, want_dbias=False, attention_chunk=0):
    """dq, dk, dv like q, k, v; with sinks or want_dbias (issue 13, the forward's sinks / bias /
    mask / attention_chunk given again) dq, dk, dv, dsinks fp32 (H,) or None, dbias like
    attn_bias or None."""
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    dq, dk, dv = empty(q, q.shape), empty(k, k.shape), empty(v, v.shape)
    ds = None if sinks is None else empty(q, (q.shape[2],), "f32")
    db = empty(attn_bias, tuple(attn_bias.shape)) if want_dbias else None
    a = _Args()
    ex = _extras(a, sinks=sinks, attn_bias=attn_bias, attn_mask=attn_mask, dsinks=ds, dbias=db)
    p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap, _alibi(alibi_slopes, a),
                    seed, offset, deterministic, q_offset, k_offset, extras=ex, attention_chunk=attention_chunk)
    h = [a(x, n) for x, n in ((dout, "dout"), (q, "q"), (k, "k"), (v, "v"), (out, "out"), (lse, "lse"),
                              (dq, "dq"), (dk, "dk"), (dv, "dv"))]
    _run("cflash_attn_bwd", "attn_bwd", "attention backward", q, ctypes.byref(p), *h)
    return (dq, dk, dv) if sinks is None and not want_dbias else (dq, dk, dv, ds, db)


def attn_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                    softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, seed=0,
                    offset=0, q_offset=0, k_offset=0, sinks=None, block_table=None, seqused_q=None,
                    seqused_k=None, attention_chunk=0):
    """out (total_q, H, Dv) like q, lse float32 (H, total_q); sinks fp32 (H,) and attention_chunk
    (issue 13). With
    block_table (B, max_pages) int32, k / v are pages (num_pages, page_size, Hk, D); cu_seqlens_k
    may be None when seqused_k (B,) int32 is given; seqused_q (B,) int32."""
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    _shape_check(q, 3, "q", "(total_q, nheads, headdim)")
    if block_table is None:
        _shape_check(v, 3, "v", "(total_k, nheads_k, headdim_v)")
    T, H, _ = q.shape
    out = empty(q, (T, H, v.shape[-1]))
    lse = empty(q, (H, T), "f32")
    cq, ck = host_int32(cu_seqlens_q, "cu_seqlens_q"), host_int32(cu_seqlens_k, "cu_seqlens_k")
    a = _Args()
    ex = dict(_extras(a, sinks=sinks), **_serving(a, block_table, seqused_q, seqused_k))
    p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap, _alibi(alibi_slopes, a),
                    seed, offset, q_offset=q_offset, k_offset=k_offset, extras=ex, attention_chunk=attention_chunk)
    h = [a(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (cq, "cu_seqlens_q"), (ck, "cu_seqlens_k"))]
    ho, hl = a(out, "out"), a(lse, "lse")
    mq, mk = _i64(int(max_seqlen_q or 0)), _i64(int(max_seqlen_k or 0))
    _run("cflash_attn_varlen_fwd", "attn_varlen_fwd", "varlen attention forward", q, ctypes.byref(p), *h, mq, mk,
         ho, hl)
    if explaining():
        hg = [a(empty(x, x.shape), n) for x, n in ((q, "dq"), (k, "dk"), (v, "dv"))]
        _run("cflash_attn_varlen_bwd", "attn_varlen_bwd", "", q, ctypes.byref(p), ho, *h[:3], ho, hl, *h[3:], mq,
             mk, *hg)
    return out, lse


def attn_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    dropout_p, softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                    deterministic, seed=0, offset=0, q_offset=0, k_offset=0, sinks=None, block_table=None,
                    seqused_q=None, seqused_k=None, attention_chunk=0):
    """dq, dk, dv (dk, dv as pages with block_table); with sinks (issue 13) also dsinks fp32 (H,)."""
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    dq, dk, dv = empty(q, q.shape), empty(k, k.shape), empty(v, v.shape)
    ds = None if sinks is None else empty(q, (q.shape[1],), "f32")
    cq, ck = host_int32(cu_seqlens_q, "cu_seqlens_q"), host_int32(cu_seqlens_k, "cu_seqlens_k")
    a = _Args()
    ex = dict(_extras(a, sinks=sinks, dsinks=ds), **_serving(a, block_table, seqused_q, seqused_k))
    p = make_params(dropout_p, softmax_scale, causal, window_left, window_right, softcap, _alibi(alibi_slopes, a),
                    seed, offset, deterministic, q_offset, k_offset, extras=ex, attention_chunk=attention_chunk)
    h = [a(x, n) for x, n in ((dout, "dout"), (q, "q"), (k, "k"), (v, "v"), (out, "out"), (lse, "lse"),
                              (cq, "cu_seqlens_q"), (ck, "cu_seqlens_k"))]
    hg = [a(x, n) for x, n in ((dq, "dq"), (dk, "dk"), (dv, "dv"))]
    _run("cflash_attn_varlen_bwd", "attn_varlen_bwd", "varlen attention backward", q, ctypes.byref(p), *h,
         _i64(int(max_seqlen_q or 0)), _i64(int(max_seqlen_k or 0)), *hg)
    return (dq, dk, dv) if sinks is None else (dq, dk, dv, ds)


def dropout_mask(batch, nheads, seqlen_q, seqlen_k, dropout_p, seed, offset=0, q_offset=0, k_offset=0):
    """The keep mask every backend uses: uint8 NumPy (B, H, Sq, Sk), 1 = kept."""
    m = np.empty((batch, nheads, seqlen_q, seqlen_k), dtype=np.uint8)
    p = make_params(dropout_p=dropout_p, seed=seed, offset=offset, q_offset=q_offset, k_offset=k_offset)
    a = _Args()
    check(_fast.handle("cflash_attn_dropout_mask")(ctypes.byref(p), a(m, "mask")), "dropout mask")
    return m


def mask_far_keys(bias, margin, keep):
    """cflash_attn_mask_far_keys: keep (bool or uint8, bias's shape, CPU) written from the additive
    mask bias (4-D, float32 / float16 / bfloat16, CPU); returns (hides, zero)."""
    flags = ctypes.c_int(0)
    a = _Args()
    check(_fast.handle("cflash_attn_mask_far_keys")(a(bias, "attn_mask"), ctypes.c_double(margin), a(keep, "keep"),
                                                     ctypes.byref(flags)), "far keys")
    return bool(flags.value & _abi.CFLASH_FAR_KEYS_HIDES), bool(flags.value & _abi.CFLASH_FAR_KEYS_ZERO)


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
    a = _Args()
    _fast.set_pointer(p, "seqlen_offsets", a(offs, "seqlen_offsets"))
    _fast.set_pointer(p, "cu_seqlens", a(cu, "cu_seqlens"))
    p.max_seqlen = int(max_seqlen or 0)
    p.num_heads = int(num_heads or 0)
    out = x if inplace else empty(x, x.shape)
    _run("cflash_rotary_apply", "rotary", "rotary", x, ctypes.byref(p), a(x, "x"), a(cos, "cos"), a(sin, "sin"),
         a(out, "out"))
    return out


def rotary_tables(seqlen, rotary_dim, base=10000.0, interpolation_factor=1.0, dtype=np.float32, position_start=0):
    """cos, sin (seqlen, rotary_dim / 2) as NumPy arrays, computed in fp64 by the library."""
    cos = np.empty((seqlen, rotary_dim // 2), dtype=dtype)
    sin = np.empty_like(cos)
    p = _lib.RotaryTableParams()
    _lib.fn("cflash_rotary_table_params_init")(ctypes.byref(p))
    p.base, p.interpolation_factor, p.position_start = float(base), float(interpolation_factor), int(position_start)
    a = _Args()
    check(_fast.handle("cflash_rotary_tables")(ctypes.byref(p), a(cos, "cos"), a(sin, "sin")), "rotary tables")
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


def norm_fwd(x, weight, bias, residual, eps, dropout_p, seed, is_rms_norm, residual_in_fp32, out_dtype=None):
    """y (x's shape, out_dtype or x's dtype), h (the summed input, "residual_out") or None when it
    would equal x, mean (or None), rstd; all 2-D (M, N) except y."""
    N = x.shape[-1]
    shape = tuple(x.shape)
    x2 = maybe_contiguous(_rows(x, N))
    r2 = maybe_contiguous(_rows(residual, N))
    weight, bias = maybe_contiguous(weight), maybe_contiguous(bias)
    M = x2.shape[0]
    y = empty(x2, (M, N), out_dtype)
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
    a = _Args()
    hs = [a(t, n) for t, n in ((x2, "x"), (r2, "residual"), (weight, "weight"), (bias, "bias"), (y, "out"),
                               (h, "residual_out"), (mean, "mean"), (rstd, "rstd"))]
    _run("cflash_norm_fwd", "norm_fwd", "norm forward", x, ctypes.byref(p), *hs)
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
    a = _Args()
    hs = [a(t, n) for t, n in ((dy2, "dy"), (h, "x"), (weight, "weight"), (bias, "bias"), (mean, "mean"),
                               (rstd, "rstd"), (dro, "dresidual_out"), (dx, "dx"), (dw, "dweight"),
                               (db, "dbias"), (dres, "dresidual"))]
    _run("cflash_norm_bwd", "norm_bwd", "norm backward", h, ctypes.byref(p), *hs)
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


QUANT = {"none": 0, "fp8_e4m3": 1, "fp8_e5m2": 2, "int8": 3}  # cache_quant names -> cflash_kv_quant


def attn_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                 cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                 window_left=-1, window_right=-1, softcap=0.0, rotary_interleaved=True, alibi_slopes=None,
                 num_splits=0, want_lse=True, cu_seqlens_q=None, max_seqlen_q=None, cu_seqlens_k_new=None,
                 cache_quant=0, k_descale=None, v_descale=None, k_scales=None, v_scales=None, sinks=None,
                 attention_chunk=0):
    """out (B, Sq, H, Dv) like q, lse float32 (B, H, Sq) (None unless want_lse); k_cache / v_cache
    updated in place. With cu_seqlens_q (FA3), q is (total_q, H, D): out (total_q, H, Dv), lse
    (H, total_q); with cu_seqlens_k_new, k / v are (total_new, Hk, D). cache_quant (a
    cflash_kv_quant value): 8-bit caches, with k_descale / v_descale (fp8) or k_scales / v_scales
    (int8, written for appended rows). sinks and attention_chunk go to the library as given (it
    refuses what its KV-cache call does not take yet)."""
    q = maybe_contiguous(q)
    if cu_seqlens_q is not None:
        _shape_check(q, 3, "q", "(total_q, nheads, headdim) with cu_seqlens_q")
        T, H, _ = q.shape
        out = empty(q, (T, H, v_cache.shape[-1]))
        lse = empty(q, (H, T), "f32") if want_lse else None
    else:
        _shape_check(q, 4, "q", "(batch, seqlen_q, nheads, headdim)")
        B, Sq, H, _ = q.shape
        out = empty(q, (B, Sq, H, v_cache.shape[-1]))
        lse = empty(q, (B, H, Sq), "f32") if want_lse else None
    a = _Args()
    addr = _fast.address
    given = {}  # the pointer fields this call sets (a decode step: one or two)
    if k is not None or v is not None:
        given["k_new"], given["v_new"] = a(maybe_contiguous(k), "k"), a(maybe_contiguous(v), "v")
    if rotary_cos is not None or rotary_sin is not None:
        given["rotary_cos"] = a(_table_dtype(rotary_cos, q) if rotary_cos is not None else None, "rotary_cos")
        given["rotary_sin"] = a(_table_dtype(rotary_sin, q) if rotary_sin is not None else None, "rotary_sin")
    seqlen = -1
    if isinstance(cache_seqlens, (int, np.integer)):
        seqlen = int(cache_seqlens)
    elif cache_seqlens is not None:
        given["cache_seqlens"] = addr(host_int32(cache_seqlens, "cache_seqlens"), "cache_seqlens", a)
    for x, n in ((cache_batch_idx, "cache_batch_idx"), (cache_leftpad, "cache_leftpad"), (block_table, "block_table"),
                 (cu_seqlens_q, "cu_seqlens_q"), (cu_seqlens_k_new, "cu_seqlens_k_new")):
        if x is not None:
            given[n] = addr(host_int32(x, n), n, a)
    if k_descale is not None or v_descale is not None or k_scales is not None or v_scales is not None:
        for x, n in ((k_descale, "k_descale"), (v_descale, "v_descale"), (k_scales, "k_scales"),
                     (v_scales, "v_scales")):
            if x is not None:  # (the library refuses those cache_quant does not take)
                given[n] = addr(x, n, a)
    kp = _fast.kvcache_params()
    kp.pointers(given)
    c = kp.kp
    c.max_seqlen_q = int(max_seqlen_q or 0)
    c.rotary_interleaved = 1 if rotary_interleaved else 0
    c.cache_seqlen = seqlen
    c.num_splits = int(num_splits)
    c.cache_quant = int(cache_quant)
    if alibi_slopes is None and sinks is None and not attention_chunk:
        p = _fast.attn_params(0.0 if softmax_scale is None else float(softmax_scale), bool(causal), int(window_left),
                              int(window_right), float(softcap), False)
    else:
        p = make_params(0.0, softmax_scale, causal, window_left, window_right, softcap, _alibi(alibi_slopes, a),
                        extras=_extras(a, sinks=sinks), attention_chunk=attention_chunk)
    _run("cflash_attn_kvcache_fwd", "kvcache_fwd", "flash_attn_with_kvcache", q, ctypes.byref(p), kp.ref,
         addr(q, "q", a), addr(k_cache, "k_cache", a), addr(v_cache, "v_cache", a), addr(out, "out", a),
         None if lse is None else addr(lse, "lse", a))
    return out, lse


def attn_merge(out_partial, lse_partial):
    """Merges partial results (NS, B, Sq, H, Dv) / (NS, B, H, Sq) by LSE: out, lse."""
    out = empty(out_partial, out_partial.shape[1:])
    lse = empty(out_partial, lse_partial.shape[1:], "f32")
    a = _Args()
    _run("cflash_attn_merge", "attn_merge", "attention merge", out_partial, a(out_partial, "out_partial"),
         a(lse_partial, "lse_partial"), a(out, "out"), a(lse, "lse"))
    return out, lse
