"""torch.nn.functional.scaled_dot_product_attention's signature and semantics on libcflash, and
patch_sdpa() / unpatch_sdpa() to route torch's function to it.

PyTorch's layout is (batch, heads, seqlen, headdim); the library reads (batch, seqlen, heads,
headdim), so the inputs pass as transposed views (no copy) and the output comes back as one
(PyTorch's own CPU flash kernel returns that layout too). PyTorch's causal mask is aligned
top-left (query i sees keys j <= i) where the library's is bottom-right (j <= i + Sk - Sq):
- Sq == Sk: the same mask;
- Sq > Sk: no causal flag but a window (left unbounded, right Sq - Sk), which is exactly j <= i;
- Sq < Sk: keys j >= Sq are seen by no query, so k and v are cut to their first Sq rows (a view)
  and the square causal mask applies; their gradient there is 0, as PyTorch's.
A boolean or additive attn_mask (broadcastable to (N, H, L, S)) is served by the library's mask
and bias (cflash._torch.sdpa_masked, issue 13; differentiable in an additive mask); a row whose
every key is masked gives 0, as PyTorch's does.
Calls the library cannot serve go to PyTorch's own function, so nothing fails that PyTorch would
have run: masks of other dtypes, attn_mask with is_causal, other dtypes and devices, nested
tensors, inputs of other than 3 or 4 dims, and whatever PyTorch itself rejects (it raises its own
error). cflash.explain(cflash.scaled_dot_product_attention, ...) says which way a call goes and
why. torch is imported only when a function here is called."""

import sys

from . import _core
from .flash_attn_interface import flash_attn_func

__all__ = ["scaled_dot_product_attention", "patch_sdpa", "unpatch_sdpa"]

_original = None  # PyTorch's scaled_dot_product_attention, saved before any patch


def _torch_sdpa():
    global _original
    if _original is None:
        import torch.nn.functional as F

        f = F.scaled_dot_product_attention
        _original = f if f is not _patched else None
    return _original


_FLOATS = ()


