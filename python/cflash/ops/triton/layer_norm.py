"""flash_attn.ops.triton.layer_norm's names, served by cflash.ops (libcflash kernels)."""

from .. import layer_norm_fn, layer_norm_linear_fn, layer_norm_ref, rms_norm_fn, rms_norm_ref  # noqa: F401


def __getattr__(name):
    if name == "RMSNorm":
        from .. import RMSNorm

        return RMSNorm
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
