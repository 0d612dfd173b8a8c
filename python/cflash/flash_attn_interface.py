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


def _sink(learnable_sink, q):
    """learnable_sink as the library takes it: float32 (nheads,), like q (torch: differentiable)."""
    if learnable_sink is None:
        return None
    s = to_array(learnable_sink, "learnable_sink")
    if is_torch(q):
        s = _as_torch((s,), q)[0]
        return s.to(device=q.device, dtype=_torch().torch.float32)
    return np.asarray(s, dtype=np.float32)


def _probs_ok(want_probs, dropout_p, sink, attention_chunk):
    if want_probs and dropout_p and (sink is not None or attention_chunk):
        raise ValueError("return_attn_probs: S_dmask (with dropout) does not model learnable_sink or "
                         "attention_chunk; expected False, or dropout_p 0")


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, learnable_sink=None,
                    attention_chunk=0):
    """q (batch, seqlen_q, nheads, headdim), k, v (batch, seqlen_k, nheads_k, headdim[_v]) with
    nheads % nheads_k == 0 (GQA/MQA). Causal and window masks align bottom-right; window_size
    (left, right), -1 = unbounded; softcap > 0 applies c * tanh(s / c); alibi_slopes (nheads,) or
    (batch, nheads) fp32. Returns out (batch, seqlen_q, nheads, headdim_v), or with
    return_attn_probs (out, softmax_lse (batch, nheads, seqlen_q), S_dmask: see _sdmask.py;
    an empty array without dropout, as flash-attn's). learnable_sink (nheads,) (FA4's name;
    gpt-oss): a logit per head that joins each row's softmax denominator and carries no value;
    softmax_lse includes it (FA4's convention); differentiable with torch. attention_chunk > 0
    (FA3's name; Llama 4): query i (at key position i + seqlen_k - seqlen_q) sees only the keys
    of its own chunk of that many positions, with causal / window as well."""
    out, lse, S, _ = _fwd(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                          return_attn_probs, learnable_sink, attention_chunk)
    return (out, lse, S) if return_attn_probs else out


def _fwd(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, want_probs,
         learnable_sink=None, attention_chunk=0):
    """The batch-layout forward: (out, lse, S_dmask or None, dropout seed)."""
    wl, wr = _window(window_size)
    if learnable_sink is None and not attention_chunk and _direct(q, k, v):
        scale = _scale(softmax_scale, q)
        seed = _seed(dropout_p, False) if type(q) is np.ndarray else (_torch().new_seed() if dropout_p else 0)
        out, lse = _core.attn_fwd(q, k, v, dropout_p, scale, causal, wl, wr, softcap, alibi_slopes, seed,
                                  want_lse=want_probs)
    else:
        q, k, v, alibi_slopes = [to_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"),
                                                             (alibi_slopes, "alibi_slopes"))]
        scale = _scale(softmax_scale, q)
        sink, chunk = _sink(learnable_sink, q), int(attention_chunk or 0)
        _probs_ok(want_probs, dropout_p, sink, chunk)
        tm = is_torch(q)
        if tm and not _direct(q, k, v, alibi_slopes, sink):
            seed = _seed(dropout_p, tm)
            k, v, alibi_slopes = _as_torch((k, v, alibi_slopes), q)
            out, lse, rng = _torch().torch.ops.cflash.attn_fwd(q, k, v, alibi_slopes, float(dropout_p), scale,
                                                              bool(causal), wl, wr, float(softcap),
                                                              bool(deterministic), seed, sink, chunk)
            seed = int(rng[0]) if dropout_p else 0
        else:
            if tm:
                k, v, alibi_slopes = _as_torch((k, v, alibi_slopes), q)
                seed = _torch().new_seed() if dropout_p else 0
            else:
                seed = _seed(dropout_p, False)
            out, lse = _core.attn_fwd(q, k, v, dropout_p, scale, causal, wl, wr, softcap, alibi_slopes, seed,
                                      sinks=sink, attention_chunk=chunk)
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
                           deterministic=False, return_attn_probs=False, block_table=None, seqused_q=None,
                           seqused_k=None, learnable_sink=None, attention_chunk=0):
    """q (total_q, nheads, headdim), k, v (total_k, nheads_k, headdim[_v]); cu_seqlens_* int32
    (batch + 1,). Returns out (total_q, nheads, headdim_v), or with return_attn_probs (out,
    softmax_lse (nheads, total_q), S_dmask (batch, nheads, max_seqlen_q, max_seqlen_k) rounded up
    to 128 as flash-attn's).
    Paged K/V as vLLM and SGLang call flash-attn: block_table int32 (batch, max_pages) with k, v
    (num_pages, page_size, nheads_k, headdim), any page size; key t of sequence b at page
    block_table[b, t // page_size], row t % page_size; cu_seqlens_k then counts keys (or is None
    with seqused_k). seqused_q / seqused_k (FA3): int32 (batch,), the rows / keys each sequence
    uses (out rows past seqused_q are not written). learnable_sink (nheads,) and attention_chunk:
    as flash_attn_func's, per sequence."""
    out, lse, S, _ = _varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                 softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                 return_attn_probs, block_table, seqused_k, seqused_q, learnable_sink,
                                 attention_chunk)
    return (out, lse, S) if return_attn_probs else out


