"""PyTorch integration: the library's calls as torch.library custom ops (with fake kernels, so
torch.compile can trace them) and their autograd formulas. Imported only when a torch tensor is
passed in, so `import cflash` never imports torch."""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _core

_op = torch.library.custom_op

# custom_op runs each call through a wrapper that checks the outputs against the inputs (no
# aliasing): 3.5 us per call, as much as the library's own decode step. _fast_op registers the
# plain function as the CPU and CUDA kernel as well, which the dispatcher prefers to custom_op's
# CompositeExplicitAutograd one; schema, fake kernel, autograd and the version bumps of mutated
# inputs (ADInplaceOrView) stay custom_op's. Our outputs are always fresh tensors.
_KERNELS = torch.library.Library("cflash", "IMPL")


def _fast_op(name, mutates_args=()):
    def wrap(fn):
        op = _op("cflash::" + name, mutates_args=mutates_args)(fn)
        for key in ("CPU", "CUDA"):
            _KERNELS.impl(name, fn, key)
        return op

    return wrap


def new_seed():
    """A dropout seed from torch's default generator (so torch.manual_seed makes runs repeatable)."""
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


def _draw(dropout_p, seed):
    """seed < 0: draw one now, inside the op, so that torch.compile sees no data-dependent call."""
    return new_seed() if dropout_p > 0 and seed < 0 else max(seed, 0)


_RNG_ZERO = torch.zeros(2, dtype=torch.int64)  # a dtype to copy, never returned


def _rng_state(seed):
    """(seed, offset) as flash-attn's rng_state: saved for the backward, read back for S_dmask."""
    if not seed:  # no dropout: the cheapest allocation (a call at decode shapes is microseconds)
        return _RNG_ZERO.new_zeros(2)
    return torch.tensor([seed, 0], dtype=torch.int64)


# ---- Attention ----


