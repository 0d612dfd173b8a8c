"""RMSNorm / LayerNorm with a fused residual add and dropout, with flash-attn 2.8's API
(flash_attn.ops.triton.layer_norm): layer_norm_fn, rms_norm_fn, layer_norm_linear_fn and the
RMSNorm module, on libcflash. NumPy arrays or torch tensors; with torch, differentiable.

The library's norm call fuses dropout, the residual add, any output dtype and an fp32 residual
stream. flash-attn's other arguments are composed around it: rowscale, the second input x1 and
the second weight weight1 / bias1 (the parallel norm) build the summed input h in fp32 (torch or
NumPy ops, with the library's Philox dropout masks) and normalise it with the library;
zero_centered_weight and weights of another dtype than x pass an fp32 weight (weight + 1)."""

import numpy as np

from .. import _core
from .._tensor import is_torch, to_array

__all__ = ["layer_norm_fn", "rms_norm_fn", "layer_norm_linear_fn", "RMSNorm", "layer_norm_ref", "rms_norm_ref"]


def layer_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                  rowscale=None, prenorm=False, residual_in_fp32=False, zero_centered_weight=False,
                  is_rms_norm=False, return_dropout_mask=False, out_dtype=None, out=None, residual_out=None):
    """y = norm(h) * weight + bias over the last dim (LayerNorm, or RMSNorm when is_rms_norm), with
    h = dropout(x * rowscale) + dropout(x1) + residual (each part optional; rowscale (...,) scales
    rows, not with x1). weight1 / bias1 give a second output norm(h) * weight1 + bias1.
    zero_centered_weight: the weights are stored minus 1. Returns y (or (y, y1) with weight1),
    then residual_out when prenorm: h in the residual's dtype (float32 when residual_in_fp32 and no
    residual is given, else x's dtype; x itself when nothing was added), then, when
    return_dropout_mask, the bool keep masks of x and x1 (None without dropout / x1). out_dtype:
    dtype of y and y1 (default x's)."""
    names = ("x", "weight", "bias", "residual", "x1", "weight1", "bias1", "rowscale")
    x, weight, bias, residual, x1, weight1, bias1, rowscale = [
        to_array(t, n) for t, n in zip((x, weight, bias, residual, x1, weight1, bias1, rowscale), names)]
    for name, t in (("residual", residual), ("x1", x1)):
        if t is not None and tuple(t.shape) != tuple(x.shape):
            raise ValueError("%s: shape %s, expected the shape of x %s" % (name, tuple(t.shape), tuple(x.shape)))
    if rowscale is not None and x1 is not None:
        raise ValueError("rowscale: given with x1, expected None (flash-attn has no row scaling in the parallel norm)")
    if rowscale is not None and int(np.prod(rowscale.shape)) != int(np.prod(x.shape[:-1])):
        raise ValueError("rowscale: shape %s, expected one value per row of x %s" % (tuple(rowscale.shape),
                                                                                   tuple(x.shape[:-1])))
    if out is not None:
        out_dtype = out.dtype
    ops = _TorchOps() if is_torch(x) else _NumpyOps()
    if ops.torch:
        weight, bias, residual, x1, weight1, bias1, rowscale = ops.as_tensors(
            (weight, bias, residual, x1, weight1, bias1, rowscale), x)
    if x1 is None and weight1 is None and rowscale is None:
        y, y1, h, masks = _fused(ops, x, weight, bias, residual, eps, dropout_p, residual_in_fp32,
                                 zero_centered_weight, is_rms_norm, return_dropout_mask, out_dtype)
    else:
        y, y1, h, masks = _composed(ops, x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale,
                                    residual_in_fp32, zero_centered_weight, is_rms_norm, out_dtype)
    if out is not None:
        out[...] = y
        y = out
    if residual_out is not None and prenorm:
        residual_out[...] = h
        h = residual_out
    ys = (y,) if weight1 is None else (y, y1)
    res = ys + ((h,) if prenorm else ())
    if return_dropout_mask:
        res += masks if dropout_p > 0 else (None, None)
    return res[0] if len(res) == 1 else res


def rms_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                rowscale=None, prenorm=False, residual_in_fp32=False, zero_centered_weight=False,
                return_dropout_mask=False, out_dtype=None, out=None, residual_out=None):
    """RMSNorm: layer_norm_fn with is_rms_norm=True."""
    return layer_norm_fn(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                         residual_in_fp32, zero_centered_weight, True, return_dropout_mask, out_dtype, out,
                         residual_out)