def _varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                window_size, softcap, alibi_slopes, deterministic, want_probs, block_table=None, seqused_k=None,
                seqused_q=None, learnable_sink=None, attention_chunk=0):
    """The varlen forward: (out, lse, S_dmask or None, dropout seed)."""
    q, k, v, alibi_slopes = [to_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (alibi_slopes, "alibi_slopes"))]
    cu_seqlens_q, cu_seqlens_k = to_array(cu_seqlens_q, "cu_seqlens_q"), to_array(cu_seqlens_k, "cu_seqlens_k")
    block_table, seqused_q, seqused_k = [to_array(x, n) for x, n in ((block_table, "block_table"),
                                                                    (seqused_q, "seqused_q"),
                                                                    (seqused_k, "seqused_k"))]
    if want_probs and (block_table is not None or seqused_q is not None or seqused_k is not None):
        raise ValueError("return_attn_probs: not available with block_table or seqused_q / seqused_k (the "
                         "probabilities are a test aid over dense K/V); expected False")
    wl, wr = _window(window_size)
    scale = _scale(softmax_scale, q)
    sink, chunk = _sink(learnable_sink, q), int(attention_chunk or 0)
    _probs_ok(want_probs, dropout_p, sink, chunk)
    tm = is_torch(q)
    seed = _seed(dropout_p, tm)
    mq, mk = int(max_seqlen_q or 0), int(max_seqlen_k or 0)
    if tm:
        k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, block_table, seqused_q, seqused_k = _as_torch(
            (k, v, alibi_slopes, cu_seqlens_q, cu_seqlens_k, block_table, seqused_q, seqused_k), q)
        out, lse, rng = _torch().torch.ops.cflash.attn_varlen_fwd(
            q, k, v, cu_seqlens_q, cu_seqlens_k, mq, mk, alibi_slopes, float(dropout_p), scale, bool(causal), wl,
            wr, float(softcap), bool(deterministic), seed, block_table, seqused_q, seqused_k, sink, chunk)
        seed = int(rng[0]) if dropout_p else 0
    else:
        out, lse = _core.attn_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, mq, mk, dropout_p, scale, causal, wl,
                                         wr, softcap, alibi_slopes, seed, block_table=block_table,
                                         seqused_q=seqused_q, seqused_k=seqused_k, sinks=sink, attention_chunk=chunk)
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
    and seqused_k as flash_attn_varlen_func takes them; leftpad_k is refused;
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
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False,
                            cu_seqlens_q=None, max_seqlen_q=None, cu_seqlens_k_new=None, q_descale=None,
                            k_descale=None, v_descale=None, cache_quant=None, k_scales=None, v_scales=None,
                            page_table=None, attention_chunk=0, learnable_sink=None):
    """Decoding / chunked prefill against a KV cache. k, v (batch, seqlen_new, nheads_k, headdim),
    when given, are written into k_cache / v_cache *in place* at cache_seqlens (int or int32
    (batch,)), rotated first by rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2) when given.
    k_cache / v_cache (batch_cache, seqlen_cache, nheads_k, headdim), or paged with block_table
    (FA3: page_table) (num_blocks, page_block_size, nheads_k, headdim), any page size. No
    backward (as flash-attn). Returns out (batch, seqlen_q, nheads, headdim), and softmax_lse
    (batch, nheads, seqlen_q) when return_softmax_lse.
    FA3's varlen arguments put decode steps, prefill chunks and speculative drafts in one call:
    cu_seqlens_q int32 (batch + 1,) with q (total_q, nheads, headdim) (out likewise, softmax_lse
    (nheads, total_q)); cu_seqlens_k_new int32 (batch + 1,) with k, v (total_new, nheads_k,
    headdim); max_seqlen_q an optional bound.
    Quantized caches (8-bit codes; q, k, v and out stay float, accumulation fp32):
    - fp8: caches torch.float8_e4m3fn / float8_e5m2 (NumPy: ml_dtypes' float8 arrays), or uint8
      with cache_quant "fp8_e4m3" / "fp8_e5m2"; value = fp8(code) * descale, k_descale / v_descale
      (FA3's) float32 (1,), (nheads_k,) or (batch, nheads_k), or a number; None = 1.
    - int8: caches int8 (cache_quant "int8" implied) with k_scales / v_scales float32
      (batch_cache, seqlen_cache, nheads_k) (paged: (num_blocks, page_block_size, nheads_k)), one
      scale per cached row and head: value = code * scale; appended rows write theirs.
    cache_quant: None (from the caches' dtype), "none", "fp8_e4m3", "fp8_e5m2" or "int8". The
    append rounds to nearest even (fp8 saturates). q_descale (FA3's fp8 q) is refused: q is float.
    learnable_sink (nheads,) float32 as in flash_attn_func (no backward here). attention_chunk goes to
    the library, whose KV-cache call refuses it for now (flash_attn_func takes it)."""
    if page_table is not None:
        if block_table is not None:
            raise ValueError("page_table: given with block_table (the same argument, FA3's and FA2's name); "
                             "expected one of them")
        block_table = page_table
    if q_descale is not None:
        raise _lib.InvalidArgumentError(
            "q_descale: not supported: q is float32, float16 or bfloat16 here (only the KV cache is quantized, "
            "FA3's fp8 q is not); scale q, or fold a per-tensor factor into softmax_scale; expected None")
    quant = _cache_quant(cache_quant, k_cache)
    plain = (not quant and k_descale is None and v_descale is None and k_scales is None and v_scales is None
             and learnable_sink is None)
    if plain and _direct(q):  # not traced: the library directly (there is no autograd here, as in flash-attn)
        wl, wr = _window(window_size)
        out, lse = _core.attn_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                                      cache_batch_idx, cache_leftpad, block_table, _scale(softmax_scale, q), causal,
                                      wl, wr, softcap, rotary_interleaved, alibi_slopes, num_splits,
                                      want_lse=return_softmax_lse, cu_seqlens_q=cu_seqlens_q,
                                      max_seqlen_q=max_seqlen_q, cu_seqlens_k_new=cu_seqlens_k_new,
                                      attention_chunk=attention_chunk)
        return (out, lse) if return_softmax_lse else out
    names = ("q", "k_cache", "v_cache", "k", "v", "rotary_cos", "rotary_sin", "alibi_slopes", "k_scales", "v_scales")
    args = (q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, alibi_slopes, k_scales, v_scales)
    cu_seqlens_q, cu_seqlens_k_new = to_array(cu_seqlens_q, "cu_seqlens_q"), to_array(cu_seqlens_k_new,
                                                                                        "cu_seqlens_k_new")
    mq = int(max_seqlen_q or 0)
    q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, alibi_slopes, k_scales, v_scales = [
        to_array(x, n) for x, n in zip(args, names)]
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        last = t.stride(-1) if is_torch(t) else t.strides[-1] // t.itemsize
        if t.shape[-1] > 1 and last != 1:
            raise ValueError("%s: last dimension has stride %d, expected 1 (contiguous): the cache is written "
                             "in place, so it cannot be copied" % (name, last))
    k_descale, v_descale = _descale(k_descale, "k_descale", q), _descale(v_descale, "v_descale", q)
    sink = _sink(learnable_sink, q)
    wl, wr = _window(window_size)
    scale = _scale(softmax_scale, q)
    chunk = int(attention_chunk or 0)
    if is_torch(q):
        seqlen = -1
        if cache_seqlens is not None and not is_torch(cache_seqlens):
            if isinstance(cache_seqlens, (int, np.integer)):
                seqlen, cache_seqlens = int(cache_seqlens), None
            else:
                cache_seqlens = _torch().torch.as_tensor(np.asarray(cache_seqlens, dtype=np.int32))
        idx = [x if x is None or is_torch(x) else _torch().torch.as_tensor(np.asarray(x, dtype=np.int32))
               for x in (cache_batch_idx, cache_leftpad, block_table, cu_seqlens_q, cu_seqlens_k_new)]
        out, lse = _torch().torch.ops.cflash.attn_kvcache(
            q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, seqlen, idx[0], idx[1], idx[2],
            alibi_slopes, scale, bool(causal), wl, wr, float(softcap), bool(rotary_interleaved), int(num_splits),
            idx[3], mq, idx[4], quant, k_descale, v_descale, k_scales, v_scales, sink, chunk)
    else:
        out, lse = _core.attn_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                                      cache_batch_idx, cache_leftpad, block_table, scale, causal, wl, wr, softcap,
                                      rotary_interleaved, alibi_slopes, num_splits, cu_seqlens_q=cu_seqlens_q,
                                      max_seqlen_q=mq, cu_seqlens_k_new=cu_seqlens_k_new, cache_quant=quant,
                                      k_descale=k_descale, v_descale=v_descale, k_scales=k_scales,
                                      v_scales=v_scales, sinks=sink, attention_chunk=chunk)
    return (out, lse) if return_softmax_lse else out


