"""pytest set-up for the Python package: import cflash from python/ of this checkout, with the
library at $CFLASH_LIBRARY, else build/libcflash.so (what `make` builds), else fail saying how to
build it. Shared helpers: seeded inputs, NaN-poisoned outputs, the error rule."""

import importlib
import os
import sys
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if not os.environ.get("CFLASH_LIBRARY") and "CFLASH_TEST_INSTALLED" not in os.environ:
    for cand in ("build/libcflash.so",):
        if os.path.exists(os.path.join(ROOT, cand)):
            os.environ["CFLASH_LIBRARY"] = os.path.join(ROOT, cand)
            break
    else:
        raise pytest.UsageError(
            "libcflash.so not found: build it first (`make`, or cmake -S . -B build && cmake --build build), "
            "or set CFLASH_LIBRARY to its path")
if "CFLASH_TEST_INSTALLED" not in os.environ:  # test the checkout's package, not an installed one
    sys.path.insert(0, os.path.join(ROOT, "python"))

import cflash  # noqa: E402
from cflash import _core, _tensor  # noqa: E402

def require(module, why):
    """The module, for tests that need an optional dependency. In CI (CI=true) a missing one is an
    error, not a skip: CI installs every one (.ci/deps.sh python), so a skip there would hide that
    the tests did not run. Elsewhere the tests skip, saying why."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=why)


UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def atol(dtype, ref, grad=False):
    """The error rule's absolute term: k * u * max(1, max|ref|), k = 8 for fp32 (32 for an
    attention gradient, grad), else 1: the C oracle's attn_atol (tools/oracle/attn_oracle.h says
    why 32). With 8, the fp32 backward at Sq 1, Sk 97, D 3 failed for 4 of 5000 seeds on Zen 3
    (once in CI, stop 54: dk 1.24e-6 > 1.07e-6, naive 8.3e-8): P = exp(s - lse) takes an lse
    rounded to fp32 from scores the forward rounded (at Sq 1 the KV-cache kernels, summing in
    another order than the backward's recomputation), roundings of |s| and |lse| (7.5 there)
    that the naive computation's own softmax cancels."""
    name = str(dtype).replace("torch.", "")
    k = (32.0 if grad else 8.0) if name == "float32" else 1.0
    m = float(np.max(np.abs(ref[np.isfinite(ref)]))) if np.size(ref) else 0.0
    return k * UNIT_ROUNDOFF[name] * max(1.0, m)


def grad_magnitude(refs):
    return max(float(np.max(np.abs(r))) if np.size(r) else 0.0 for r in refs)


def maxerr(got, ref):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    both_inf = np.isinf(got) & np.isinf(ref) & (np.sign(got) == np.sign(ref))
    with np.errstate(invalid="ignore"):
        d = np.where(both_inf, 0.0, np.abs(got - ref))
    return float(np.max(d)) if d.size else 0.0


def check_rule(name, got, ref, naive, dtype, factor=2.0, magnitude=None, grad=False):
    """Asserts no NaN (full coverage after poisoning) and max|got - ref| <= factor * max|naive - ref|
    + atol. grad: an attention gradient (factor 3, DESIGN.md's, and atol(grad=True)). magnitude:
    the scale of atol when it is not that of ref itself; gradients pass the largest of dq, dk, dv
    (a gradient whose exact value is 0, e.g. dq of a row that sees one key, still carries rounding
    of terms as large as the others)."""
    got = np.asarray(got, dtype=np.float64)
    assert not np.isnan(got).any(), "%s: NaN in the result (an element not written?)" % name
    err, nerr = maxerr(got, ref), maxerr(naive, ref)
    scale = np.asarray(ref) if magnitude is None else np.array([magnitude])
    bound = factor * nerr + atol(dtype, scale, grad)
    assert err <= bound, "%s: max error %.3g > bound %.3g (naive %.3g)" % (name, err, bound, nerr)


def grads(fn, inputs, dout):
    """(output, [gradients]) of fn on fresh leaf copies of inputs (torch), for dout."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    out.backward(dout)
    return out.detach(), [x.grad for x in xs]


BASE_SEED = int(os.environ.get("CFLASH_TEST_SEED", str(int.from_bytes(os.urandom(4), "little"))))


def pytest_report_header(config):
    return "cflash %s at %s; inputs seeded with CFLASH_TEST_SEED=%d" % (
        cflash.__version__, cflash.library_path, BASE_SEED)


def pytest_terminal_summary(terminalreporter):
    """The seed again at the end, where -q (which drops the header) still shows it."""
    terminalreporter.write_line("inputs seeded with CFLASH_TEST_SEED=%d (set it to repeat this run)" % BASE_SEED)


@pytest.fixture
def rng(request):
    """Fresh inputs per case and per run; CFLASH_TEST_SEED (printed in the header) repeats a run."""
    return np.random.default_rng([BASE_SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture
def poison(monkeypatch):
    """Every output the package allocates starts as NaN (float) or a sentinel (int), so an element
    the library did not write shows up."""
    real = _tensor.empty

    def poisoned(like, shape, dtype=None):
        x = real(like, shape, dtype)
        if _tensor.is_torch(x):
            if x.is_floating_point():
                x.fill_(float("nan"))
        elif x.dtype.kind == "f":
            x.fill(np.nan)
        return x

    def poisoned_like(like):
        return poisoned(like, like.shape)

    monkeypatch.setattr(_core, "empty", poisoned)
    monkeypatch.setattr(_core, "empty_like", poisoned_like)
    yield