@_fast_op("attn_fwd")
def attn_fwd(q: Tensor, k: Tensor, v: Tensor, alibi_slopes: Optional[Tensor], dropout_p: float,
             softmax_scale: float, causal: bool, window_left: int, window_right: int, softcap: float,
             deterministic: bool, seed: int, sinks: Optional[Tensor] = None,
             attention_chunk: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    # (_draw and _rng_state inline: this is the op torch.compile'd decode steps call)
    seed = new_seed() if dropout_p > 0 and seed < 0 else max(seed, 0)
    out, lse = _core.attn_fwd(q, k, v, dropout_p, softmax_scale, causal, window_left, window_right, softcap,
                              alibi_slopes, seed, 0, 0, 0, True, sinks, None, None, attention_chunk)
    return out, lse, (_RNG_ZERO.new_zeros(2) if not seed else _rng_state(seed))


@attn_fwd.register_fake
def _(q, k, v, alibi_slopes, dropout_p, softmax_scale, causal, window_left, window_right, softcap,
      deterministic, seed, sinks=None, attention_chunk=0):
    B, Sq, H, _ = q.shape
    return (q.new_empty((B, Sq, H, v.shape[-1])), q.new_empty((B, H, Sq), dtype=torch.float32),
            torch.empty((2,), dtype=torch.int64))


def _dsinks(q, sinks, ds):
    """The backward's 4th result: dL/dsinks fp32 (H,), or an empty tensor without sinks (a custom
    op returns tensors only)."""
    return ds if sinks is not None else q.new_empty((0,), dtype=torch.float32)


@_fast_op("attn_bwd")
def attn_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
             alibi_slopes: Optional[Tensor], dropout_p: float, softmax_scale: float, causal: bool,
             window_left: int, window_right: int, softcap: float, deterministic: bool,
             rng_state: Tensor, sinks: Optional[Tensor] = None,
             attention_chunk: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _core.attn_bwd(dout, q, k, v, out, lse, dropout_p, softmax_scale, causal, window_left, window_right,
                       softcap, alibi_slopes, deterministic, int(rng_state[0]), sinks=sinks,
                       attention_chunk=attention_chunk)
    return g[0], g[1], g[2], _dsinks(q, sinks, g[3] if sinks is not None else None)


@attn_bwd.register_fake
def _(dout, q, k, v, out, lse, alibi_slopes, dropout_p, softmax_scale, causal, window_left, window_right,
      softcap, deterministic, rng_state, sinks=None, attention_chunk=0):
    ds = q.new_empty((q.shape[2] if sinks is not None else 0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), ds


def _attn_setup(ctx, inputs, output):
    q, k, v, alibi = inputs[:4]
    ctx.args = inputs[4:11]  # dropout_p .. deterministic; the seed travels in rng_state
    ctx.chunk = inputs[13]
    ctx.save_for_backward(q, k, v, output[0], output[1], alibi, output[2], inputs[12])


def _attn_backward(ctx, dout, dlse, drng):
    q, k, v, out, lse, alibi, rng, sinks = ctx.saved_tensors
    dq, dk, dv, ds = torch.ops.cflash.attn_bwd(dout, q, k, v, out, lse, alibi, *ctx.args, rng, sinks, ctx.chunk)
    return (dq, dk, dv) + (None,) * 9 + (ds if sinks is not None and ctx.needs_input_grad[12] else None, None)


attn_fwd.register_autograd(_attn_backward, setup_context=_attn_setup)


@_fast_op("attn_varlen_fwd")
def attn_varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Optional[Tensor],
                    max_seqlen_q: int, max_seqlen_k: int, alibi_slopes: Optional[Tensor], dropout_p: float,
                    softmax_scale: float, causal: bool, window_left: int, window_right: int, softcap: float,
                    deterministic: bool, seed: int, block_table: Optional[Tensor] = None,
                    seqused_q: Optional[Tensor] = None, seqused_k: Optional[Tensor] = None,
                    sinks: Optional[Tensor] = None, attention_chunk: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    seed = _draw(dropout_p, seed)
    out, lse = _core.attn_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                     softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, seed,
                                     block_table=block_table, seqused_q=seqused_q, seqused_k=seqused_k,
                                     sinks=sinks, attention_chunk=attention_chunk)
    return out, lse, _rng_state(seed)


@attn_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, dropout_p, softmax_scale,
      causal, window_left, window_right, softcap, deterministic, seed, block_table=None, seqused_q=None,
      seqused_k=None, sinks=None, attention_chunk=0):
    T, H, _ = q.shape
    return (q.new_empty((T, H, v.shape[-1])), q.new_empty((H, T), dtype=torch.float32),
            torch.empty((2,), dtype=torch.int64))


@_fast_op("attn_varlen_bwd")
def attn_varlen_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    cu_seqlens_q: Tensor, cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
                    alibi_slopes: Optional[Tensor], dropout_p: float, softmax_scale: float, causal: bool,
                    window_left: int, window_right: int, softcap: float, deterministic: bool,
                    rng_state: Tensor, block_table: Optional[Tensor] = None, seqused_q: Optional[Tensor] = None,
                    seqused_k: Optional[Tensor] = None, sinks: Optional[Tensor] = None,
                    attention_chunk: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _core.attn_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              dropout_p, softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                              deterministic, int(rng_state[0]), block_table=block_table, seqused_q=seqused_q,
                              seqused_k=seqused_k, sinks=sinks, attention_chunk=attention_chunk)
    return g[0], g[1], g[2], _dsinks(q, sinks, g[3] if sinks is not None else None)