_QUANT_OF_DTYPE = {}  # a cache dtype -> its cflash_kv_quant value (filled as dtypes are seen)
_QUANT_BY_NAME = {"float8_e4m3fn": _core.QUANT["fp8_e4m3"], "float8_e5m2": _core.QUANT["fp8_e5m2"],
                  "int8": _core.QUANT["int8"]}


def _cache_quant(cache_quant, k_cache):
    """The call's cflash_kv_quant value: cache_quant by name, or (None) from the caches' dtype."""
    if cache_quant is None:
        dt = getattr(k_cache, "dtype", None)
        q = _QUANT_OF_DTYPE.get(dt)
        if q is None:
            name = str(dt).replace("torch.", "")
            if name == "uint8":
                raise ValueError("cache_quant: None with uint8 caches, expected 'fp8_e4m3' or 'fp8_e5m2' (the "
                                 "format of the codes)")
            q = _QUANT_OF_DTYPE[dt] = _QUANT_BY_NAME.get(name, 0)
        return q
    if isinstance(cache_quant, str) and cache_quant in _core.QUANT:
        return _core.QUANT[cache_quant]
    raise ValueError("cache_quant: %r, expected None (from the caches' dtype) or one of %s"
                     % (cache_quant, ", ".join(repr(n) for n in _core.QUANT)))


def _descale(x, name, q):
    """k_descale / v_descale as the library takes them: float32, on q's device (a number -> (1,))."""
    if x is None:
        return None
    if isinstance(x, (int, float, np.floating, np.integer)):
        x = np.array([x], dtype=np.float32)
    x = to_array(x, name)
    if is_torch(q):
        return _as_torch((x,), q)[0].to(device=q.device, dtype=_torch().torch.float32)
    return x if is_torch(x) else np.asarray(x, dtype=np.float32)


def _need_dim(x, ndim, dim, size, name, layout):
    nd = x.dim() if is_torch(x) else x.ndim
    if nd != ndim or x.shape[dim] != size:
        raise ValueError("%s: shape %s, expected %s" % (name, tuple(x.shape), layout))
