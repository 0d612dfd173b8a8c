"""cflash.report() (what this machine can run, per op and backend, and why not) and
cflash.explain(fn, *args) (which backend would serve one call, and why the others would not)."""

import contextlib
import ctypes
import json as _json

import numpy as np

from . import _core, _lib
from ._tensor import is_torch


@contextlib.contextmanager
def _collect():
    sink = []
    _core._explain.sink = sink
    try:
        yield sink
    finally:
        _core._explain.sink = None


def explain(fn, *args, **kwargs):
    """Runs fn(*args, **kwargs) (a cflash function, or its name) in explain mode: every library
    call it would make is validated and dispatched on the same code path as for real, but nothing
    is computed or written. Returns the text, per library op, of each backend considered
    ("NAME: OKAY", with a note in parentheses where it would serve the call through another
    backend's code, or "NAME: NO: reason") and the one chosen ("-> NAME"); attention calls also
    explain their backward."""
    if isinstance(fn, str):
        import cflash
        import cflash.layers.rotary
        import cflash.ops

        for mod in (cflash, cflash.layers.rotary, cflash.ops):
            if hasattr(mod, fn):
                fn = getattr(mod, fn)
                break
        else:
            raise ValueError("fn: unknown function %r, expected a cflash function or its name" % fn)
    grad = contextlib.nullcontext()
    if any(is_torch(a) for a in list(args) + list(kwargs.values())):
        import torch

        grad = torch.no_grad()
    with grad, _collect() as sink:
        fn(*args, **kwargs)
    if not sink:
        return "(no library call)"
    lines = []
    for op, status, text in sink:
        lines.append("%s:%s" % (op, "" if status == _lib.OK else " " + _lib.lib.cflash_status_string(status).decode()))
        lines += ["  " + ln for ln in text.splitlines()]
    return "\n".join(lines)


def _library_report(json):
    f = getattr(_lib.lib, "cflash_report", None)
    if f is None:
        return None
    # snprintf-like, never fails; its prototype comes from _abi.py (_lib binds it)
    n = f(None, 0, 1 if json else 0)
    buf = ctypes.create_string_buffer(n + 1)
    f(buf, n + 1, 1 if json else 0)
    return buf.value.decode("utf-8", "replace")


def _explain_table():
    """op -> explain text for a small float32 CPU problem of each op (used when the library has no
    cflash_report of its own)."""
    from . import flash_attn_interface as fa

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 2, 8), dtype=np.float32)
    rows = {"attention (fwd + bwd)": lambda: explain(fa.flash_attn_func, q, q, q)}
    try:
        from .layers.rotary import apply_rotary_emb
        from .ops import rms_norm_fn

        cs = np.ones((4, 4), np.float32)
        rows["rotary"] = lambda: explain(apply_rotary_emb, q, cs, cs)
        rows["rms_norm"] = lambda: explain(rms_norm_fn, q, np.ones(8, np.float32), None)
    except ImportError:
        pass
    out = {}
    for k, f in rows.items():
        try:
            out[k] = f()
        except Exception as e:  # an op this library build lacks
            out[k] = "unavailable: %s" % e
    return out


def report(json=False):
    """The library's report (CPU features, CUDA driver / NVRTC found or not and why, op x backend
    table). With json=True, a dict."""
    text = _library_report(json)
    if text is None:
        table = _explain_table()
        info = {"version": _lib.version(), "library": _lib.library_path, "cpu_explain": table,
                "nvidia_wheel_dirs": _lib.nvidia_wheel_dirs()}
        if json:
            return info
        lines = ["cflash %s (%s)" % (info["version"], info["library"])]
        for k, v in table.items():
            lines.append("%s:" % k)
            lines += ["  " + ln for ln in v.splitlines()]
        return "\n".join(lines)
    return _json.loads(text) if json else text