@attn_varlen_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, dropout_p,
      softmax_scale, causal, window_left, window_right, softcap, deterministic, rng_state, block_table=None,
      seqused_q=None, seqused_k=None, sinks=None, attention_chunk=0):
    ds = q.new_empty((q.shape[1] if sinks is not None else 0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), ds


def _varlen_setup(ctx, inputs, output):
    q, k, v, cq, ck, mq, mk, alibi = inputs[:8]
    ctx.lens = (mq, mk)
    ctx.args = inputs[8:15]  # dropout_p .. deterministic; the seed travels in rng_state
    ctx.chunk = inputs[20]
    ctx.save_for_backward(q, k, v, output[0], output[1], cq, ck, alibi, output[2], *inputs[16:20])


def _varlen_backward(ctx, dout, dlse, drng):
    q, k, v, out, lse, cq, ck, alibi, rng, bt, suq, suk, sinks = ctx.saved_tensors
    dq, dk, dv, ds = torch.ops.cflash.attn_varlen_bwd(dout, q, k, v, out, lse, cq, ck, *ctx.lens, alibi, *ctx.args,
                                                      rng, bt, suq, suk, sinks, ctx.chunk)
    return (dq, dk, dv) + (None,) * 16 + (ds if sinks is not None and ctx.needs_input_grad[19] else None, None)


attn_varlen_fwd.register_autograd(_varlen_backward, setup_context=_varlen_setup)


# ---- KV cache (no backward, as flash-attn) ----


@_fast_op("attn_kvcache", mutates_args=("k_cache", "v_cache", "k_scales", "v_scales"))
def attn_kvcache(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                 rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor], cache_seqlens: Optional[Tensor],
                 cache_seqlen: int, cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor],
                 block_table: Optional[Tensor], alibi_slopes: Optional[Tensor], softmax_scale: float,
                 causal: bool, window_left: int, window_right: int, softcap: float, rotary_interleaved: bool,
                 num_splits: int, cu_seqlens_q: Optional[Tensor] = None, max_seqlen_q: int = 0,
                 cu_seqlens_k_new: Optional[Tensor] = None, cache_quant: int = 0, k_descale: Optional[Tensor] = None,
                 v_descale: Optional[Tensor] = None, k_scales: Optional[Tensor] = None,
                 v_scales: Optional[Tensor] = None, sinks: Optional[Tensor] = None,
                 attention_chunk: int = 0) -> Tuple[Tensor, Tensor]:
    seqlens = cache_seqlens if cache_seqlens is not None else (cache_seqlen if cache_seqlen >= 0 else None)
    return _core.attn_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens, cache_batch_idx,
                              cache_leftpad, block_table, softmax_scale, causal, window_left, window_right, softcap,
                              rotary_interleaved, alibi_slopes, num_splits, cu_seqlens_q=cu_seqlens_q,
                              max_seqlen_q=max_seqlen_q, cu_seqlens_k_new=cu_seqlens_k_new, cache_quant=cache_quant,
                              k_descale=k_descale, v_descale=v_descale, k_scales=k_scales, v_scales=v_scales,
                              sinks=sinks, attention_chunk=attention_chunk)


@attn_kvcache.register_fake
def _(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_seqlen, cache_batch_idx,
      cache_leftpad, block_table, alibi_slopes, softmax_scale, causal, window_left, window_right, softcap,
      rotary_interleaved, num_splits, cu_seqlens_q=None, max_seqlen_q=0, cu_seqlens_k_new=None, cache_quant=0,
      k_descale=None, v_descale=None, k_scales=None, v_scales=None, sinks=None, attention_chunk=0):
    if cu_seqlens_q is not None:
        T, H, _ = q.shape
        return q.new_empty((T, H, v_cache.shape[-1])), q.new_empty((H, T), dtype=torch.float32)
    B, Sq, H, _ = q.shape
    return q.new_empty((B, Sq, H, v_cache.shape[-1])), q.new_empty((B, H, Sq), dtype=torch.float32)


# ---- Rotary ----


@_op("cflash::rotary", mutates_args=())
def rotary(x: Tensor, cos: Tensor, sin: Tensor, seqlen_offsets: Optional[Tensor], seqlen_offset: int,
           cu_seqlens: Optional[Tensor], max_seqlen: int, interleaved: bool, conjugate: bool) -> Tensor:
    offs = seqlen_offsets if seqlen_offsets is not None else seqlen_offset
    return _core.rotary(x, cos, sin, interleaved, conjugate, offs, cu_seqlens, max_seqlen)


