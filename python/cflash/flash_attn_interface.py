"""flash-attn 2.x's attention functions (flash_attn.flash_attn_interface), same names, argument
order and defaults, on libcflash. They take NumPy arrays or torch tensors (CPU or CUDA) and return
the same kind; with torch they are differentiable and traceable by torch.compile."""

import numpy as np

from . import _core
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


def _attn_probs(q, k, v, lse_like, softmax_scale, causal, window_size, softcap, alibi_slopes, dropout_p, seed,
                cu_seqlens_q=None, cu_seqlens_k=None):
    """flash-attn's S_dmask: the attention probabilities (B, H, Sq, Sk), negative where dropout
    dropped them. For tests and inspection (materialised in NumPy, _scores.py)."""
    from . import _scores

    torch_mode = is_torch(q)
    qn, kn, vn = [x.detach().float().cpu().numpy() if torch_mode else x for x in (q, k, v)]
    al = alibi_slopes
    if al is not None and torch_mode:
        al = al.detach().float().cpu().numpy()
    if cu_seqlens_q is None:
        seqs = [(qn, kn, vn, al)]
    else:  # varlen: padded to max lengths, one sequence at a time
        cq = np.asarray(cu_seqlens_q.cpu() if torch_mode else cu_seqlens_q)
        ck = np.asarray(cu_seqlens_k.cpu() if torch_mode else cu_seqlens_k)
        seqs = [(qn[None, cq[b]:cq[b + 1]], kn[None, ck[b]:ck[b + 1]], vn[None, ck[b]:ck[b + 1]],
                 al[b] if al is not None and np.ndim(al) == 2 else al) for b in range(len(cq) - 1)]
    ps = []
    for b, (qq, kk, vv, aa) in enumerate(seqs):
        p = _scores.probabilities(qq, kk, softmax_scale, causal, window_size, softcap, aa)
        if dropout_p > 0:
            B, H, Sq, Sk = p.shape
            m = _core.dropout_mask(B, H, Sq, Sk, dropout_p, seed)
            if cu_seqlens_q is not None:  # the mask of sequence b is that of batch index b
                m = _core.dropout_mask(b + 1, H, Sq, Sk, dropout_p, seed)[b:b + 1]
            p = np.where(m.astype(bool), p, -p)
        ps.append(p)
    if cu_seqlens_q is not None:
        mq = max(p.shape[2] for p in ps) if ps else 0
        mk = max(p.shape[3] for p in ps) if ps else 0
        full = np.zeros((len(ps), qn.shape[1], mq, mk))
        for b, p in enumerate(ps):
            full[b, :, :p.shape[2], :p.shape[3]] = p[0]
        ps = [full]
    s = ps[0] if len(ps) == 1 else np.concatenate(ps)
    if torch_mode:
        import torch

        return torch.from_numpy(s).to(device=q.device, dtype=q.dtype)
    return s.astype(q.dtype)


# ---- Batch layout ----


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (batch, seqlen_q, nheads, headdim), k, v (batch, seqlen_k, nheads_k, headdim[_v]) with
    nheads % nheads_k == 0 (GQA/MQA). Causal and window masks align bottom-right; window_size
    (left, right), -1 = unbounded; softcap > 0 applies c * tanh(s / c); alibi_slopes (nheads,) or
    (batch, nheads) fp32. Returns out (batch, seqlen_q, nheads, headdim_v), or with
    return_attn_probs (out, softmax_lse (batch, nheads, seqlen_q), S_dmask (batch, nheads,
    seqlen_q, seqlen_k))."""
    q, k, v, alibi_slopes = [to_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (alibi_slopes, "alibi_slopes"))]
    wl, wr = _window(window_size)
    scale = _scale(softmax_scale, q)
    tm = is_torch(q)
    seed = _seed(dropout_p, tm)
    if tm:
        k, v, alibi_slopes = _as_torch((k, v, alibi_slopes), q)
        out, lse, rng = _torch().torch.ops.cflash.attn_fwd(q, k, v, alibi_slopes, float(dropout_p), scale,
                                                          bool(causal), wl, wr, float(softcap), bool(deterministic),
                                                          seed)
        if return_attn_probs:
            seed = int(rng[0])
    else:
        out, lse = _core.attn_fwd(q, k, v, dropout_p, scale, causal, wl, wr, softcap, alibi_slopes, seed)
    if not return_attn_probs:
        return out
    return out, lse, _attn_probs(q, k, v, lse, scale, causal, (wl, wr), softcap, alibi_slopes, dropout_p, seed)


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
    softmax_lse (nheads, total_q), S_dmask (batch, nheads, max_seqlen_q, max_seqlen_k)).
    block_table (paged K/V) is not supported here: use flash_attn_with_kvcache."""
    if block_table is not None:
        raise ValueError("block_table: paged K/V is supported by flash_attn_with_kvcache only; expected None")
    q, k, v, alibi_slopes = [to_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (alibi_slopes, "alibi_slopes"))]
    cu_seqlens_q, cu_seqlens_k = to_array(cu_seqlens_q, "cu_seqlens_q"), to_array(cu_seqlens_k, "cu_seqlens_k")
    wl, wr = _window(window_size)
    scale = _scale(softmax_scale, q)
    tm = is_torch(q)
    seed = _seed(dropout_p, tm)
    mq, mk = int(max_seqlen_q or 0), int(max_seqlen_k or 0)
    if tm:
        k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k = _as_torch((k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k), q)
        out, lse, rng = _torch().torch.ops.cflash.attn_varlen_fwd(
            q, k, v, cu_seqlens_q, cu_seqlens_k, mq, mk, alibi_slopes, float(dropout_p), scale, bool(causal), wl,
            wr, float(softcap), bool(deterministic), seed)
        if return_attn_probs:
            seed = int(rng[0])
    else:
        out, lse = _core.attn_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, mq, mk, dropout_p, scale, causal, wl,
                                         wr, softcap, alibi_slopes, seed)
    if not return_attn_probs:
        return out
    return out, lse, _attn_probs(q, k, v, lse, scale, causal, (wl, wr), softcap, alibi_slopes, dropout_p, seed,
                                 cu_seqlens_q, cu_seqlens_k)


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