def _why_not(q, k, v, attn_mask, is_causal, enable_gqa):
    """None when the library serves the call, else the reason it goes to PyTorch."""
    global _FLOATS
    torch = sys.modules["torch"]
    if not _FLOATS:
        _FLOATS = (torch.float32, torch.float16, torch.bfloat16)
    T = torch.Tensor
    if not (isinstance(q, T) and isinstance(k, T) and isinstance(v, T)):
        return "query, key, value: not all torch tensors"
    if attn_mask is not None:
        if not isinstance(attn_mask, T) or attn_mask.is_nested:
            return "attn_mask: not a torch tensor"
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            return "attn_mask: dtype %s, expected bool or a floating dtype (PyTorch says how)" % attn_mask.dtype
        if is_causal:
            return "attn_mask with is_causal (PyTorch says how)"
        if attn_mask.device != q.device:
            return "attn_mask: on %s, expected the device of query (%s)" % (attn_mask.device, q.device)
    if q.is_nested or k.is_nested or v.is_nested:
        return "nested tensors"
    qs, ks, vs = q.shape, k.shape, v.shape
    nd = len(qs)
    if nd not in (3, 4) or len(ks) != nd or len(vs) != nd:
        return "query, key, value: %d, %d, %d dims, expected 3 or 4 each" % (nd, len(ks), len(vs))
    dt = q.dtype
    if dt not in _FLOATS or k.dtype != dt or v.dtype != dt:
        return "dtypes %s, %s, %s: expected one of float32, float16, bfloat16 for all" % (dt, k.dtype, v.dtype)
    if not (q.is_cpu and k.is_cpu and v.is_cpu) and not (q.is_cuda and k.device == q.device and v.device == q.device):
        return "devices %s, %s, %s: expected one cpu or cuda device" % (q.device, k.device, v.device)
    if qs[0] != ks[0] or ks[0] != vs[0] or ks[-2] != vs[-2]:
        return "shapes %s, %s, %s do not line up (PyTorch says how)" % (tuple(qs), tuple(ks), tuple(vs))
    if qs[-1] != ks[-1]:
        return "query and key head dims %d, %d differ (PyTorch says how)" % (qs[-1], ks[-1])
    if nd == 4:
        hq, hk, hv = qs[1], ks[1], vs[1]
        if hk != hv or (hq != hk and not (enable_gqa and hk > 0 and hq % hk == 0)):
            return "heads %d, %d, %d: expected equal, or a multiple for query with enable_gqa" % (hq, hk, hv)
    if ks[-2] == 0:
        return "no keys"
    return None


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention: query (N, H, L, E) (or (N, L, E)), key
    (N, Hk, S, E), value (N, Hk, S, Ev), Hk == H or, with enable_gqa, a divisor of H; is_causal:
    query i sees keys j <= i (top-left); scale: default 1 / sqrt(E); dropout_p > 0 drops
    attention weights (the library's Philox mask, seeded from torch's generator). Returns
    (N, H, L, Ev). Served by libcflash where it can, else by PyTorch (see the module's text)."""
    why = _why_not(query, key, value, attn_mask, is_causal, enable_gqa)
    if why is None:
        torch = sys.modules["torch"]
        serve = _serve if attn_mask is None else _serve_masked
        arg = is_causal if attn_mask is None else attn_mask
        if torch.compiler.is_compiling():
            return serve(query, key, value, dropout_p, arg, scale)
        try:
            return serve(query, key, value, dropout_p, arg, scale)
        except (ValueError, RuntimeError) as e:  # the library refuses: PyTorch decides
            why = "libcflash refused it: %s" % e
    if _core.explaining():
        _core._explain.sink.append(("scaled_dot_product_attention", 0, "-> PyTorch: " + why))
        return None
    kw = {"enable_gqa": True} if enable_gqa else {}
    return _torch_sdpa()(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, **kw)


def _serve(q, k, v, dropout_p, is_causal, scale):
    three = q.dim() == 3
    if three:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    Sq, Sk = q.shape[2], k.shape[2]
    causal, window = False, (-1, -1)
    if is_causal:
        if Sq < Sk:  # keys Sq.. are seen by no query
            k, v = k[:, :, :Sq], v[:, :, :Sq]
            causal = True
        elif Sq == Sk:
            causal = True
        else:
            window = (-1, Sq - Sk)
    if _core.explaining():
        how = "causal" if causal else ("window (-1, %d)" % window[1] if is_causal else "no mask")
        _core._explain.sink.append(("scaled_dot_product_attention", 0, "-> libcflash: flash_attn_func on (B, S, H, D) "
                                    "views, top-left causal as %s" % how))
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p,
                          softmax_scale=scale, causal=causal, window_size=window)
    out = out.transpose(1, 2)
    return out.squeeze(1) if three else out


def _serve_masked(q, k, v, dropout_p, attn_mask, scale):
    from ._torch import sdpa_masked

    three = q.dim() == 3
    if three:  # (N, L, E) with a mask broadcastable to (N, L, S): one head
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)
    if _core.explaining():
        how = "boolean mask as attn_mask" if attn_mask.dtype == sys.modules["torch"].bool else "additive mask as attn_bias"
        _core._explain.sink.append(("scaled_dot_product_attention", 0, "-> libcflash: _torch.sdpa_masked, the " + how))
    out = sdpa_masked(q, k, v, attn_mask, dropout_p=dropout_p, scale=scale)
    return out.squeeze(1) if three else out


def _patched(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


_patched.__doc__ = "torch.nn.functional.scaled_dot_product_attention, patched by cflash.patch_sdpa()."


def patch_sdpa():
    """Makes torch.nn.functional.scaled_dot_product_attention go through cflash: calls it serves
    run on libcflash, the others on PyTorch's own function. Affects code that looks the function up
    on torch.nn.functional at call time (not a reference taken before patching). Idempotent."""
    import torch.nn.functional as F

    _torch_sdpa()
    F.scaled_dot_product_attention = _patched


def unpatch_sdpa():
    """Restores PyTorch's own scaled_dot_product_attention."""
    import torch.nn.functional as F

    if F.scaled_dot_product_attention is _patched:
        F.scaled_dot_product_attention = _torch_sdpa()
