"""Loading libcflash and calling it through ctypes.

The library is found, in order, at $CFLASH_LIBRARY (a path to libcflash.so, for in-tree testing) or
next to this file (the copy a wheel bundles). Nothing else is searched, so an unrelated libcflash on
the system is never picked up by accident. Every call returns a status; a failing one becomes a
ValueError (invalid argument) or a RuntimeError carrying cflash_last_error()."""

import ctypes
import glob
import os
import sys
import threading

# ---- DLPack structures (dlpack.h, DLPACK_VERSION 0.6: the ABI cflash.h is built against) ----

kDLCPU, kDLCUDA, kDLCUDAHost = 1, 2, 3
kDLInt, kDLUInt, kDLFloat, kDLBfloat = 0, 1, 2, 4


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class AttnParams(ctypes.Structure):
    """cflash_attn_params (include/cflash.h); keep the field order in step with the header."""

    _fields_ = [
        ("softmax_scale", ctypes.c_float),
        ("causal", ctypes.c_int),
        ("window_left", ctypes.c_int64),
        ("window_right", ctypes.c_int64),
        ("softcap", ctypes.c_float),
        ("alibi_slopes", ctypes.POINTER(DLTensor)),
        ("dropout_p", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("deterministic", ctypes.c_int),
        ("q_offset", ctypes.c_int64),
        ("k_offset", ctypes.c_int64),
    ]


class RotaryParams(ctypes.Structure):
    _fields_ = [
        ("interleaved", ctypes.c_int),
        ("conjugate", ctypes.c_int),
        ("seqlen_offset", ctypes.c_int64),
        ("seqlen_offsets", ctypes.POINTER(DLTensor)),
        ("cu_seqlens", ctypes.POINTER(DLTensor)),
        ("max_seqlen", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
    ]


class RotaryTableParams(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_double),
        ("interpolation_factor", ctypes.c_double),
        ("position_start", ctypes.c_int64),
        ("positions", ctypes.POINTER(DLTensor)),
    ]


NORM_RMS, NORM_LAYER = 0, 1


class NormParams(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("eps", ctypes.c_float),
        ("dropout_p", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
    ]


class KVCacheParams(ctypes.Structure):
    _fields_ = [
        ("k_new", ctypes.POINTER(DLTensor)),
        ("v_new", ctypes.POINTER(DLTensor)),
        ("rotary_cos", ctypes.POINTER(DLTensor)),
        ("rotary_sin", ctypes.POINTER(DLTensor)),
        ("rotary_interleaved", ctypes.c_int),
        ("cache_seqlens", ctypes.POINTER(DLTensor)),
        ("cache_seqlen", ctypes.c_int64),
        ("cache_batch_idx", ctypes.POINTER(DLTensor)),
        ("cache_leftpad", ctypes.POINTER(DLTensor)),
        ("block_table", ctypes.POINTER(DLTensor)),
        ("num_splits", ctypes.c_int),
    ]


# ---- Status codes and ops (include/cflash.h) ----

OK = 0
ERR_INVALID_ARGUMENT = -1

OPS = {
    "attn_fwd": 0,
    "attn_bwd": 1,
    "attn_varlen_fwd": 2,
    "attn_varlen_bwd": 3,
    "kvcache_fwd": 4,
    "attn_merge": 5,
    "rotary": 6,
    "norm_fwd": 7,
    "norm_bwd": 8,
}

# ---- Finding and loading the library ----


def _candidates():
    env = os.environ.get("CFLASH_LIBRARY")
    if env:
        return [env], True
    # The package's own folders: next to this file, and (editable installs, `pip install -e .`) the
    # site-packages folder the build installed into, which the package __path__ also lists.
    pkg = sys.modules.get(__package__)
    dirs = [os.path.dirname(os.path.abspath(__file__))] + list(getattr(pkg, "__path__", []) or [])
    found = []
    for d in dirs:
        found += sorted(glob.glob(os.path.join(d, "libcflash.so*")))
    return found, False


def _load():
    paths, from_env = _candidates()
    if from_env and not os.path.exists(paths[0]):
        raise ImportError(
            "cflash: CFLASH_LIBRARY=%s does not exist; expected the path of libcflash.so "
            "(for example build/libcflash.so), or unset it to use the bundled library" % paths[0]
        )
    if not paths:
        raise ImportError(
            "cflash: libcflash.so not found in the package (%s); install it with `pip install .` "
            "(which bundles it) or set CFLASH_LIBRARY to a built libcflash.so" % os.path.dirname(__file__)
        )
    try:
        return ctypes.CDLL(paths[0]), paths[0]
    except OSError as e:
        raise ImportError("cflash: cannot load %s: %s" % (paths[0], e)) from None


lib, library_path = _load()

_P = ctypes.POINTER
_T = _P(DLTensor)
_ctx_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_status = ctypes.c_int


def _proto(name, restype, *argtypes):
    f = getattr(lib, name, None)
    if f is None:
        return None
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_proto("cflash_status_string", ctypes.c_char_p, ctypes.c_int)
_proto("cflash_last_error", ctypes.c_char_p)
_proto("cflash_version", ctypes.c_char_p)
_proto("cflash_context_create", _status, _P(ctypes.c_void_p))
_proto("cflash_context_free", None, _ctx_p)
_proto("cflash_context_set_threads", _status, _ctx_p, ctypes.c_int)
_proto("cflash_context_set_backend", _status, _ctx_p, ctypes.c_char_p)
_proto("cflash_context_set_cuda_stream", _status, _ctx_p, ctypes.c_void_p)
_proto("cflash_attn_params_init", None, _P(AttnParams))
_proto("cflash_attn_fwd", _status, _ctx_p, _P(AttnParams), _T, _T, _T, _T, _T)
_proto("cflash_attn_bwd", _status, _ctx_p, _P(AttnParams), _T, _T, _T, _T, _T, _T, _T, _T, _T)
_proto("cflash_attn_varlen_fwd", _status, _ctx_p, _P(AttnParams), _T, _T, _T, _T, _T, _i64, _i64, _T, _T)
_proto("cflash_attn_varlen_bwd", _status, _ctx_p, _P(AttnParams), _T, _T, _T, _T, _T, _T, _T, _T, _i64, _i64, _T, _T, _T)
_proto("cflash_attn_dropout_mask", _status, _P(AttnParams), _T)
_proto("cflash_op_name", ctypes.c_char_p, ctypes.c_int)
# Ops (rotary, norm, KV cache, merge). Looked up softly: a library without them still loads, and
# the functions that need them say so when called.
_proto("cflash_rotary_params_init", None, _P(RotaryParams))
_proto("cflash_rotary_apply", _status, _ctx_p, _P(RotaryParams), _T, _T, _T, _T)
_proto("cflash_rotary_table_params_init", None, _P(RotaryTableParams))
_proto("cflash_rotary_tables", _status, _P(RotaryTableParams), _T, _T)
_proto("cflash_norm_params_init", None, _P(NormParams))
_proto("cflash_norm_fwd", _status, _ctx_p, _P(NormParams), _T, _T, _T, _T, _T, _T, _T, _T)
_proto("cflash_norm_bwd", _status, _ctx_p, _P(NormParams), _T, _T, _T, _T, _T, _T, _T, _T, _T, _T, _T)
_proto("cflash_kvcache_params_init", None, _P(KVCacheParams))
_proto("cflash_attn_kvcache_fwd", _status, _ctx_p, _P(AttnParams), _P(KVCacheParams), _T, _T, _T, _T, _T)
_proto("cflash_attn_merge", _status, _ctx_p, _T, _T, _T, _T)


def fn(name):
    """The library function `name`, or a RuntimeError saying this build lacks it."""
    f = getattr(lib, name, None)
    if f is None:
        raise RuntimeError("cflash: %s is missing from %s (a library older than this package?)" % (name, library_path))
    return f

# cflash_explain is variadic: its argument types are given per call.
lib.cflash_explain.restype = _status


def last_error():
    return lib.cflash_last_error().decode("utf-8", "replace")


class InvalidArgumentError(ValueError, RuntimeError):
    """CFLASH_ERR_INVALID_ARGUMENT: a ValueError, and a RuntimeError too because flash-attn raises
    RuntimeError (TORCH_CHECK) for bad arguments, so code written for either catches it."""


def check(status, what=""):
    """Turns a failing status into InvalidArgumentError (invalid argument) or RuntimeError."""
    if status == OK:
        return
    name = lib.cflash_status_string(status).decode()
    msg = last_error()
    text = "%s: %s" % (what, msg) if what else msg
    if status == ERR_INVALID_ARGUMENT:
        raise InvalidArgumentError(text)
    raise RuntimeError("%s (%s)" % (text, name))


def version():
    return lib.cflash_version().decode()


# ---- Per-thread contexts (a context may be used by one thread at a time) ----

_settings = {"threads": 0, "backend": None}
_settings_gen = [0]
_local = threading.local()


class _Context:
    def __init__(self):
        self.handle = ctypes.c_void_p()
        check(lib.cflash_context_create(ctypes.byref(self.handle)), "cflash_context_create")
        self.gen = -1
        self.stream = None

    def __del__(self):
        if lib is not None and self.handle:
            lib.cflash_context_free(self.handle)
            self.handle = ctypes.c_void_p()


def context(stream=None):
    """This thread's context, with the global settings and the given CUDA stream applied."""
    c = getattr(_local, "ctx", None)
    if c is None:
        c = _local.ctx = _Context()
    if c.gen != _settings_gen[0]:
        check(lib.cflash_context_set_threads(c.handle, int(_settings["threads"])), "set_num_threads")
        b = _settings["backend"]
        check(lib.cflash_context_set_backend(c.handle, b.encode() if b else None), "set_backend")
        c.gen = _settings_gen[0]
    if stream != c.stream:
        check(lib.cflash_context_set_cuda_stream(c.handle, ctypes.c_void_p(stream or None)), "set_cuda_stream")
        c.stream = stream
    return c.handle


def set_num_threads(n):
    """Threads for CPU kernels: 0 = all cores (or OMP_NUM_THREADS)."""
    n = int(n)
    if n < 0:
        raise ValueError("threads: %d, expected >= 0 (0 = all cores)" % n)
    _settings["threads"] = n
    _settings_gen[0] += 1


def set_backend(name):
    """Force one backend ("cpu-ref", "cuda-simt", ...) for later calls; None or "auto" = choose."""
    if name in (None, "", "auto"):
        name = None
    else:
        # Validate now, so the error names the call that set it.
        probe = ctypes.c_void_p()
        check(lib.cflash_context_create(ctypes.byref(probe)))
        try:
            check(lib.cflash_context_set_backend(probe, name.encode()), "set_backend")
        finally:
            lib.cflash_context_free(probe)
    _settings["backend"] = name
    _settings_gen[0] += 1


def get_backend():
    return _settings["backend"]


# ---- Library directories of NVIDIA's pip wheels (nvidia-cuda-nvrtc-cu12, ...) ----


def nvidia_wheel_dirs():
    dirs = []
    for p in sys.path:
        if not p or not os.path.isdir(os.path.join(p, "nvidia")):
            continue
        for d in sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib"))) + sorted(
            glob.glob(os.path.join(p, "nvidia", "cu*", "lib"))
        ):
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


def _register_library_dirs():
    f = getattr(lib, "cflash_add_library_dir", None)
    if f is None:
        return
    f.restype = _status
    f.argtypes = [ctypes.c_char_p]
    for d in nvidia_wheel_dirs():
        f(d.encode())  # a failure here only means that directory is not used


_register_library_dirs()