def _fused(ops, x, weight, bias, residual, eps, p, residual_in_fp32, zero_centered, is_rms, want_mask, out_dtype):
    """Everything in one library call: (y, None, h, (mask, None))."""
    w = ops.weight(weight, x, zero_centered)
    b = ops.weight(bias, x, False)
    y, h, seed = ops.norm(x, w, b, residual, eps, p, is_rms, residual_in_fp32, out_dtype)
    masks = (None, None)
    if want_mask and p > 0:
        masks = (ops.keep(x, 1, p, seed)[0], None)
    return y, None, h, masks


def _composed(ops, x, weight, bias, residual, x1, weight1, bias1, eps, p, rowscale, residual_in_fp32,
              zero_centered, is_rms, out_dtype):
    """h in fp32 from its parts, then the library's norm of h for y (and y1)."""
    h = ops.f32(x)
    if rowscale is not None:
        h = h * ops.f32(rowscale).reshape(tuple(x.shape[:-1]) + (1,))
    masks = (None, None)
    if p > 0:
        seed = ops.seed()
        keep = ops.keep(x, 1 if x1 is None else 2, p, seed)
        masks = (keep[0], keep[1] if x1 is not None else None)
        h = ops.where(masks[0], h / (1.0 - p))
    if x1 is not None:
        h1 = ops.f32(x1)
        h = h + (ops.where(masks[1], h1 / (1.0 - p)) if p > 0 else h1)
    if residual is not None:
        h = h + ops.f32(residual)
    res_dtype = residual.dtype if residual is not None else (ops.float32 if residual_in_fp32 else x.dtype)
    od = out_dtype if out_dtype is not None else x.dtype
    y = ops.norm(h, ops.weight(weight, h, zero_centered, True), ops.weight(bias, h, False, True), None, eps, 0.0,
                 is_rms, False, od)[0]
    y1 = None
    if weight1 is not None:
        y1 = ops.norm(h, ops.weight(weight1, h, zero_centered, True), ops.weight(bias1, h, False, True), None, eps,
                      0.0, is_rms, False, od)[0]
    return y, y1, ops.cast(h, res_dtype), masks


class _NumpyOps:
    torch = False
    float32 = np.dtype(np.float32)

    @staticmethod
    def f32(t):
        return np.asarray(t).astype(np.float32)

    @staticmethod
    def cast(t, dtype):
        return t if t.dtype == dtype else t.astype(dtype)

    @staticmethod
    def where(m, t):
        return np.where(m, t, np.float32(0)).astype(np.float32)

    @staticmethod
    def seed():
        return int(np.random.randint(0, 2**62, dtype=np.int64))

    @staticmethod
    def keep(x, n, p, seed):
        M = int(np.prod(x.shape[:-1]))
        m = _core.dropout_mask(1, n, M, x.shape[-1], p, seed)[0].astype(bool)
        return [m[i].reshape(x.shape) for i in range(n)]

    @staticmethod
    def weight(w, x, zero_centered, force_f32=False):
        """w as the library takes it: float32 or x's dtype; w + 1 when zero-centered."""
        if w is None:
            return None
        if zero_centered:
            return w.astype(np.float32) + np.float32(1)
        if force_f32 or (w.dtype != x.dtype and w.dtype != np.float32):
            return w.astype(np.float32)
        return w

    @staticmethod
    def norm(x, w, b, residual, eps, p, is_rms, residual_in_fp32, out_dtype):
        seed = _NumpyOps.seed() if p > 0 else 0
        y, h, _, _ = _core.norm_fwd(x, w, b, residual, eps, p, seed, is_rms, residual_in_fp32, out_dtype)
        return y, (h.reshape(x.shape) if h is not None else x), seed


class _TorchOps:
    torch = True

    def __init__(self):
        from .. import _torch

        self.t = _torch
        self.float32 = _torch.torch.float32

    def as_tensors(self, xs, like):
        torch = self.t.torch
        return [x if x is None or is_torch(x) else torch.as_tensor(x, device=like.device) for x in xs]

    @staticmethod
    def f32(t):
        return t.float()

    @staticmethod
    def cast(t, dtype):
        return t.to(dtype)

    def where(self, m, t):
        return self.t.torch.where(m, t, t.new_zeros(()))

    def seed(self):
        return self.t.fresh_rng_state()

    def keep(self, x, n, p, rng):
        m = self.t.torch.ops.cflash.dropout_keep(x, n, float(p), rng)
        return [m[i].reshape(x.shape) for i in range(n)]

    def weight(self, w, x, zero_centered, force_f32=False):
        if w is None:
            return None
        f32 = self.float32
        if zero_centered:
            return w.float() + 1.0
        if force_f32 or (w.dtype != x.dtype and w.dtype != f32):
            return w.float()
        return w

    def norm(self, x, w, b, residual, eps, p, is_rms, residual_in_fp32, out_dtype):
        y, h, _, _, rng = self.t.torch.ops.cflash.norm_fwd(x, w, b, residual, float(eps), float(p),
                                                          -1 if p > 0 else 0, bool(is_rms), bool(residual_in_fp32),
                                                          out_dtype)
        return y, (h.reshape(x.shape) if h.dim() == 2 else x), rng


