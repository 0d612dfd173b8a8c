"""Small calls at little cost. A decode-shape attention call spends a few microseconds in the
library, so what Python adds around it must be of that order too:
- arrays reach C as the DLTensor that torch (to_dlpack) or NumPy (__dlpack__) writes into its
  DLPack capsule: no ctypes object is made per tensor (NumPy arrays DLPack cannot carry, such as
  ml_dtypes bfloat16 or read-only ones, get a _tensor.DL);
- each library function has a second handle whose pointer arguments are plain addresses, with its
  prototype derived from _lib's (so it follows _lib when that changes);
- attention params without ALiBi or dropout are made once per distinct value and reused, and
  struct pointer fields are written in place."""

import ctypes
import threading

import numpy as np

from . import _lib
from ._tensor import DL

_void = ctypes.c_void_p

# ---- Handles taking addresses ----

_handles = {}


def handle(name):
    """The library function `name` with every pointer argument typed void* (pass an int address,
    None, or ctypes.byref(struct)); its other argument types and result as in _lib."""
    h = _handles.get(name)
    if h is None:
        proto = _lib.fn(name)  # a RuntimeError when this library lacks it
        h = _lib.lib[name]  # indexing makes a new function object: _lib's keeps its prototype
        h.restype = proto.restype
        h.argtypes = [_void if t is not None and issubclass(t, ctypes._Pointer) else t for t in proto.argtypes]
        _handles[name] = h
    return h


# ---- DLTensors through DLPack capsules ----

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_NAME = b"dltensor"  # an unversioned capsule: its DLManagedTensor starts with the DLTensor
_np = np.ndarray


def _layout_ok():
    """DLManagedTensor begins with its DLTensor, laid out as _lib.DLTensor (DLPack's stable ABI)."""
    T = _lib.DLTensor
    want = [("data", 0), ("device", 8), ("ndim", 16), ("dtype", 20), ("shape", 24), ("strides", 32),
            ("byte_offset", 40)]
    return ctypes.sizeof(T) == 48 and all(getattr(T, n).offset == o for n, o in want)


_CAPSULES = _layout_ok()  # never expected to fail (DLPack's ABI is stable); then all goes through DL


def _capsule_offset():
    """Where a capsule object holds its pointer (CPython: right after the object header), checked
    on a capsule made here; None where that does not hold (then PyCapsule_GetPointer is called,
    0.3 us more per tensor)."""
    try:
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        target = ctypes.c_int64()
        cap = new(ctypes.addressof(target), _NAME, None)
        off = object.__basicsize__
        if _void.from_address(id(cap) + off).value == ctypes.addressof(target) == _capsule_pointer(cap, _NAME):
            return off
    except Exception:
        pass
    return None


_OFFSET = _capsule_offset()
_torch_capsules = [False]  # torch's to_dlpack checked to give b"dltensor" capsules (on first use)


def address(x, name, keep):
    """The address of a DLTensor over x's memory (a torch tensor or NumPy array), valid while what
    is appended to keep lives. What DLPack cannot carry goes through _tensor.DL, which also
    raises the messages for what cannot be passed at all."""
    try:
        if not _CAPSULES:
            raise TypeError
        if type(x) is _np:
            if not x.size:  # NumPy gives an empty array 0 strides: DL writes dense ones
                raise ValueError
            cap = x.__dlpack__()
        elif _torch_capsules[0]:  # the capsule's pointer read in place (its name checked once)
            cap = _to_dlpack(x)
            keep.append(cap)
            return _void.from_address(id(cap) + _OFFSET).value
        else:
            cap = _to_dlpack(x)
    except Exception:  # NumPy bfloat16 or read-only, a non-array, an odd device: DL says
        h = DL(x, name)
        keep.append(h)
        return ctypes.addressof(h.t)
    keep.append(cap)
    return _capsule_pointer(cap, _NAME)


def _to_dlpack(x):
    """torch.utils.dlpack.to_dlpack, looked up on first use (torch is imported by then)."""
    global _to_dlpack
    if not hasattr(x, "data_ptr"):
        raise TypeError("not a torch tensor")
    import torch
    from torch.utils.dlpack import to_dlpack

    # PyCapsule_GetPointer raises unless the name is b"dltensor" (a DLManagedTensor, not the
    # versioned struct): only then may the pointer be read without it.
    try:
        probe = to_dlpack(torch.empty(1))
        _torch_capsules[0] = _OFFSET is not None and _capsule_pointer(probe, _NAME) == _void.from_address(
            id(probe) + _OFFSET).value
    except Exception:
        _torch_capsules[0] = False
    _to_dlpack = to_dlpack
    return to_dlpack(x)


def set_pointer(struct, field, addr):
    """Writes a pointer field of a ctypes struct from an address (or None)."""
    _void.from_buffer(struct, getattr(type(struct), field).offset).value = addr


# ---- Reused params ----

_params = {}


def attn_params(scale, causal, wl, wr, softcap, deterministic=False):
    """A shared cflash_attn_params (no ALiBi, no dropout) with these values; the library only reads
    it, so one object per distinct value serves every thread."""
    key = (scale, causal, wl, wr, softcap, deterministic)
    p = _params.get(key)
    if p is None:
        if len(_params) > 256:
            _params.clear()
        p = _lib.AttnParams()
        _lib.lib.cflash_attn_params_init(ctypes.byref(p))
        p.softmax_scale, p.causal, p.window_left, p.window_right = scale, int(causal), wl, wr
        p.softcap, p.deterministic = softcap, int(deterministic)
        p = _params[key] = p
    return p


class _KVParams:
    """One thread's cflash_kvcache_params, reused call after call. Its pointer fields are written
    in place, and only those that change (a decode step passes one or two of the fifteen)."""

    __slots__ = ("kp", "ref", "_views", "_set")

    def __init__(self):
        self.kp = _lib.KVCacheParams()
        _lib.fn("cflash_kvcache_params_init")(ctypes.byref(self.kp))
        self.ref = ctypes.byref(self.kp)
        self._views = {n: _void.from_buffer(self.kp, getattr(_lib.KVCacheParams, n).offset) for n in _KV_POINTERS}
        self._set = ()

    def pointers(self, given):
        """given: {field: address} of the pointers this call passes; every other one is NULL."""
        views = self._views
        for n in self._set:
            if n not in given:
                views[n].value = None
        for n, x in given.items():
            views[n].value = x
        self._set = tuple(given)


class _ThreadParams(threading.local):
    def __init__(self):
        self.kp = None


_thread = _ThreadParams()
_KV_POINTERS = ("k_new", "v_new", "rotary_cos", "rotary_sin", "cache_seqlens", "cache_batch_idx", "cache_leftpad",
                "block_table", "cu_seqlens_q", "cu_seqlens_k_new", "k_descale", "v_descale", "k_scales", "v_scales")


def kvcache_params():
    """This thread's _KVParams: the caller sets every value field it passes (cache_seqlen,
    rotary_interleaved, num_splits, max_seqlen_q, cache_quant) and the pointers, before each
    call."""
    kp = _thread.kp
    if kp is None:
        kp = _thread.kp = _KVParams()
    return kp


def _kv_defaults():
    """byref of cflash_kvcache_params at its defaults (the whole cache, nothing appended)."""
    f = getattr(_lib.lib, "cflash_kvcache_params_init", None)
    if f is None:
        return None
    kp = _lib.KVCacheParams()
    f(ctypes.byref(kp))
    _kv_defaults.keep = kp
    return ctypes.byref(kp)


KV_DEFAULTS = _kv_defaults()
