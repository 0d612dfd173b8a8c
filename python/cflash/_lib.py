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

# ---- Structs, values and prototypes: _abi.py, made from include/cflash.h by tools/gen_pybind.py ----

from . import _abi
from ._abi import DLDataType, DLDevice, DLTensor  # noqa: F401 (the package's names for them)
from ._abi import kDLBfloat, kDLCPU, kDLCUDA, kDLCUDAHost, kDLFloat, kDLInt, kDLUInt  # noqa: F401

AttnParams = _abi.cflash_attn_params
RotaryParams = _abi.cflash_rotary_params
RotaryTableParams = _abi.cflash_rotary_table_params
NormParams = _abi.cflash_norm_params
KVCacheParams = _abi.cflash_kvcache_params
NORM_RMS, NORM_LAYER = _abi.CFLASH_NORM_RMS, _abi.CFLASH_NORM_LAYER
OK, ERR_INVALID_ARGUMENT = _abi.CFLASH_OK, _abi.CFLASH_ERR_INVALID_ARGUMENT
# op name ("attn_fwd", ...) -> cflash_op value
OPS = {k[len("CFLASH_OP_"):].lower(): v for k, v in _abi.ENUMS["cflash_op"].items() if k != "CFLASH_OP_COUNT"}

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


def _bind():
    """Gives every library function its prototype from _abi.FUNCTIONS. Looked up softly: a library
    without some of them (older than this package) still loads, and fn() says so when one is used."""
    for name, (restype, argtypes) in _abi.FUNCTIONS.items():
        f = getattr(lib, name, None)
        if f is not None:
            f.restype = restype
            if argtypes is not None:
                f.argtypes = argtypes


_bind()


def fn(name):
    """The library function `name`, or a RuntimeError saying this build lacks it."""
    f = getattr(lib, name, None)
    if f is None:
        raise RuntimeError("cflash: %s is missing from %s (a library older than this package?)" % (name, library_path))
    return f


def last_error():
    return lib.cflash_last_error().decode("utf-8", "replace")


def check(status, what=""):
    """Turns a failing status into ValueError (invalid argument) or RuntimeError."""
    if status == OK:
        return
    name = lib.cflash_status_string(status).decode()
    msg = last_error()
    text = "%s: %s" % (what, msg) if what else msg
    if status == ERR_INVALID_ARGUMENT:
        raise ValueError(text)
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
    for d in nvidia_wheel_dirs():
        f(d.encode())  # a failure here only means that directory is not used


_register_library_dirs()
