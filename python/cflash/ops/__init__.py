"""RMSNorm / LayerNorm with a fused residual add and dropout, with flash-attn's API
(flash_attn.ops.triton.layer_norm): layer_norm_fn, rms_norm_fn and the RMSNorm module, on
libcflash. NumPy arrays or torch tensors; with torch, differentiable. RMSNorm needs torch."""

import numpy as np

from .. import _core
from .._tensor import is_torch, to_array

__all__ = ["layer_norm_fn", "rms_norm_fn", "RMSNorm"]


def _unsupported(**kw):
    for name, val in kw.items():
        if val is not None and val is not False:
            raise ValueError("%s: not supported by cflash (the parallel two-input norm, row scaling and "
                             "returned dropout masks are not implemented); expected None" % name)


def layer_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                  rowscale=None, prenorm=False, residual_in_fp32=False, is_rms_norm=False,
                  return_dropout_mask=False, out=None, residual_out=None):
    """y = norm(dropout(x) + residual) * weight + bias over the last dim (LayerNorm, or RMSNorm when
    is_rms_norm). Returns y, or (y, residual_out) when prenorm, residual_out being the summed input
    (float32 when residual_in_fp32 and no residual is given, else the residual's dtype)."""
    _unsupported(x1=x1, weight1=weight1, bias1=bias1, rowscale=rowscale, return_dropout_mask=return_dropout_mask)
    x, weight, bias, residual = [to_array(t, n) for t, n in ((x, "x"), (weight, "weight"), (bias, "bias"),
                                                              (residual, "residual"))]
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError("residual: shape %s, expected the shape of x %s" % (tuple(residual.shape), tuple(x.shape)))
    tm = is_torch(x)
    if tm:
        weight, bias, residual = _as_torch((weight, bias, residual), x)
        y, h, _, _, _ = _torch().torch.ops.cflash.norm_fwd(x, weight, bias, residual, float(eps), float(dropout_p),
                                                          -1 if dropout_p else 0, bool(is_rms_norm),
                                                          bool(residual_in_fp32))
        h = h.reshape(x.shape) if h.dim() == 2 else x  # (0,) when it would equal x
    else:
        seed = int(np.random.randint(0, 2**62, dtype=np.int64)) if dropout_p else 0
        y, h, _, _ = _core.norm_fwd(x, weight, bias, residual, eps, dropout_p, seed, is_rms_norm, residual_in_fp32)
        h = h.reshape(x.shape) if h is not None else x
    if out is not None:
        out[...] = y
        y = out
    if residual_out is not None and prenorm:
        residual_out[...] = h
        h = residual_out
    return (y, h) if prenorm else y


def rms_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                rowscale=None, prenorm=False, residual_in_fp32=False, return_dropout_mask=False, out=None,
                residual_out=None):
    """RMSNorm: layer_norm_fn with is_rms_norm=True."""
    return layer_norm_fn(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                         residual_in_fp32, True, return_dropout_mask, out, residual_out)


def _torch():
    from .. import _torch as t

    return t


def _as_torch(xs, like):
    torch = _torch().torch
    return [x if x is None or is_torch(x) else torch.as_tensor(x, device=like.device) for x in xs]


def __getattr__(name):
    if name == "RMSNorm":
        import torch

        class RMSNorm(torch.nn.Module):
            """flash-attn's RMSNorm module: weight (hidden_size,) initialised to ones, no bias;
            forward(x, residual=None, prenorm=False, residual_in_fp32=False)."""

            def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, device=None, dtype=None):
                super().__init__()
                self.eps = eps
                self.drop = torch.nn.Dropout(dropout_p) if dropout_p > 0.0 else None
                self.weight = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
                self.register_parameter("bias", None)
                self.reset_parameters()

            def reset_parameters(self):
                torch.nn.init.ones_(self.weight)

            def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
                p = self.drop.p if self.drop is not None and self.training else 0.0
                return rms_norm_fn(x, self.weight, self.bias, residual=residual, eps=self.eps, dropout_p=p,
                                   prenorm=prenorm, residual_in_fp32=residual_in_fp32)

        globals()["RMSNorm"] = RMSNorm
        return RMSNorm
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
