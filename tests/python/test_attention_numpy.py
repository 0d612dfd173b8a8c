"""Attention through the Python package on NumPy arrays, against the NumPy fp64 reference
(cflash.reference) under DESIGN.md's error rule, over a sampled grid: odd sizes (Sq != Sk, 1, 97,
1025), head dims 1..256, every mask feature alone and combined, GQA/MQA, strided views, fully masked
rows, varlen, packed layouts, dropout, and the backward. Runs without torch."""

import numpy as np
import pytest

import cflash
from cflash import _core, reference as R
from conftest import check_rule, grad_magnitude, require

# (B, Sq, Sk, H, Hk, D, Dv, dtype, features); features: c causal, w window, s softcap, a alibi [H],
# A alibi [B, H], p dropout, t strided views, n non-contiguous last dim (copied), m fully masked rows
GRID = [
    (2, 5, 7, 4, 2, 8, 8, "float32", ""),
    (1, 7, 5, 2, 2, 16, 16, "float32", "c"),
    (1, 1, 1, 1, 1, 1, 1, "float32", ""),
    (2, 1, 97, 3, 1, 3, 5, "float32", "c"),
    (1, 97, 1, 2, 1, 33, 7, "float32", "w"),
    (1, 97, 97, 2, 2, 64, 64, "float16", "c"),
    (1, 13, 29, 6, 2, 128, 128, "float32", "s"),
    (1, 9, 11, 2, 1, 256, 256, "float32", "a"),
    (2, 17, 17, 4, 4, 24, 16, "float32", "A"),
    (2, 12, 20, 4, 2, 32, 32, "float32", "p"),
    (2, 12, 20, 4, 2, 32, 32, "float32", "t"),
    (2, 10, 10, 2, 2, 16, 16, "float32", "n"),
    (1, 20, 6, 2, 1, 16, 16, "float32", "cm"),
    (2, 47, 33, 6, 3, 40, 24, "float32", "cwsaptm"),
    (1, 31, 31, 4, 1, 64, 64, "float16", "cwsA"),
    (2, 8, 19, 4, 2, 5, 9, "float16", "wsap"),
    (1, 1025, 1025, 1, 1, 16, 16, "float32", "c"),
]


def _ids(g):
    return "B%d-Sq%d-Sk%d-H%d-Hk%d-D%d-Dv%d-%s-%s" % g


def make_case(rng, B, Sq, Sk, H, Hk, D, Dv, dtype, feat):
    def rnd(*shape):
        x = rng.standard_normal(shape).astype(dtype)
        if "t" in feat:  # a strided view: (B, H, S, D) storage seen as (B, S, H, D), padded head dim
            big = rng.standard_normal((shape[0], shape[2], shape[1], shape[3] + 3)).astype(dtype)
            big[..., : shape[3]] = x.transpose(0, 2, 1, 3)
            x = big[..., : shape[3]].transpose(0, 2, 1, 3)
        if "n" in feat:  # last dim not contiguous: the package copies, as flash-attn does
            big = np.repeat(x, 2, axis=-1)
            x = big[..., ::2]
        return x

    q, k, v = rnd(B, Sq, H, D), rnd(B, Sk, Hk, D), rnd(B, Sk, Hk, Dv)
    kw = dict(causal="c" in feat, window=(-1, -1), softcap=0.0, alibi=None, dropout_p=0.0, seed=0)
    if "w" in feat:
        kw["window"] = (int(rng.integers(0, 6)), int(rng.integers(0, 4)))
    if "m" in feat and not kw["causal"]:
        kw["window"] = (0, 0)
    if "s" in feat:
        kw["softcap"] = 2.5
    if "a" in feat:
        kw["alibi"] = rng.uniform(0.05, 0.8, H).astype(np.float32)
    if "A" in feat:
        kw["alibi"] = rng.uniform(0.05, 0.8, (B, H)).astype(np.float32)
    if "p" in feat:
        kw["dropout_p"], kw["seed"] = 0.17, int(rng.integers(0, 2**62))
    return q, k, v, kw