def layer_norm_linear_fn(x, norm_weight, norm_bias, linear_weight, linear_bias, residual=None, eps=1e-6,
                         prenorm=False, residual_in_fp32=False, is_rms_norm=False):
    """linear(norm(x + residual)) as flash-attn's: the norm's output in the autocast dtype when
    autocast is on (else x's), the linear layer's weight and bias cast to it. Returns out, or
    (out, residual_out) when prenorm. torch only."""
    import torch

    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    y, h = layer_norm_fn(x, norm_weight, norm_bias, residual, eps=eps, prenorm=True,
                         residual_in_fp32=residual_in_fp32, is_rms_norm=is_rms_norm, out_dtype=dtype)
    dtype = dtype if dtype is not None else y.dtype
    lw = linear_weight.to(dtype)
    lb = linear_bias.to(dtype) if linear_bias is not None else None
    out = torch.nn.functional.linear(y.to(dtype), lw, lb)
    return (out, h) if prenorm else out


def layer_norm_ref(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                   rowscale=None, prenorm=False, zero_centered_weight=False, dropout_mask=None, dropout_mask1=None,
                   upcast=False):
    """Plain-torch reference of layer_norm_fn (flash-attn's layer_norm_ref): the same arguments and
    results; dropout_mask / dropout_mask1 (bool, True = kept) replay a run's masks; upcast computes in
    fp32."""
    return _norm_ref(False, x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                     zero_centered_weight, dropout_mask, dropout_mask1, upcast)


def rms_norm_ref(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                 rowscale=None, prenorm=False, zero_centered_weight=False, dropout_mask=None, dropout_mask1=None,
                 upcast=False):
    """Plain-torch reference of rms_norm_fn (flash-attn's rms_norm_ref)."""
    return _norm_ref(True, x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                     zero_centered_weight, dropout_mask, dropout_mask1, upcast)


def _norm_ref(is_rms, x, weight, bias, residual, x1, weight1, bias1, eps, p, rowscale, prenorm, zero_centered,
              mask, mask1, upcast):
    import torch
    import torch.nn.functional as F

    dtype = x.dtype
    up = (lambda t: t.float() if t is not None else None) if upcast else (lambda t: t)
    x, weight, bias, residual, x1, weight1, bias1 = [up(t) for t in (x, weight, bias, residual, x1, weight1, bias1)]
    if zero_centered:
        weight = weight + 1.0
        weight1 = weight1 + 1.0 if weight1 is not None else None
    if rowscale is not None:
        x = x * rowscale[..., None]

    def drop(t, m):
        return t.masked_fill(~m, 0.0) / (1.0 - p) if m is not None else F.dropout(t, p=p)

    if p > 0:
        x = drop(x, mask)
        x1 = drop(x1, mask1) if x1 is not None else None
    if x1 is not None:
        x = x + x1
    if residual is not None:
        x = (x + residual).to(x.dtype)

    def norm(w, b):
        if not is_rms:
            return F.layer_norm(x.to(w.dtype), x.shape[-1:], weight=w, bias=b, eps=eps).to(dtype)
        y = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps) * w
        return (y + b if b is not None else y).to(dtype)

    outs = (norm(weight, bias),) + ((norm(weight1, bias1),) if weight1 is not None else ())
    outs += (x,) if prenorm else ()
    return outs[0] if len(outs) == 1 else outs


def __getattr__(name):
    if name == "RMSNorm":
        import torch

        class RMSNorm(torch.nn.Module):
            """flash-attn's RMSNorm module: weight (hidden_size,) initialised to ones (zeros when
            zero_centered_weight: the stored weight is the scale minus 1), no bias;
            forward(x, residual=None, prenorm=False, residual_in_fp32=False)."""

            def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, zero_centered_weight=False, device=None,
                         dtype=None):
                super().__init__()
                self.eps = eps
                self.drop = torch.nn.Dropout(dropout_p) if dropout_p > 0.0 else None
                self.zero_centered_weight = zero_centered_weight
                self.weight = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
                self.register_parameter("bias", None)
                self.reset_parameters()

            def reset_parameters(self):
                (torch.nn.init.zeros_ if self.zero_centered_weight else torch.nn.init.ones_)(self.weight)

            def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
                p = self.drop.p if self.drop is not None and self.training else 0.0
                return rms_norm_fn(x, self.weight, self.bias, residual=residual, eps=self.eps, dropout_p=p,
                                   prenorm=prenorm, residual_in_fp32=residual_in_fp32,
                                   zero_centered_weight=self.zero_centered_weight)

        globals()["RMSNorm"] = RMSNorm
        return RMSNorm
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
