"""flash-attn 2.x's attention functions (flash_attn.flash_attn_interface), same names, argument
order and defaults, on libcflash. They take NumPy arrays or torch tensors (CPU or CUDA) and return
the same kind; with torch they are differentiable and traceable by torch.compile."""

import sys

import numpy as np

from . import _core, _lib, _sdmask
from ._tensor import is_torch, to_array

__all__ = [
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_with_kvcache",
]


def _torch():
    from . import _torch as t  # imports torch: only reached with torch tensors

    return t


def _seed(dropout_p, torch_mode):
    if not dropout_p:
        return 0
    if torch_mode:
        return -1  # drawn inside the op from torch's generator, returned in its rng_state
    return int(np.random.randint(0, 2**62, dtype=np.int64))


def _as_torch(xs, like):
    """NumPy arguments of a torch call (slopes, cu_seqlens, ...) as tensors on like's device (index
    tensors stay on the CPU, where the library reads them)."""
    torch = _torch().torch
    out = []
    for x in xs:
        if x is not None and not is_torch(x):
            x = torch.as_tensor(x)
            if x.is_floating_point():
                x = x.to(like.device)
        out.append(x)
    return out


def _window(window_size):
    wl, wr = window_size
    return int(wl), int(wr)


def _scale(softmax_scale, q):
    if softmax_scale is None:
        return float(q.shape[-1] ** -0.5)
    # The library reads 0 as "default"; flash-attn's 0 means every score is 0 (uniform weights),
    # which a scale far below any score's reciprocal reproduces.
    return float(softmax_scale) if softmax_scale != 0 else 1e-30


def _get_block_size_n(device, head_dim, is_dropout, is_causal):
    """flash-attn's helper for decoding S_dmask: the key-block width of its running maximum (the
    same on every device here)."""
    return _sdmask.block_size_n(head_dim, is_dropout, is_causal)


round_multiple = _sdmask.round_multiple


# ---- Batch layout ----


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (batch, seqlen_q, nheads, headdim), k, v (batch, seqlen_k, nheads_k, headdim[_v]) with
    nheads % nheads_k == 0 (GQA/MQA). Causal and window masks align bottom-right; window_size
    (left, right), -1 = unbounded; softcap > 0 applies c * tanh(s / c); alibi_slopes (nheads,) or
    (batch, nheads) fp32. Returns out (batch, seqlen_q, nheads, headdim_v), or with
    return_attn_probs (out, softmax_lse (batch, nheads, seqlen_q), S_dmask: see _sdmask.py;
    an empty array without dropout, as flash-attn's)."""
    out, lse, S, _ = _fwd(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                          return_attn_probs)
    return (out, lse, S) if return_attn_probs else out


def _fwd(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, want_probs):
    """The batch-layout forward: (out, lse, S_dmask or None, dropout seed)."""
    wl, wr = _window(window_size)
    if _direct(q, k, v):
        scale = _scale(softmax_scale, q)
        seed = _seed(dropout_p, False) if type(q) is np.ndarray else (_torch().new_seed() if dropout_p else 0)
        out, lse = _core.attn_fwd(q, k, v, dropout_p, scale, causal, wl, wr, softcap, alibi_slopes, seed,
                                  want_lse=want_probs)
    else:
        q, k, v, alibi_slopes = [to_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"),
                                                             (alibi_slopes, "alibi_slopes"))]
        scale = _scale(softmax_scale, q)
        tm = is_torch(q)
        seed = _seed(dropout_p, tm)
        if tm:
            k, v, alibi_slopes = _as_torch((k, v, alibi_slopes), q)
            out, lse, rng = _torch().torch.ops.cflash.attn_fwd(q, k, v, alibi_slopes, float(dropout_p), scale,
                                                              bool(causal), wl, wr, float(softcap),
                                                              bool(deterministic), seed)
            seed = int(rng[0]) if dropout_p else 0
        else:
            out, lse = _core.attn_fwd(q, k, v, dropout_p, scale, causal, wl, wr, softcap, alibi_slopes, seed)
    S = _sdmask.s_dmask(q, k, scale, causal, (wl, wr), softcap, alibi_slopes, dropout_p, seed) if want_probs else None
    return out, lse, S, seed