def ref_kwargs(kw, B, H, Sq, Sk):
    mask = None
    if kw["dropout_p"] > 0:
        mask = _core.dropout_mask(B, H, Sq, Sk, kw["dropout_p"], kw["seed"])
    return dict(causal=kw["causal"], window_size=kw["window"], softcap=kw["softcap"], alibi_slopes=kw["alibi"],
                dropout_p=kw["dropout_p"], dropout_mask=mask)


@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_forward_and_backward(case, rng, poison):
    B, Sq, Sk, H, Hk, D, Dv, dtype, feat = case
    q, k, v, kw = make_case(rng, *case)
    wl, wr = kw["window"]
    out, lse = _core.attn_fwd(q, k, v, kw["dropout_p"], None, kw["causal"], wl, wr, kw["softcap"], kw["alibi"],
                              kw["seed"])
    assert out.dtype == np.dtype(dtype) and out.shape == (B, Sq, H, Dv) and lse.shape == (B, H, Sq)
    rk = ref_kwargs(kw, B, H, Sq, Sk)
    ro, rl, _ = R.attention(q, k, v, **rk)
    no, nl, _ = R.attention(q, k, v, dtype=dtype, **rk)
    check_rule("out", out, ro, no, dtype)
    check_rule("lse", lse, rl, nl, "float32")
    if "m" in feat:  # rows that see no key: out 0, lse -inf
        dead = ~R.visible(Sq, Sk, kw["causal"], kw["window"]).any(axis=1)
        assert dead.any()
        assert np.all(out[:, dead] == 0) and np.all(np.isneginf(lse[:, :, dead]))
    if Sq * Sk > 100000:
        return  # the backward of the 1025 case would take the fp64 reference too long here
    dout = rng.standard_normal(out.shape).astype(dtype)
    dq, dk, dv = _core.attn_bwd(dout, q, k, v, out, lse, kw["dropout_p"], None, kw["causal"], wl, wr,
                                kw["softcap"], kw["alibi"], False, kw["seed"])
    rg = R.attention_bwd(dout, q, k, v, **rk)
    ng = R.attention_bwd(dout, q, k, v, dtype=dtype, **rk)
    for name, g, r, n in zip(("dq", "dk", "dv"), (dq, dk, dv), rg, ng):
        assert g.shape == r.shape and g.dtype == np.dtype(dtype)
        check_rule(name, g, r, n, dtype, factor=3.0, magnitude=grad_magnitude(rg), grad=True)


def test_public_function_matches_core(rng):
    q, k, v = (rng.standard_normal((2, 9, 4, 16)).astype(np.float32) for _ in range(3))
    out = cflash.flash_attn_func(q, k, v, causal=True, window_size=(3, 0), softcap=4.0)
    ro, _, _ = R.attention(q, k, v, causal=True, window_size=(3, 0), softcap=4.0)
    no, _, _ = R.attention(q, k, v, causal=True, window_size=(3, 0), softcap=4.0, dtype="float32")
    check_rule("out", out, ro, no, "float32")
    scale = 0.3
    out = cflash.flash_attn_func(q, k, v, softmax_scale=scale)
    ro, _, _ = R.attention(q, k, v, softmax_scale=scale)
    check_rule("out", out, ro, R.attention(q, k, v, softmax_scale=scale, dtype="float32")[0], "float32")


@pytest.mark.parametrize("B, Sq, Sk, H, Hk, causal, window, softcap, alibi", [
    (2, 5, 7, 4, 2, False, (-1, -1), 0.0, None),
    (1, 7, 5, 2, 1, True, (-1, -1), 0.0, "H"),
    (2, 9, 4, 2, 2, False, (2, 1), 3.0, "BH"),
    (1, 20, 6, 2, 1, True, (1, -1), 0.0, None),  # rows that see no key
    (1, 3, 0, 1, 1, False, (-1, -1), 0.0, None),
])
def test_package_scores_against_the_reference(rng, B, Sq, Sk, H, Hk, causal, window, softcap, alibi):
    # S_dmask (_sdmask.py) is built on the package's own _scores.py, never on the test oracle: the
    # two agree (S_dmask's flash-attn encoding itself: test_flash_attn_compat.py)
    from cflash import _scores

    q = rng.standard_normal((B, Sq, H, 16)).astype(np.float32)
    k, v = (rng.standard_normal((B, Sk, Hk, 16)).astype(np.float32) for _ in range(2))
    slopes = {None: None, "H": rng.uniform(0.1, 1, H), "BH": rng.uniform(0.1, 1, (B, H))}[alibi]
    slopes = None if slopes is None else slopes.astype(np.float32)
    probs = _scores.probabilities(q, k, None, causal, window, softcap, slopes)
    _, _, rp = R.attention(q, k, v, causal=causal, window_size=window, softcap=softcap, alibi_slopes=slopes)
    assert probs.shape == (B, H, Sq, Sk) and np.abs(probs - rp).max(initial=0) < 1e-6