@rotary.register_fake
def _(x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved, conjugate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _rotary_setup(ctx, inputs, output):
    x, cos, sin, offs, off, cu, mx, inter, conj = inputs
    ctx.save_for_backward(cos, sin, offs, cu)
    ctx.args = (off, mx, inter, conj)


def _rotary_backward(ctx, dout):
    cos, sin, offs, cu = ctx.saved_tensors
    off, mx, inter, conj = ctx.args
    dx = torch.ops.cflash.rotary(dout, cos, sin, offs, off, cu, mx, inter, not conj)
    return (dx,) + (None,) * 8


rotary.register_autograd(_rotary_backward, setup_context=_rotary_setup)


@_op("cflash::rotary_", mutates_args=("x",))
def rotary_(x: Tensor, cos: Tensor, sin: Tensor, seqlen_offsets: Optional[Tensor], seqlen_offset: int,
            cu_seqlens: Optional[Tensor], max_seqlen: int, interleaved: bool, conjugate: bool,
            num_heads: int) -> None:
    offs = seqlen_offsets if seqlen_offsets is not None else seqlen_offset
    _core.rotary(x, cos, sin, interleaved, conjugate, offs, cu_seqlens, max_seqlen, num_heads, inplace=True)


@rotary_.register_fake
def _(x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved, conjugate, num_heads):
    return None


def part_view(x, part):
    if part[0] == "select":
        return x.select(part[1], part[2])
    return x.narrow(part[1], part[2], part[3])


def rotate_inplace(x, cos, sin, offs, off, cu, mx, interleaved, num_heads, parts, cos_k, sin_k):
    """Rotates x in place (all of it, its first num_heads heads, or its parts: ("select", dim, i) /
    ("narrow", dim, start, length) views; the second part uses cos_k / sin_k when given); returns x
    or, on a leaf that requires grad, the result to differentiate through (as flash-attn).
    Without autograd the library writes x directly. With autograd:
    - x a leaf that requires grad (or a view made where autograd cannot track it, such as the
      output of a custom Function): the write happens inside an autograd.Function, as
      flash-attn's ApplyRotaryEmb does; the returned tensor carries the gradient (the leaf itself
      cannot be rebased onto a graph);
    - otherwise each part is computed by the differentiable op and copied back with copy_, so x
      itself carries the gradient; autograd and torch.compile handle this everywhere (a custom
      Function marking a view dirty gets wrong gradients from torch.compile across a graph break,
      in PyTorch 2.15)."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, cos, sin, cos_k, sin_k))
    args = (offs, off, cu, mx, interleaved, num_heads, parts)
    if not grad:
        _rotate_views(x, cos, sin, cos_k, sin_k, args, False)
        return x
    if x.requires_grad and x.is_leaf:
        return _RotaryInplace.apply(x, cos, sin, cos_k, sin_k, *args)
    for n, view in enumerate(_views(x, num_heads, parts)):
        c, s = (cos, sin) if n == 0 or cos_k is None else (cos_k, sin_k)
        rotated = torch.ops.cflash.rotary(view, c, s, offs, off, cu, mx, interleaved, False)
        try:
            view.copy_(rotated)
        except RuntimeError:  # a view autograd will not let be written (made in no_grad or a custom Function)
            if n:
                raise
            return _RotaryInplace.apply(x, cos, sin, cos_k, sin_k, *args)
    return x


def _views(x, num_heads, parts):
    return [part_view(x, p) for p in parts] if parts else [x.narrow(-2, 0, num_heads) if num_heads else x]


def _rotate_views(x, cos, sin, cos_k, sin_k, args, conjugate):
    offs, off, cu, mx, interleaved, num_heads, parts = args
    for n, view in enumerate(_views(x, num_heads, parts)):
        c, s = (cos, sin) if n == 0 or cos_k is None else (cos_k, sin_k)
        torch.ops.cflash.rotary_(view, c, s, offs, off, cu, mx, interleaved, conjugate, 0)


class _RotaryInplace(torch.autograd.Function):
    """In-place rotation of a leaf that requires grad: written inside forward (where autograd does
    not watch), the gradient is the conjugate rotation of the incoming one. cos / sin get no
    gradient, as in flash-attn."""

    @staticmethod
    def forward(ctx, x, cos, sin, cos_k, sin_k, offs, off, cu, mx, interleaved, num_heads, parts):
        args = (offs, off, cu, mx, interleaved, num_heads, parts)
        _rotate_views(x, cos, sin, cos_k, sin_k, args, False)
        ctx.save_for_backward(cos, sin, cos_k, sin_k, offs, cu)
        ctx.args = (off, mx, interleaved, num_heads, parts)
        return x

    @staticmethod
    def backward(ctx, g):
        cos, sin, cos_k, sin_k, offs, cu = ctx.saved_tensors
        off, mx, interleaved, num_heads, parts = ctx.args
        dx = g.clone(memory_format=torch.contiguous_format)
        _rotate_views(dx, cos, sin, cos_k, sin_k, (offs, off, cu, mx, interleaved, num_heads, parts), True)
        return (dx,) + (None,) * 11


# ---- Norm ----


@_op("cflash::norm_fwd", mutates_args=())
def norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor], eps: float,
             dropout_p: float, seed: int, is_rms_norm: bool, residual_in_fp32: bool,
             out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    seed = _draw(dropout_p, seed)
    y, h, mean, rstd = _core.norm_fwd(x, weight, bias, residual, eps, dropout_p, seed, is_rms_norm,
                                      residual_in_fp32, out_dtype)
    empty = x.new_empty((0,), dtype=torch.float32)
    return (y, (h if h is not None else empty.clone()), (mean if mean is not None else empty.clone()), rstd,
            _rng_state(seed))


@norm_fwd.register_fake
def _(x, weight, bias, residual, eps, dropout_p, seed, is_rms_norm, residual_in_fp32, out_dtype=None):
    N = x.shape[-1]
    M = x.numel() // N if N else 0
    y = torch.empty_like(x, memory_format=torch.contiguous_format, dtype=out_dtype or x.dtype)
    if residual is not None:
        h = x.new_empty((M, N), dtype=residual.dtype)
    elif (residual_in_fp32 and x.dtype != torch.float32) or dropout_p > 0:
        h = x.new_empty((M, N), dtype=torch.float32 if residual_in_fp32 else x.dtype)
    else:
        h = x.new_empty((0,), dtype=torch.float32)
    mean = x.new_empty((0 if is_rms_norm else M,), dtype=torch.float32)
    return y, h, mean, x.new_empty((M,), dtype=torch.float32), torch.empty((2,), dtype=torch.int64)


@_op("cflash::norm_bwd", mutates_args=())
def norm_bwd(dy: Tensor, h: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Optional[Tensor], rstd: Tensor,
             dresidual_out: Optional[Tensor], x_like: Tensor, residual_like: Optional[Tensor], eps: float,
             dropout_p: float, rng_state: Tensor, is_rms_norm: bool) -> List[Tensor]:
    dx, dw, db, dres = _core.norm_bwd(dy, h, weight, bias, mean, rstd, dresidual_out, eps, dropout_p,
                                      int(rng_state[0]),
                                      is_rms_norm, x_like, residual_like is not None, residual_like)
    none = h.new_empty((0,))
    return [dx, dw if dw is not None else none.clone(), db if db is not None else none.clone(), dres if dres is not None else none.clone()]


@norm_bwd.register_fake
def _(dy, h, weight, bias, mean, rstd, dresidual_out, x_like, residual_like, eps, dropout_p, rng_state, is_rms_norm):
    M, N = h.shape
    dx = h.new_empty((M, N), dtype=x_like.dtype)
    db = torch.empty_like(bias) if bias is not None else h.new_empty((0,))
    dres = h.new_empty((M, N), dtype=residual_like.dtype) if residual_like is not None else h.new_empty((0,))
    dw = torch.empty_like(weight) if weight is not None else h.new_empty((0,))
    return [dx, dw, db, dres]


def _norm_setup(ctx, inputs, output):
    x, weight, bias, residual, eps, dropout_p, _, is_rms, _, _ = inputs
    y, h, mean, rstd, rng = output
    ctx.has_h = h.numel() > 0 or x.numel() == 0
    ctx.has_bias = bias is not None
    ctx.shape = x.shape
    ctx.args = (eps, dropout_p, is_rms)
    # x_like / residual_like carry only dtype and device (0-element tensors).
    ctx.save_for_backward(h if ctx.has_h else x.reshape(-1, x.shape[-1]), weight, bias,
                          mean if not is_rms else None, rstd, x.new_empty((0,)),
                          residual.new_empty((0,)) if residual is not None else None, rng)


def _norm_backward(ctx, dy, dh, dmean, drstd, drng):
    h, weight, bias, mean, rstd, x_like, residual_like, rng = ctx.saved_tensors
    dro = dh if (dh is not None and ctx.has_h and dh.numel() > 0) else None
    eps, dropout_p, is_rms = ctx.args
    dx, dw, db, dres = torch.ops.cflash.norm_bwd(dy, h, weight, bias, mean, rstd, dro, x_like, residual_like,
                                                 eps, dropout_p, rng, is_rms)
    return (dx.reshape(ctx.shape), dw if weight is not None else None, db if ctx.has_bias else None,
            dres.reshape(ctx.shape) if residual_like is not None else None, None, None, None, None, None, None)


norm_fwd.register_autograd(_norm_backward, setup_context=_norm_setup)


def fresh_rng_state():
    """A dropout (seed, offset) tensor drawn from torch's generator without leaving the graph
    (no .item(): torch.compile keeps it in one piece)."""
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
    return torch.cat([seed, seed.new_zeros(1)])


@_op("cflash::dropout_keep", mutates_args=())
def dropout_keep(x: Tensor, n_masks: int, dropout_p: float, rng_state: Tensor) -> Tensor:
    """The norm's dropout keep masks, bool (n_masks, rows, x.shape[-1]) on x's device: mask 0 is
    the one cflash_norm_fwd applies with this seed (the attention mask's Philox keying, head 0),
    mask m the same keying at head m (flash-attn's second input x1 uses mask 1)."""
    N = x.shape[-1]
    M = x.numel() // N if N else 0
    m = _core.dropout_mask(1, n_masks, M, N, dropout_p, int(rng_state[0]), int(rng_state[1]))[0]
    return torch.from_numpy(m).to(device=x.device, dtype=torch.bool)


@dropout_keep.register_fake
def _(x, n_masks, dropout_p, rng_state):
    N = x.shape[-1]
    M = x.numel() // N if N else 0
    return x.new_empty((n_masks, M, N), dtype=torch.bool)


# ---- Merge ----


@_op("cflash::attn_merge", mutates_args=())
def attn_merge(out_partial: Tensor, lse_partial: Tensor) -> Tuple[Tensor, Tensor]:
    return _core.attn_merge(out_partial, lse_partial)


@attn_merge.register_fake
def _(out_partial, lse_partial):
    return out_partial.new_empty(out_partial.shape[1:]), lse_partial.new_empty(lse_partial.shape[1:])


# ---- Issue 13: additive bias and boolean masks (SDPA's attn_mask) ----
# A torch.autograd.Function (torch.compile breaks the graph here); sinks and attention_chunk are
# arguments of the custom ops above.


class AttnExtra(torch.autograd.Function):
    """Batch attention with sinks (fp32 (H,)), attn_bias and attn_mask ((B|1, H|1, Sq, Sk));
    gradients for q, k, v, sinks and attn_bias."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, attn_bias, attn_mask, alibi_slopes, dropout_p, scale, causal, wl, wr,
                softcap, deterministic, seed):
        seed = _draw(dropout_p, seed)
        out, lse = _core.attn_fwd(q, k, v, dropout_p, scale, causal, wl, wr, softcap, alibi_slopes, seed,
                                  sinks=sinks, attn_bias=attn_bias, attn_mask=attn_mask)
        ctx.save_for_backward(q, k, v, out, lse, sinks, attn_bias, attn_mask, alibi_slopes)
        ctx.args = (dropout_p, scale, causal, wl, wr, softcap, alibi_slopes, deterministic, seed)
        rng = _rng_state(seed)
        ctx.mark_non_differentiable(lse, rng)
        return out, lse, rng

    @staticmethod
    def backward(ctx, dout, dlse, drng):
        q, k, v, out, lse, sinks, bias, mask, alibi = ctx.saved_tensors
        p, scale, causal, wl, wr, softcap, _, det, seed = ctx.args
        want_db = bias is not None and ctx.needs_input_grad[4]
        g = _core.attn_bwd(dout, q, k, v, out, lse, p, scale, causal, wl, wr, softcap, alibi, det, seed,
                           sinks=sinks, attn_bias=bias, attn_mask=mask, want_dbias=want_db)
        ds, db = (g[3], g[4]) if len(g) == 5 else (None, None)
        return (g[0], g[1], g[2], ds if ctx.needs_input_grad[3] else None, db) + (None,) * 10


def _absmax(x):
    """max |x| as a float (0 when empty; NaN with a NaN)."""
    if not x.numel():
        return 0.0
    lo, hi = torch.aminmax(x.detach())
    return max(-float(lo), float(hi)) if lo == lo and hi == hi else float("nan")


def _hide_far_keys(query, key, m, scale):
    """(keep, zero). keep: for an additive mask m (B|1, H|1, Sq, Sk), a boolean mask of the same
    shape that hides the keys whose value lies so far below its row's largest that their softmax
    weight is 0 in fp32 for any scores this query and key can make, or None when it hides none.
    transformers writes its causal and padding masks with the dtype's finfo.min, not -inf: the
    library skips tiles that are -inf or hidden by a boolean mask, so such a mask cost a dense
    call (2x a causal one). |score| <= scale |q| |k| (Cauchy-Schwarz; the norms bounded by
    sqrt(D) times the largest |element|, one pass without a copy: the norms themselves cost 20 ms
    of fp32 copies at a decode step's 4 x 8 x 4096 x 128 bf16 keys, 8x its attention), so a key
    more than twice that plus 200 below the row's largest value weighs at most exp(-200) of that
    key, under fp32's smallest subnormal: hiding it changes nothing. Rows whose largest value is
    not finite (all -inf, a NaN, +inf), and rows all at finfo.min, keep every key; NaN values are
    kept. zero: m is 0 at every key keep keeps (transformers' masks: 0 or finfo.min), so keep
    alone is the whole mask (none at all when keep is None): the library's mask without a bias
    reads no bias. (sdpa_masked runs this only over more than _DECODE_SQ query rows.)"""
    qn, kn = (x.shape[-1] ** 0.5 * _absmax(x) for x in (query, key))
    margin = 2.0 * scale * qn * kn + 200.0
    if not margin < 1e30:  # (inf or NaN inputs: nothing hidden)
        return None, False
    keep = torch.empty(m.shape, dtype=torch.bool, device=m.device)
    if m.device.type == "cpu" and m.dim() == 4 and m.dtype in (torch.float32, torch.float16, torch.bfloat16):
        # the library's one pass (cflash_attn_mask_far_keys): 4-6 against 13-22 ms for the torch ops
        # below, B1 S2048 bf16 on 2 threads (docs/PERF.md, stop 51)
        md = m.detach()
        if md.shape[-1] > 1 and md.stride(-1) != 1:
            md = md.contiguous()
        hides, zero = _core.mask_far_keys(md, margin, keep)
        return (keep if hides else None), zero
    return _far_keys_torch(m, margin, keep)


def _far_keys_torch(m, margin, keep):
    """_hide_far_keys's (keep, zero) in torch ops (masks on a GPU), keep: m's shape, bool."""
    rows = max(1, (1 << 22) // max(1, m.shape[0] * m.shape[1] * m.shape[3]))  # ~16 MB of fp32 at a time
    hides, zero = False, True
    for i0 in range(0, m.shape[2], rows):
        c = m[..., i0:i0 + rows, :].detach().float()
        top = c.amax(dim=-1, keepdim=True)
        kc = ~(c < top - margin) | ~torch.isfinite(top)
        keep[..., i0:i0 + rows, :] = kc
        hides = hides or not bool(kc.all())
        zero = zero and not bool(c.masked_fill(~kc, 0.0).any())  # (NaN counts as nonzero)
    return (keep if hides else None), zero


# Query rows up to which a float mask goes to the library as it is (_hide_far_keys not run): a
# decode or short speculative step, whose rows the CPU backends serve on their KV-cache kernels
# with the bias added row by row, where the bound's pass over every key costs more than the keys it
# hides save (1.0-1.5x slower at 128-32768 keys, docs/PERF.md, stop 49).
_DECODE_SQ = 8


def sdpa_masked(query, key, value, attn_mask, dropout_p=0.0, scale=None, enable_gqa=False, softcap=0.0, sinks=None):
    """torch.nn.functional.scaled_dot_product_attention's call with an attn_mask, on libcflash:
    query (B, H, Sq, D), key / value (B, Hk, Sk, D[v]); attn_mask boolean (True = the key takes
    part) or additive (float), broadcastable to (B, H, Sq, Sk). Differentiable in query, key,
    value, a float mask and sinks. A row whose every key is masked gives 0 (as PyTorch 2.15
    does). enable_gqa is accepted as SDPA's (Hk dividing H is GQA either way). Beyond SDPA:
    softcap (c tanh(s / c), before the mask) and sinks (H,) (flash_attn_func's learnable_sink)."""
    B, H, Sq, _ = query.shape
    Sk = key.shape[-2]
    m = attn_mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    if m.shape[2] != Sq or m.shape[3] != Sk:  # the library broadcasts over B and H only
        m = m.expand(m.shape[0], m.shape[1], Sq, Sk).contiguous()
    boolean = m.dtype == torch.bool
    if not boolean and m.dtype not in (torch.float32, query.dtype):
        m = m.to(torch.float32)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    sc = 1.0 / float(query.shape[-1]) ** 0.5 if scale is None else float(scale)
    bias, keep = (None, m) if boolean else (m, None)
    compiling = torch.compiler.is_compiling()
    if not boolean and Sq > _DECODE_SQ and not compiling:
        keep, zero = _hide_far_keys(query, key, m, sc)
        if zero and not m.requires_grad:  # (the bias adds 0 wherever keep keeps: keep says it all)
            bias = None
    if sinks is not None:
        sinks = sinks.to(device=query.device, dtype=torch.float32)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, sinks, bias))
    if not grad and not compiling:  # (inference: no autograd node, 8 us a call)
        out, _ = _core.attn_fwd(q, k, v, float(dropout_p), sc, False, -1, -1, float(softcap), None,
                                _draw(dropout_p, -1), sinks=sinks, attn_bias=bias, attn_mask=keep)
    else:
        out, _, _ = AttnExtra.apply(q, k, v, sinks, bias, keep, None, float(dropout_p), sc, False, -1, -1,
                                    float(softcap), False, -1)
    return out.transpose(1, 2)