def _direct(q, *xs):
    """Whether a call can go to the library directly, without the torch custom op's dispatch:
    NumPy arrays, or torch tensors when no gradient is wanted and torch.compile is not tracing."""
    if type(q) is np.ndarray:
        return True
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(q, torch.Tensor) or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and (q.requires_grad or any(getattr(x, "requires_grad", False) for x in xs)))


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv (batch, seqlen, 3, nheads, headdim); otherwise as flash_attn_func."""
    qkv = to_array(qkv, "qkv")
    _need_dim(qkv, 5, 2, 3, "qkv", "(batch, seqlen, 3, nheads, headdim)")
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv (batch, seqlen_k, 2, nheads_k, headdim); otherwise as flash_attn_func."""
    kv = to_array(kv, "kv")
    _need_dim(kv, 5, 2, 2, "kv", "(batch, seqlen_k, 2, nheads_k, headdim)")
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


# ---- Variable length (sequences packed along dim 0) ----


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q (total_q, nheads, headdim), k, v (total_k, nheads_k, headdim[_v]); cu_seqlens_* int32
    (batch + 1,). Returns out (total_q, nheads, headdim_v), or with return_attn_probs (out,
    softmax_lse (nheads, total_q), S_dmask (batch, nheads, max_seqlen_q, max_seqlen_k) rounded up
    to 128 as flash-attn's). block_table (paged K/V): refused until the library's varlen call
    takes it (use flash_attn_with_kvcache meanwhile)."""
    out, lse, S, _ = _varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                 softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                 return_attn_probs, block_table)
    return (out, lse, S) if return_attn_probs else out


def _varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                window_size, softcap, alibi_slopes, deterministic, want_probs, block_table=None, seqused_k=None):
    """The varlen forward: (out, lse, S_dmask or None, dropout seed)."""
    q, k, v, alibi_slopes = [to_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (alibi_slopes, "alibi_slopes"))]
    cu_seqlens_q, cu_seqlens_k = to_array(cu_seqlens_q, "cu_seqlens_q"), to_array(cu_seqlens_k, "cu_seqlens_k")
    block_table, seqused_k = to_array(block_table, "block_table"), to_array(seqused_k, "seqused_k")
    wl, wr = _window(window_size)
    scale = _scale(softmax_scale, q)
    tm = is_torch(q)
    seed = _seed(dropout_p, tm)
    mq, mk = int(max_seqlen_q or 0), int(max_seqlen_k or 0)
    if tm:
        k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, block_table, seqused_k = _as_torch(
            (k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, block_table, seqused_k), q)
        out, lse, rng = _torch().torch.ops.cflash.attn_varlen_fwd(
            q, k, v, cu_seqlens_q, cu_seqlens_k, mq, mk, alibi_slopes, float(dropout_p), scale, bool(causal), wl,
            wr, float(softcap), bool(deterministic), seed, block_table, seqused_k)
        seed = int(rng[0]) if dropout_p else 0
    else:
        out, lse = _core.attn_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, mq, mk, dropout_p, scale, causal, wl,
                                         wr, softcap, alibi_slopes, seed, block_table=block_table,
                                         seqused_k=seqused_k)
    S = None
    if want_probs:
        S = _sdmask.s_dmask(q, k, scale, causal, (wl, wr), softcap, alibi_slopes, dropout_p, seed, cu_seqlens_q,
                            cu_seqlens_k, mq, mk)
    return out, lse, S, seed


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv (total, 3, nheads, headdim); otherwise as flash_attn_varlen_func."""
    qkv = to_array(qkv, "qkv")
    _need_dim(qkv, 4, 1, 3, "qkv", "(total, 3, nheads, headdim)")
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv (total_k, 2, nheads_k, headdim); otherwise as flash_attn_varlen_func."""
    kv = to_array(kv, "kv")
    _need_dim(kv, 4, 1, 2, "kv", "(total_k, 2, nheads_k, headdim)")
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


# ---- flash-attn's private entry points (flash_attn_interface._flash_attn_*forward) ----


def _rng_state(seed, like):
    if is_torch(like):
        return _torch().torch.tensor([seed, 0], dtype=_torch().torch.int64)
    return np.array([seed, 0], dtype=np.int64)


def _flash_attn_forward(q, k, v, dropout_p, softmax_scale, causal, window_size_left=-1, window_size_right=-1,
                        softcap=0.0, alibi_slopes=None, return_softmax=False):
    """(out, softmax_lse, S_dmask, rng_state): what flash-attn's op of this name returns (S_dmask
    empty unless return_softmax with dropout; rng_state int64 [seed, offset])."""
    out, lse, S, seed = _fwd(q, k, v, dropout_p, softmax_scale, causal, (window_size_left, window_size_right), softcap,
                             alibi_slopes, False, True)
    if not return_softmax:
        S = _sdmask.s_dmask(out, None, 0, 0, 0, 0, None, 0.0, 0)
    return out, lse, S, _rng_state(seed, out)


def _flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                               softmax_scale, causal, window_size_left=-1, window_size_right=-1, softcap=0.0,
                               alibi_slopes=None, return_softmax=False, block_table=None, leftpad_k=None,
                               seqused_k=None, zero_tensors=False, num_splits=0):
    """flash-attn's varlen op of this name: (out, softmax_lse, S_dmask, rng_state). block_table
    and seqused_k go where the library will take them (refused until then), leftpad_k is refused;
    num_splits > 1 is refused as flash-attn does; zero_tensors zeroes the rows past the last
    sequence."""
    if num_splits > 1:
        raise _lib.InvalidArgumentError("num_splits > 1 is not supported in the varlen call (flash-attn refuses it "
                                        "too); expected 0 or 1")
    if leftpad_k is not None:
        raise _lib.InvalidArgumentError("leftpad_k: not supported in the varlen call; expected None (left padding "
                                        "is served by flash_attn_with_kvcache's cache_leftpad)")
    out, lse, S, seed = _varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                    softmax_scale, causal, (window_size_left, window_size_right), softcap,
                                    alibi_slopes, False, return_softmax, block_table, seqused_k)
    if S is None:
        S = _sdmask.s_dmask(out, None, 0, 0, 0, 0, None, 0.0, 0)
    if zero_tensors:
        end = int(cu_seqlens_q[-1])
        out[end:] = 0
        lse[:, end:] = -np.inf
    return out, lse, S, _rng_state(seed, out)


# ---- KV cache ----


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Decoding / chunked prefill against a KV cache. k, v (batch, seqlen_new, nheads_k, headdim),
    when given, are written into k_cache / v_cache *in place* at cache_seqlens (int or int32
    (batch,)), rotated first by rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2) when given.
    k_cache / v_cache (batch_cache, seqlen_cache, nheads_k, headdim), or paged with block_table
    (num_blocks, page_block_size, nheads_k, headdim), any page size. No backward (as flash-attn).
    Returns out (batch, seqlen_q, nheads, headdim), and softmax_lse (batch, nheads, seqlen_q) when
    return_softmax_lse."""
    if _direct(q):  # not traced: the library directly (there is no autograd here, as in flash-attn)
        wl, wr = _window(window_size)
        out, lse = _core.attn_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                                      cache_batch_idx, cache_leftpad, block_table, _scale(softmax_scale, q), causal,
                                      wl, wr, softcap, rotary_interleaved, alibi_slopes, num_splits,
                                      want_lse=return_softmax_lse)
        return (out, lse) if return_softmax_lse else out
    names = ("q", "k_cache", "v_cache", "k", "v", "rotary_cos", "rotary_sin", "alibi_slopes")
    args = (q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, alibi_slopes)
    q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, alibi_slopes = [to_array(x, n) for x, n in zip(args, names)]
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        last = t.stride(-1) if is_torch(t) else t.strides[-1] // t.itemsize
        if t.shape[-1] > 1 and last != 1:
            raise ValueError("%s: last dimension has stride %d, expected 1 (contiguous): the cache is written "
                             "in place, so it cannot be copied" % (name, last))
    wl, wr = _window(window_size)
    scale = _scale(softmax_scale, q)
    if is_torch(q):
        seqlen = -1
        if cache_seqlens is not None and not is_torch(cache_seqlens):
            if isinstance(cache_seqlens, (int, np.integer)):
                seqlen, cache_seqlens = int(cache_seqlens), None
            else:
                cache_seqlens = _torch().torch.as_tensor(np.asarray(cache_seqlens, dtype=np.int32))
        idx = [x if x is None or is_torch(x) else _torch().torch.as_tensor(np.asarray(x, dtype=np.int32))
               for x in (cache_batch_idx, cache_leftpad, block_table)]
        out, lse = _torch().torch.ops.cflash.attn_kvcache(
            q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, seqlen, idx[0], idx[1], idx[2],
            alibi_slopes, scale, bool(causal), wl, wr, float(softcap), bool(rotary_interleaved), int(num_splits))
    else:
        out, lse = _core.attn_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                                      cache_batch_idx, cache_leftpad, block_table, scale, causal, wl, wr, softcap,
                                      rotary_interleaved, alibi_slopes, num_splits)
    return (out, lse) if return_softmax_lse else out


def _need_dim(x, ndim, dim, size, name, layout):
    nd = x.dim() if is_torch(x) else x.ndim
    if nd != ndim or x.shape[dim] != size:
        raise ValueError("%s: shape %s, expected %s" % (name, tuple(x.shape), layout))
