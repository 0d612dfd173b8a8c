"""NumPy arrays and PyTorch tensors as DLPack DLTensors, without copies.

A DLTensor here points at the array's own memory, with its shape and strides; nothing is copied
except where flash-attn also copies (a last dimension that is not contiguous). Outputs are allocated
with the inputs' kind (NumPy in, NumPy out; torch in, torch out, on the same device). torch is never
imported here: a tensor is recognised only when the caller has imported torch already."""

import ctypes
import sys

import numpy as np

from . import _lib
from ._lib import DLTensor, DLDevice, DLDataType

# ---- Kinds of array ----


def is_torch(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_array(x, name):
    """x as a NumPy array or a torch tensor. Other DLPack producers (CuPy, JAX, ...) are imported
    without a copy: host memory as a NumPy array, device memory as a torch tensor (torch needed)."""
    if x is None or isinstance(x, np.ndarray) or is_torch(x):
        return x
    if hasattr(x, "__dlpack__"):
        dev = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else _lib.kDLCPU
        try:
            if dev in (_lib.kDLCPU, _lib.kDLCUDAHost):
                return np.from_dlpack(x)
            import torch

            return torch.from_dlpack(x)
        except Exception as e:  # no torch, an unsupported dtype or device, ...
            raise ValueError("%s: cannot read %s through DLPack: %s" % (name, type(x).__name__, e)) from None
    raise ValueError("%s: %s, expected a NumPy array or a torch.Tensor" % (name, type(x).__name__))


def maybe_contiguous(x):
    """x with a contiguous last dimension (copied only if it is not), as flash-attn does."""
    if x is None:
        return None
    if type(x) is np.ndarray:
        if x.ndim > 0 and x.shape[-1] > 1 and x.strides[-1] != x.itemsize:
            return np.ascontiguousarray(x)
        return x
    if x.ndim == 0 or x.stride(-1) == 1 or x.shape[-1] <= 1:
        return x
    return x.contiguous()


# ---- dtypes ----

_NP_CODES = {"f": _lib.kDLFloat, "i": _lib.kDLInt, "u": _lib.kDLUInt}


_NP_CACHE = {}
_TORCH_TABLE = {}


def _np_dltype(dt):
    t = _NP_CACHE.get(dt)
    if t is None:
        t = _NP_CACHE[dt] = _np_dltype_new(dt)
    return DLDataType(t.code, t.bits, t.lanes)


_FLOAT8 = {"float8_e4m3fn": 10, "float8_e5m2": 12}  # DLPack's kDLFloat8_e4m3fn / _e5m2 (DLPack 1.1)


def _np_dltype_new(dt):
    if dt.name == "bfloat16":  # ml_dtypes.bfloat16
        return DLDataType(_lib.kDLBfloat, 16, 1)
    if dt.name in _FLOAT8:  # ml_dtypes' fp8 (quantized KV caches)
        return DLDataType(_FLOAT8[dt.name], 8, 1)
    if dt.kind == "b":
        return DLDataType(_lib.kDLUInt, 8, 1)
    code = _NP_CODES.get(dt.kind)
    if code is None:
        raise ValueError("dtype %s is not supported, expected float32, float16 or bfloat16" % dt)
    return DLDataType(code, dt.itemsize * 8, 1)


def _torch_dltype(dt):
    if not _TORCH_TABLE:
        _TORCH_TABLE.update(_torch_table())
    if dt not in _TORCH_TABLE:
        raise ValueError("dtype %s is not supported, expected float32, float16 or bfloat16" % dt)
    code, bits = _TORCH_TABLE[dt]
    return DLDataType(code, bits, 1)


def _torch_table():
    torch = sys.modules["torch"]
    return {
        torch.float32: (_lib.kDLFloat, 32),
        torch.float16: (_lib.kDLFloat, 16),
        torch.bfloat16: (_lib.kDLBfloat, 16),
        torch.float64: (_lib.kDLFloat, 64),
        torch.int32: (_lib.kDLInt, 32),
        torch.int64: (_lib.kDLInt, 64),
        torch.int16: (_lib.kDLInt, 16),
        torch.int8: (_lib.kDLInt, 8),
        torch.uint8: (_lib.kDLUInt, 8),
        torch.bool: (_lib.kDLUInt, 8),
        torch.float8_e4m3fn: (_FLOAT8["float8_e4m3fn"], 8),
        torch.float8_e5m2: (_FLOAT8["float8_e5m2"], 8),
    }


# ---- DLTensor views ----


class DL:
    """A DLTensor over an array's memory; keeps the array and the shape/stride buffers alive."""

    __slots__ = ("arr", "t", "_shape", "_strides")

    def __init__(self, arr, name="tensor"):
        self.arr = arr
        if is_torch(arr):
            shape, strides = tuple(arr.shape), tuple(arr.stride())
            dev = arr.device
            if dev.type == "cpu":
                device = DLDevice(_lib.kDLCPU, 0)
            elif dev.type == "cuda":
                device = DLDevice(_lib.kDLCUDA, dev.index if dev.index is not None else 0)
            else:
                raise ValueError("%s: on %s, expected a cpu or cuda tensor" % (name, dev))
            dtype = _torch_dltype(arr.dtype)
            data = arr.data_ptr()
        else:
            shape = arr.shape
            item = arr.itemsize
            if any(s % item for s in arr.strides):
                arr = self.arr = np.ascontiguousarray(arr)
            strides = tuple(s // item for s in arr.strides)
            device = DLDevice(_lib.kDLCPU, 0)
            dtype = _np_dltype(arr.dtype)
            data = arr.ctypes.data
        n = len(shape)
        if 0 in shape:  # no element: strides are free (NumPy gives 0s); use the dense ones
            strides = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(n))
        self._shape = (ctypes.c_int64 * max(n, 1))(*shape)
        self._strides = (ctypes.c_int64 * max(n, 1))(*strides)
        # An empty tensor may have a NULL data pointer; the library rejects NULL, so point it
        # at the shape buffer (never read: no element exists).
        if not data:
            data = ctypes.addressof(self._shape)
        self.t = DLTensor(data, device, n, dtype, self._shape, self._strides, 0)

    @property
    def ptr(self):
        return ctypes.byref(self.t)


def dl(x, name="tensor"):
    """A DL holder of x, or None when x is None (passed as NULL). Keep the holder referenced until
    the call returns: the DLTensor and its shape/stride buffers live in it."""
    return None if x is None else DL(x, name)


def ptr(h):
    return None if h is None else h.ptr


def field(h):
    """A DLTensor* for a struct field (ctypes wants a real pointer there, not byref)."""
    return None if h is None else ctypes.pointer(h.t)


# ---- Allocation like an input ----


_NP_NAMED = {"f32": np.float32, "i32": np.int32, "u8": np.uint8}
_TORCH_NAMED = {}


def empty_like(x):
    """An uninitialised array of x's kind, shape, dtype and device (the cheapest allocation)."""
    return np.empty_like(x) if type(x) is np.ndarray else sys.modules["torch"].empty_like(x)


def empty(like, shape, dtype=None):
    """An uninitialised array of the kind and device of `like`; dtype None = like's, "f32" = float32,
    "i32" = int32, "u8" = uint8, or a dtype of like's kind."""
    if type(like) is np.ndarray:
        return np.empty(shape, dtype=like.dtype if dtype is None else _NP_NAMED.get(dtype, dtype))
    if not _TORCH_NAMED:
        torch = sys.modules["torch"]
        _TORCH_NAMED.update({"f32": torch.float32, "i32": torch.int32, "u8": torch.uint8, "empty": torch.empty})
    dt = like.dtype if dtype is None else _TORCH_NAMED.get(dtype, dtype)
    if like.is_cpu:  # sizes as arguments parse faster than a tuple (1.0 us against 1.5 us)
        return _TORCH_NAMED["empty"](*shape, dtype=dt)
    return like.new_empty(shape, dtype=dt)


def host_int32(x, name):
    """An index tensor (cu_seqlens, ...) as a contiguous int32 NumPy array in host memory."""
    if x is None:
        return None
    if is_torch(x):
        if x.dtype != sys.modules["torch"].int32:
            raise ValueError("%s: dtype %s, expected torch.int32" % (name, x.dtype))
        if x.is_cpu and x.is_contiguous():
            return x  # as it is (a decode step passes cache_seqlens every call)
        return np.ascontiguousarray(x.detach().cpu().numpy())
    x = np.asarray(x)
    if x.dtype != np.int32:
        raise ValueError("%s: dtype %s, expected int32" % (name, x.dtype))
    return np.ascontiguousarray(x)


def cuda_stream_of(x):
    """torch's current CUDA stream for x's device (as an int), or None for CPU arrays."""
    if is_torch(x) and x.device.type == "cuda":
        torch = sys.modules["torch"]
        return torch.cuda.current_stream(x.device).cuda_stream
    return None


def device_guard(x):
    """A context manager making x's CUDA device current (a no-op for CPU arrays)."""
    if is_torch(x) and x.device.type == "cuda":
        return sys.modules["torch"].cuda.device(x.device)
    return _NullGuard()


class _NullGuard:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