def test_package_code_does_not_import_the_test_reference():
    import subprocess
    import sys
    import os

    code = ("import sys; sys.path.insert(0, %r); import numpy as np, cflash; q = np.ones((1, 3, 1, 4), np.float32); "
            "cflash.flash_attn_func(q, q, q, dropout_p=0.5, return_attn_probs=True); "
            "cflash.explain(cflash.flash_attn_func, q, q, q); cflash.report(); "
            "assert 'cflash.reference' not in sys.modules, 'cflash.reference was imported'"
            % os.path.dirname(os.path.dirname(cflash.__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_return_attn_probs_and_dropout_repeatable(rng):
    q, k, v = (rng.standard_normal((1, 6, 2, 8)).astype(np.float32) for _ in range(3))
    out, lse, probs = cflash.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    ro, rl, rp = R.attention(q, k, v, causal=True)
    assert probs.shape == (0,), "as flash-attn: S_dmask only with dropout"
    assert np.allclose(lse, rl, atol=1e-5)
    np.random.seed(3)
    o1, _, p1 = cflash.flash_attn_func(q, k, v, dropout_p=0.5, return_attn_probs=True)
    assert p1.shape == (1, 2, 128, 128)  # rounded up to 128 as flash-attn's
    p1 = p1[:, :, :6, :6]
    np.random.seed(3)
    o2 = cflash.flash_attn_func(q, k, v, dropout_p=0.5)
    assert np.array_equal(o1, o2), "the same NumPy seed must give the same dropout"
    dropped = p1 < 0
    assert 0 < dropped.mean() < 1
    # the output is that of the reference with exactly the dropped entries removed
    keep = (~dropped).astype(np.float64)
    ro, _, _ = R.attention(q, k, v, dropout_p=0.5, dropout_mask=keep)
    assert np.abs(o1 - ro).max() < 1e-5


def test_packed_layouts(rng):
    qkv = rng.standard_normal((2, 11, 3, 4, 16)).astype(np.float32)
    a = cflash.flash_attn_qkvpacked_func(qkv, causal=True)
    b = cflash.flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=True)
    assert np.array_equal(a, b)
    q = rng.standard_normal((2, 5, 4, 16)).astype(np.float32)
    kv = rng.standard_normal((2, 11, 2, 2, 16)).astype(np.float32)
    a = cflash.flash_attn_kvpacked_func(q, kv, window_size=(2, 1))
    ro, _, _ = R.attention(q, kv[:, :, 0], kv[:, :, 1], window_size=(2, 1))
    assert np.abs(a - ro).max() < 1e-5
    with pytest.raises(ValueError, match="qkv"):
        cflash.flash_attn_qkvpacked_func(qkv[:, :, :2])


def _varlen_case(rng, lq, lk, H, Hk, D, dtype=np.float32):
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
    q = rng.standard_normal((cq[-1], H, D)).astype(dtype)
    k = rng.standard_normal((ck[-1], Hk, D)).astype(dtype)
    v = rng.standard_normal((ck[-1], Hk, D)).astype(dtype)
    return q, k, v, cq, ck


@pytest.mark.parametrize("feat", ["", "c", "cwA", "s"])
def test_varlen(rng, poison, feat):
    lq, lk = [1, 5, 17, 0], [3, 5, 20, 4]
    H, Hk, D = 4, 2, 16
    q, k, v, cq, ck = _varlen_case(rng, lq, lk, H, Hk, D)
    causal, window = "c" in feat, ((2, 3) if "w" in feat else (-1, -1))
    softcap = 3.0 if "s" in feat else 0.0
    alibi = rng.uniform(0.1, 0.5, (len(lq), H)).astype(np.float32) if "A" in feat else None
    out, lse, _ = cflash.flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=causal,
                                                window_size=window, softcap=softcap, alibi_slopes=alibi,
                                                return_attn_probs=True)
    assert out.shape == (cq[-1], H, D) and lse.shape == (H, cq[-1])
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = _core.attn_varlen_bwd(dout, q, k, v, out, lse, cq, ck, max(lq), max(lk), 0.0, None, causal,
                                  window[0], window[1], softcap, alibi, False)
    for b in range(len(lq)):
        sq, sk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        kw = dict(causal=causal, window_size=window, softcap=softcap,
                  alibi_slopes=None if alibi is None else alibi[b])
        ro, rl, _ = R.attention(q[None, sq], k[None, sk], v[None, sk], **kw)
        no, nl, _ = R.attention(q[None, sq], k[None, sk], v[None, sk], dtype="float32", **kw)
        check_rule("out[%d]" % b, out[None, sq], ro, no, "float32")
        check_rule("lse[%d]" % b, lse[None, :, sq], rl, nl, "float32")
        rg = R.attention_bwd(dout[None, sq], q[None, sq], k[None, sk], v[None, sk], **kw)
        ng = R.attention_bwd(dout[None, sq], q[None, sq], k[None, sk], v[None, sk], dtype="float32", **kw)
        for name, g, r, n, s in zip(("dq", "dk", "dv"), grads, rg, ng, (sq, sk, sk)):
            check_rule("%s[%d]" % (name, b), g[None, s], r, n, "float32", factor=3.0, magnitude=grad_magnitude(rg),
                       grad=True)


def test_varlen_packed(rng):
    lq = [3, 7, 2]
    q, k, v, cq, _ = _varlen_case(rng, lq, lq, 4, 4, 8)
    qkv = np.stack([q, k, v], axis=1)
    a = cflash.flash_attn_varlen_qkvpacked_func(qkv, cq, max(lq), causal=True)
    b = cflash.flash_attn_varlen_func(q, k, v, cq, cq, max(lq), max(lq), causal=True)
    assert np.array_equal(a, b)
    kv = np.stack([k, v], axis=1)
    c = cflash.flash_attn_varlen_kvpacked_func(q, kv, cq, cq, max(lq), max(lq), causal=True)
    assert np.array_equal(a, c)


def test_errors_carry_the_library_message(rng):
    q = rng.standard_normal((1, 4, 2, 8))  # float64
    with pytest.raises(ValueError, match=r"q: dtype float64, expected float32"):
        cflash.flash_attn_func(q, q, q)
    q32 = q.astype(np.float32)
    k3 = rng.standard_normal((1, 4, 3, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"k: 3 heads, expected a divisor"):
        cflash.flash_attn_func(q32, k3, k3)
    with pytest.raises(ValueError, match=r"window_left: -2"):
        cflash.flash_attn_func(q32, q32, q32, window_size=(-2, 0))
    with pytest.raises(ValueError, match=r"dropout_p"):
        cflash.flash_attn_func(q32, q32, q32, dropout_p=1.5)
    qv = rng.standard_normal((6, 2, 8)).astype(np.float32)
    bad = np.array([0, 4, 2, 6], np.int32)
    with pytest.raises(ValueError, match=r"cu_seqlens_q\[2\]: 2 is less than"):
        cflash.flash_attn_varlen_func(qv, qv, qv, bad, bad, 4, 4)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: dtype int64"):
        cflash.flash_attn_varlen_func(qv, qv, qv, bad.astype(np.int64), bad, 4, 4)
    with pytest.raises(ValueError, match=r"unknown name 'nope'"):
        cflash.set_backend("nope")
    with pytest.raises(ValueError, match=r"expected a NumPy array or a torch.Tensor"):
        cflash.flash_attn_func([1.0], q32, q32)


def test_forced_backend(rng):
    q = rng.standard_normal((1, 5, 2, 8)).astype(np.float32)
    try:
        cflash.set_backend("cpu-ref")
        a = cflash.flash_attn_func(q, q, q, causal=True)
        assert "-> cpu-ref" in cflash.explain(cflash.flash_attn_func, q, q, q, causal=True)
        cflash.set_backend("cuda-simt")  # valid name, but cannot serve CPU arrays
        with pytest.raises(RuntimeError, match="cuda-simt"):
            cflash.flash_attn_func(q, q, q)
    finally:
        cflash.set_backend(None)
    b = cflash.flash_attn_func(q, q, q, causal=True)
    ro, _, _ = R.attention(q, q, q, causal=True)
    assert np.abs(a - ro).max() < 1e-5 and np.abs(b - ro).max() < 1e-5


def test_explain_and_report(rng):
    q = rng.standard_normal((1, 5, 2, 8)).astype(np.float32)
    text = cflash.explain("flash_attn_func", q, q, q, causal=True)
    assert "attn_fwd:" in text and "attn_bwd:" in text and "-> " in text
    bad = cflash.explain(cflash.flash_attn_func, q.astype(np.float64), q, q)
    assert "CFLASH_ERR_INVALID_ARGUMENT" in bad and "not dispatched" in bad
    # explain mode covers its call only: the next calls on this thread's context compute
    ro, _, _ = R.attention(q, q, q, causal=True)
    assert np.abs(cflash.flash_attn_func(q, q, q, causal=True) - ro).max() < 1e-5
    from cflash.ops import rms_norm_fn

    x16 = q.astype(np.float16)
    text = cflash.explain(rms_norm_fn, x16, np.ones(8, np.float16), None, residual=x16.astype(np.float32),
                          prenorm=True, residual_in_fp32=True)
    assert "norm_fwd:" in text and "norm_bwd:" in text and "-> none" not in text, text
    rep = cflash.report()
    assert cflash.__version__ in rep
    js = cflash.report(json=True)
    assert isinstance(js, dict) and js


def test_library_override_env(tmp_path):
    import subprocess
    import sys
    import os

    env = dict(os.environ, CFLASH_LIBRARY=str(tmp_path / "missing.so"))
    code = "import sys; sys.path.insert(0, %r); import cflash" % os.path.dirname(os.path.dirname(cflash.__file__))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "CFLASH_LIBRARY=" in r.stderr and "does not exist" in r.stderr


@pytest.mark.parametrize("backend", ["cpu-amx", "cpu-avx512", "cpu-avx2", "cpu-sve", "cpu-neon", "cpu-generic", "cpu-ref"])
def test_each_cpu_backend_through_python(rng, poison, backend):
    """The package's calls on every CPU backend that can run here (forced), fp32 and fp16, fwd + bwd."""
    q, k, v, kw = make_case(rng, 2, 19, 23, 4, 2, 24, 24, "float32", "cwa")
    try:
        cflash.set_backend(backend)
    except ValueError as e:  # a backend with no rows in this build (cpu-neon on x86) is not a name
        pytest.skip("%s is not in this build: %s" % (backend, e))
    try:
        cflash.set_backend(backend)
        for dtype in ("float32", "float16"):
            qd, kd, vd = q.astype(dtype), k.astype(dtype), v.astype(dtype)
            try:
                out, lse = _core.attn_fwd(qd, kd, vd, 0.0, None, True, *kw["window"], 0.0, kw["alibi"])
            except RuntimeError as e:
                if "CFLASH_ERR_UNSUPPORTED" in str(e):
                    pytest.skip("%s cannot serve here: %s" % (backend, e))
                raise
            rk = ref_kwargs(kw, 2, 4, 19, 23)
            check_rule("out", out, R.attention(qd, kd, vd, **rk)[0], R.attention(qd, kd, vd, dtype=dtype, **rk)[0],
                       dtype)
            dout = rng.standard_normal(out.shape).astype(dtype)
            try:
                g = _core.attn_bwd(dout, qd, kd, vd, out, lse, 0.0, None, True, *kw["window"], 0.0, kw["alibi"],
                                   False)
            except RuntimeError as e:
                if "CFLASH_ERR_UNSUPPORTED" in str(e):
                    continue  # this backend serves the forward only
                raise
            rg = R.attention_bwd(dout, qd, kd, vd, **rk)
            ng = R.attention_bwd(dout, qd, kd, vd, dtype=dtype, **rk)
            for name, a, r, n in zip(("dq", "dk", "dv"), g, rg, ng):
                check_rule(name, a, r, n, dtype, factor=3.0, magnitude=grad_magnitude(rg), grad=True)
    finally:
        cflash.set_backend(None)


def test_bfloat16_numpy_arrays(rng, poison):
    """NumPy has no bfloat16; ml_dtypes' is passed as DLPack bfloat16 (tested where it is installed)."""
    ml_dtypes = require("ml_dtypes", "ml_dtypes is not installed (NumPy bfloat16 arrays)")
    bf16 = ml_dtypes.bfloat16
    q, k, v = (rng.standard_normal((2, 13, 4, 32)).astype(bf16) for _ in range(3))
    out, lse = _core.attn_fwd(q, k, v, 0.0, None, True, -1, -1, 0.0, None)
    assert out.dtype == bf16
    ro, rl, _ = R.attention(q, k, v, causal=True)
    no, nl, _ = R.attention(q, k, v, causal=True, dtype=bf16)
    check_rule("out", out.astype(np.float64), ro, no, "bfloat16")
    check_rule("lse", lse, rl, nl, "float32")
    public = cflash.flash_attn_func(q, k, v, causal=True)
    assert public.dtype == bf16 and np.array_equal(public.astype(np.float32), out.astype(np.float32))


@pytest.mark.parametrize("sq,sk", [(0, 5), (3, 0), (0, 0)])
def test_empty_sequences(rng, poison, sq, sk):
    """No queries or no keys: outputs are written in full (0, lse -inf), gradients are 0."""
    q = rng.standard_normal((2, sq, 2, 8)).astype(np.float32)
    k = rng.standard_normal((2, sk, 2, 8)).astype(np.float32)
    out, lse = _core.attn_fwd(q, k, k, 0.0, None, False, -1, -1, 0.0, None)
    assert out.shape == (2, sq, 2, 8) and not np.isnan(out).any() and np.all(out == 0)
    assert np.all(np.isneginf(lse))
    dq, dk, dv = _core.attn_bwd(np.ones_like(out), q, k, k, out, lse, 0.0, None, False, -1, -1, 0.0, None, False)
    for g in (dq, dk, dv):
        assert not np.isnan(g).any() and np.all(g == 0)


def test_concurrent_threads_use_their_own_contexts(rng):
    from concurrent.futures import ThreadPoolExecutor

    cases = [tuple(rng.standard_normal((1, 33, 2, 16)).astype(np.float32) for _ in range(3)) for _ in range(8)]
    want = [R.attention(q, k, v, causal=True)[0] for q, k, v in cases]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda c: cflash.flash_attn_func(*c, causal=True), cases))
    for g, w in zip(got, want):
        assert np.abs(g - w).max() < 1e-5


def test_dltensor_views_do_not_copy(rng):
    """The DLTensor handed to the library points at the array's own memory with its strides."""
    from cflash._tensor import DL, maybe_contiguous

    big = rng.standard_normal((2, 4, 9, 40)).astype(np.float32)
    x = big[..., 3:35].transpose(0, 2, 1, 3)  # (B, S, H, D) view of (B, H, S, D+8) storage
    assert maybe_contiguous(x) is x
    h = DL(x)
    assert h.t.data == x.ctypes.data and h.t.ndim == 4
    assert [h.t.shape[i] for i in range(4)] == list(x.shape)
    assert [h.t.strides[i] for i in range(4)] == [s // 4 for s in x.strides]
    y = big[..., ::2]  # last dim not contiguous: copied once, as flash-attn does
    assert maybe_contiguous(y) is not y and maybe_contiguous(y).strides[-1] == 4


def test_softmax_scale_zero_means_uniform_weights(rng):
    q, k, v = (rng.standard_normal((1, 4, 2, 8)).astype(np.float32) for _ in range(3))
    out = cflash.flash_attn_func(q, k, v, softmax_scale=0.0)
    assert np.abs(out - v.mean(axis=1, keepdims=True)).max() < 1e-5
