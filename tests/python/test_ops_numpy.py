"""Rotary, RMSNorm/LayerNorm and KV-cache attention through the Python package on NumPy arrays,
against the NumPy fp64 reference (cflash.reference): flash-attn's layouts and options (interleaved,
partial rotary dim, offsets, varlen, in place, packed qkv / kv and the GQA layout; residual,
prenorm, residual_in_fp32, dropout, backward; appended, paged, re-indexed and left-padded caches,
rotary inside the cache call, split-KV). Runs without torch."""

import numpy as np
import pytest

import cflash
from cflash import _core, reference as R
from cflash.layers.rotary import apply_rotary_emb, apply_rotary_emb_kv_, apply_rotary_emb_qkv_
from cflash.ops import layer_norm_fn, rms_norm_fn
from conftest import check_rule


def rounded(x, dtype):
    """The naive same-precision result of an elementwise op: the exact value rounded to dtype."""
    return np.asarray(x).astype(dtype).astype(np.float64)


def tables(rng, s_ro, rd, dtype=np.float32):
    ang = rng.uniform(0, 2 * np.pi, (s_ro, rd // 2))
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


# ---- Rotary ----


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype,D,rd,offsets", [
    ("float32", 16, 16, 0), ("float32", 33, 8, 3), ("float16", 64, 32, "per-batch"), ("float32", 2, 2, 0)])
def test_rotary(rng, poison, interleaved, dtype, D, rd, offsets):
    B, S, H = 3, 11, 2
    x = rng.standard_normal((B, S, H, D)).astype(dtype)
    cos, sin = tables(rng, 40, rd)
    offs = rng.integers(0, 20, B).astype(np.int32) if offsets == "per-batch" else offsets
    y = apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=offs)
    ref = R.rotary(x, cos, sin, interleaved, offs)
    check_rule("rotary", y, ref, rounded(ref, dtype), dtype)
    # in place gives the same, and the conjugate rotation undoes it
    x2 = x.copy()
    assert apply_rotary_emb(x2, cos, sin, interleaved=interleaved, inplace=True, seqlen_offsets=offs) is x2
    assert np.array_equal(x2, y)
    back = _core.rotary(y, cos, sin, interleaved, True, offs)
    assert np.abs(back.astype(np.float64) - x).max() < (2e-6 if dtype == "float32" else 4e-2)


def test_rotary_varlen(rng, poison):
    lens = [4, 1, 9]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    x = rng.standard_normal((cu[-1], 3, 8)).astype(np.float32)
    cos, sin = tables(rng, 16, 8)
    y = apply_rotary_emb(x, cos, sin, cu_seqlens=cu, max_seqlen=max(lens), seqlen_offsets=2)
    for b in range(len(lens)):
        s = slice(cu[b], cu[b + 1])
        ref = R.rotary(x[None, s], cos, sin, False, 2)[0]
        check_rule("rotary[%d]" % b, y[s], ref, rounded(ref, np.float32), "float32")


def test_rotary_packed(rng):
    B, S, H, D = 2, 7, 4, 16
    cos, sin = tables(rng, 12, 12)
    qkv = rng.standard_normal((B, S, 3, H, D)).astype(np.float32)
    orig = qkv.copy()
    assert apply_rotary_emb_qkv_(qkv, cos, sin, seqlen_offsets=1) is qkv
    for i in (0, 1):
        assert np.abs(qkv[:, :, i] - R.rotary(orig[:, :, i], cos, sin, False, 1)).max() < 1e-5
    assert np.array_equal(qkv[:, :, 2], orig[:, :, 2])
    # XPos-style separate k tables
    cos_k, sin_k = tables(rng, 12, 12)
    qkv = orig.copy()
    apply_rotary_emb_qkv_(qkv, cos, sin, cos_k, sin_k, interleaved=True)
    assert np.abs(qkv[:, :, 1] - R.rotary(orig[:, :, 1], cos_k, sin_k, True)).max() < 1e-5
    # GQA layout (B, S, Hq + 2 Hk, D)
    hq, hk = 4, 2
    g = rng.standard_normal((B, S, hq + 2 * hk, D)).astype(np.float32)
    go = g.copy()
    apply_rotary_emb_qkv_(g, cos, sin, num_heads_q=hq)
    assert np.abs(g[:, :, : hq + hk] - R.rotary(go[:, :, : hq + hk], cos, sin)).max() < 1e-5
    assert np.array_equal(g[:, :, hq + hk:], go[:, :, hq + hk:])
    with pytest.raises(ValueError, match="num_heads_q"):
        apply_rotary_emb_qkv_(g, cos, sin)
    kv = rng.standard_normal((B, S, 2, hk, D)).astype(np.float32)
    ko = kv.copy()
    apply_rotary_emb_kv_(kv, cos, sin, seqlen_offsets=np.array([0, 3], np.int32))
    assert np.abs(kv[:, :, 0] - R.rotary(ko[:, :, 0], cos, sin, False, [0, 3])).max() < 1e-5
    assert np.array_equal(kv[:, :, 1], ko[:, :, 1])


def test_rotary_errors(rng):
    x = rng.standard_normal((1, 8, 2, 8)).astype(np.float32)
    cos, sin = tables(rng, 4, 8)  # too short for 8 positions
    with pytest.raises(ValueError, match="cos"):
        apply_rotary_emb(x, cos, sin)
    cos, sin = tables(rng, 8, 12)  # rotary dim 12 > head dim 8
    with pytest.raises(ValueError):
        apply_rotary_emb(x, cos, sin)


# ---- Norm ----


@pytest.mark.parametrize("is_rms", [True, False])
@pytest.mark.parametrize("dtype,residual,prenorm,res_fp32,bias", [
    ("float32", False, False, False, False),
    ("float32", True, True, False, True),
    ("float16", True, True, False, True),
    ("float16", False, True, True, False),
    ("float16", True, False, True, True),
])
def test_norm(rng, poison, is_rms, dtype, residual, prenorm, res_fp32, bias):
    shape, N = (3, 5, 40), 40
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(N).astype(dtype)
    b = rng.standard_normal(N).astype(dtype) if bias else None
    r = rng.standard_normal(shape).astype(np.float32 if res_fp32 else dtype) if residual else None
    fn = rms_norm_fn if is_rms else (lambda *a, **k: layer_norm_fn(*a, **k))
    res = fn(x, w, b, residual=r, eps=1e-5, prenorm=prenorm, residual_in_fp32=res_fp32)
    y, h = res if prenorm else (res, None)
    ref_y, ref_h = R.norm(x, w, b, r, 1e-5, is_rms)
    assert y.dtype == np.dtype(dtype) and y.shape == shape
    check_rule("y", y, ref_y, rounded(ref_y, dtype), dtype, factor=4.0)
    if prenorm:
        want = np.float32 if (res_fp32 or (r is not None and r.dtype == np.float32)) else np.dtype(dtype)
        assert h.dtype == want
        if r is None and not res_fp32:
            assert h is x
        check_rule("residual_out", h, ref_h, rounded(ref_h, h.dtype), h.dtype)
    # backward (the library's fp32-accumulating kernel vs the fp64 formula)
    dy = rng.standard_normal(shape).astype(dtype)
    y2, h2, mean, rstd = _core.norm_fwd(x, w, b, r, 1e-5, 0.0, 0, is_rms, res_fp32)
    hh = h2 if h2 is not None else x.reshape(-1, N)
    dx, dw, db, dres = _core.norm_bwd(dy, hh, w, b, mean, rstd, None, 1e-5, 0.0, 0, is_rms, x, r is not None, r)
    rdx, rdw, rdb = R.norm_bwd(dy.reshape(-1, N), hh, w, 1e-5, is_rms)
    check_rule("dx", dx, rdx, rounded(rdx, dtype), dtype, factor=3.0)
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert np.abs(dw - rdw).max() <= tol * max(1, np.abs(rdw).max())
    if b is not None:
        assert np.abs(db - rdb).max() <= tol * max(1, np.abs(rdb).max())
    if r is not None:
        assert dres.dtype == r.dtype
        assert np.abs(dres.astype(np.float64) - rdx).max() <= tol * max(1, np.abs(rdx).max())


def test_norm_dropout_uses_the_attention_philox_keying(rng):
    M, N, p, seed = 6, 24, 0.3, 1234
    x = rng.standard_normal((M, N)).astype(np.float32)
    r = rng.standard_normal((M, N)).astype(np.float32)
    w = np.ones(N, np.float32)
    y, h, _, _ = _core.norm_fwd(x, w, None, r, 1e-6, p, seed, True, False)
    keep = _core.dropout_mask(1, 1, M, N, p, seed)[0, 0].astype(np.float64)
    want_h = x * keep / (1 - p) + r
    assert np.abs(h - want_h).max() < 1e-5
    assert np.abs(y - R.norm(want_h, w, None, None, 1e-6, True)[0]).max() < 1e-5


def test_norm_unsupported_options(rng):
    x = rng.standard_normal((2, 8)).astype(np.float32)
    w = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="x1"):
        layer_norm_fn(x, w, None, x1=x)
    with pytest.raises(ValueError, match="rowscale"):
        rms_norm_fn(x, w, None, rowscale=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="residual"):
        rms_norm_fn(x, w, None, residual=x[:1])


# ---- KV cache ----


def _cache(rng, B, S, Hk, D, dtype=np.float32):
    return (rng.standard_normal((B, S, Hk, D)).astype(dtype), rng.standard_normal((B, S, Hk, D)).astype(dtype))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_splits", [0, 1, 3])
def test_kvcache_append(rng, poison, causal, num_splits):
    B, Sc, Hk, H, D, Sn, Sq = 2, 32, 2, 4, 16, 3, 3
    kc, vc = _cache(rng, B, Sc, Hk, D)
    k0, v0 = kc.copy(), vc.copy()
    lens = np.array([7, 20], np.int32)
    q = rng.standard_normal((B, Sq, H, D)).astype(np.float32)
    kn, vn = rng.standard_normal((B, Sn, Hk, D)).astype(np.float32), rng.standard_normal((B, Sn, Hk, D)).astype(np.float32)
    out, lse = cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=causal,
                                              num_splits=num_splits, return_softmax_lse=True)
    for b in range(B):
        L = lens[b]
        assert np.array_equal(kc[b, L:L + Sn], kn[b]) and np.array_equal(vc[b, L:L + Sn], vn[b])
        assert np.array_equal(kc[b, :L], k0[b, :L]) and np.array_equal(kc[b, L + Sn:], k0[b, L + Sn:])
        ro, rl, _ = R.attention(q[b:b + 1], kc[b:b + 1, :L + Sn], vc[b:b + 1, :L + Sn], causal=causal)
        no, nl, _ = R.attention(q[b:b + 1], kc[b:b + 1, :L + Sn], vc[b:b + 1, :L + Sn], causal=causal,
                                dtype="float32")
        check_rule("out[%d]" % b, out[b:b + 1], ro, no, "float32")
        check_rule("lse[%d]" % b, lse[b:b + 1], rl, nl, "float32")


def test_kvcache_paged_matches_contiguous(rng, poison):
    B, Hk, H, D, page, max_pages = 2, 1, 3, 8, 5, 6
    lens = np.array([13, 22], np.int32)
    kc, vc = _cache(rng, B, page * max_pages, Hk, D)
    pages = rng.permutation(B * max_pages + 3).astype(np.int32)
    table = pages[: B * max_pages].reshape(B, max_pages)
    kp = np.zeros((B * max_pages + 3, page, Hk, D), np.float32)
    vp = np.zeros_like(kp)
    for b in range(B):
        for t in range(max_pages):
            kp[table[b, t]] = kc[b, t * page:(t + 1) * page]
            vp[table[b, t]] = vc[b, t * page:(t + 1) * page]
    q = rng.standard_normal((B, 2, H, D)).astype(np.float32)
    kn, vn = rng.standard_normal((B, 2, Hk, D)).astype(np.float32), rng.standard_normal((B, 2, Hk, D)).astype(np.float32)
    a = cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True)
    p = cflash.flash_attn_with_kvcache(q, kp, vp, kn, vn, cache_seqlens=lens, block_table=table, causal=True)
    assert np.abs(a - p).max() < 1e-5
    for b in range(B):  # the new rows landed in the right pages
        for n in range(2):
            t = lens[b] + n
            assert np.array_equal(kp[table[b, t // page], t % page], kn[b, n])


def test_kvcache_rotary_batch_idx_leftpad(rng):
    B, Sc, Hk, H, D, rd = 2, 24, 2, 2, 16, 8
    kc, vc = _cache(rng, 3, Sc, Hk, D)
    idx = np.array([2, 0], np.int32)
    lens = np.array([9, 5], np.int32)
    pad = np.array([2, 0], np.int32)
    q = rng.standard_normal((B, 1, H, D)).astype(np.float32)
    kn, vn = rng.standard_normal((B, 1, Hk, D)).astype(np.float32), rng.standard_normal((B, 1, Hk, D)).astype(np.float32)
    cos, sin = tables(rng, 32, rd)
    kc0 = kc.copy()
    out = cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cos, sin, cache_seqlens=lens, cache_batch_idx=idx,
                                         cache_leftpad=pad, causal=True)
    for b in range(B):
        c, L, P = idx[b], lens[b], pad[b]
        kr = R.rotary(kn[b:b + 1], cos, sin, True, int(L))
        assert np.abs(kc[c, L] - kr[0, 0]).max() < 1e-5
        assert np.array_equal(kc[c, :L], kc0[c, :L])
        qr = R.rotary(q[b:b + 1], cos, sin, True, int(L))
        keys = np.concatenate([kc0[c, P:L], kr[0]])[None]
        vals = np.concatenate([vc[c, P:L], vn[b]])[None]
        ro, _, _ = R.attention(qr, keys, vals, causal=True)
        assert np.abs(out[b:b + 1] - ro).max() < 1e-5
    # an int cache_seqlens is the same length for every batch
    kc2, vc2 = _cache(rng, B, Sc, Hk, D)
    o1 = cflash.flash_attn_with_kvcache(q, kc2, vc2, cache_seqlens=6)
    o2 = cflash.flash_attn_with_kvcache(q, kc2, vc2, cache_seqlens=np.array([6, 6], np.int32))
    assert np.array_equal(o1, o2)


def test_kvcache_errors(rng):
    kc, vc = _cache(rng, 1, 8, 1, 8)
    q = rng.standard_normal((1, 1, 1, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="k_cache: last dimension"):
        cflash.flash_attn_with_kvcache(q, np.repeat(kc, 2, axis=-1)[..., ::2], vc)
    with pytest.raises(ValueError, match="cache_seqlens"):
        cflash.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=np.array([9], np.int32))


def test_attn_merge_of_key_splits(rng, poison):
    B, Sq, H, D, Sk = 2, 5, 3, 8, 30
    q = rng.standard_normal((B, Sq, H, D)).astype(np.float32)
    k = rng.standard_normal((B, Sk, H, D)).astype(np.float32)
    v = rng.standard_normal((B, Sk, H, D)).astype(np.float32)
    parts = [(0, 7), (7, 20), (20, 30)]
    outs, lses = zip(*[_core.attn_fwd(q, k[:, a:b], v[:, a:b], 0.0, None, False, -1, -1, 0.0, None)
                       for a, b in parts])
    out, lse = cflash.attn_merge(np.stack(outs), np.stack(lses))
    ro, rl, _ = R.attention(q, k, v)
    assert out.shape == (B, Sq, H, D) and lse.shape == (B, H, Sq)
    assert np.abs(out - ro).max() < 1e-5 and np.abs(lse - rl).max() < 1e-5


def test_kvcache_rotary_positions_when_not_causal(rng):
    """Not causal and not windowed: every q row is rotated at position cache_seqlens (flash-attn)."""
    B, Sc, Hk, H, D, rd, Sq = 1, 16, 1, 2, 8, 8, 3
    kc, vc = _cache(rng, B, Sc, Hk, D)
    kc0 = kc.copy()
    L = 4
    q = rng.standard_normal((B, Sq, H, D)).astype(np.float32)
    kn, vn = rng.standard_normal((B, Sq, Hk, D)).astype(np.float32), rng.standard_normal((B, Sq, Hk, D)).astype(np.float32)
    cos, sin = tables(rng, 16, rd)
    out = cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cos, sin, cache_seqlens=L, rotary_interleaved=False)
    kr = R.rotary(kn, cos, sin, False, L)  # new keys at L, L + 1, L + 2
    qr = np.concatenate([R.rotary(q[:, i:i + 1], cos, sin, False, L) for i in range(Sq)], axis=1)  # all at L
    keys = np.concatenate([kc0[:, :L], kr], axis=1)
    vals = np.concatenate([vc[:, :L], vn], axis=1)
    ro, _, _ = R.attention(qr, keys, vals)
    assert np.abs(out - ro).max() < 1e-5


class _Producer:
    """Any DLPack producer (as CuPy or JAX arrays are): only __dlpack__ / __dlpack_device__."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, *args, **kwargs):
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_other_dlpack_producers_are_used_without_copy(rng):
    x = rng.standard_normal((1, 6, 2, 8)).astype(np.float32)
    orig = x.copy()
    cos, sin = tables(rng, 6, 8)
    apply_rotary_emb(_Producer(x), _Producer(cos), _Producer(sin), inplace=True)
    assert np.abs(x - R.rotary(orig, cos, sin)).max() < 1e-5, "the producer's own memory was rotated"
    out = cflash.flash_attn_func(_Producer(x), _Producer(x), _Producer(x), causal=True)
    assert isinstance(out, np.ndarray) and np.abs(out - R.attention(x, x, x, causal=True)[0]).max() < 1e-5


@pytest.mark.parametrize("backend", ["cpu-amx", "cpu-avx512", "cpu-avx2", "cpu-sve", "cpu-neon", "cpu-generic", "cpu-ref"])
def test_ops_on_each_cpu_backend(rng, poison, backend):
    """Rotary, norm (fwd + bwd) and KV-cache attention with each CPU backend forced; an op the
    backend does not serve is skipped for it (the library's reason is checked to be UNSUPPORTED)."""
    served = []

    def attempt(fn):
        try:
            fn()
            served.append(fn.__name__)
        except RuntimeError as e:
            assert "CFLASH_ERR_UNSUPPORTED" in str(e), e

    x = rng.standard_normal((2, 9, 3, 32)).astype(np.float16)
    cos, sin = tables(rng, 16, 24)

    def rotary():
        y = apply_rotary_emb(x, cos, sin, interleaved=True, seqlen_offsets=np.array([1, 4], np.int32))
        ref = R.rotary(x, cos, sin, True, [1, 4])
        check_rule("rotary", y, ref, rounded(ref, np.float16), "float16")

    def norm():
        w = rng.standard_normal(32).astype(np.float16)
        r = rng.standard_normal(x.shape).astype(np.float32)
        y, h, mean, rstd = _core.norm_fwd(x, w, None, r, 1e-5, 0.0, 0, False, True)
        ry, rh = R.norm(x, w, None, r, 1e-5, False)
        check_rule("y", y, ry, rounded(ry, np.float16), "float16", factor=4.0)
        dy = rng.standard_normal(x.shape).astype(np.float16)
        dx, dw, _, dres = _core.norm_bwd(dy, h, w, None, mean, rstd, None, 1e-5, 0.0, 0, False, x, True, r)
        rdx, rdw, _ = R.norm_bwd(dy.reshape(-1, 32), h, w, 1e-5, False)
        check_rule("dx", dx, rdx, rounded(rdx, np.float16), "float16", factor=3.0)
        assert np.abs(dw.astype(np.float64) - rdw).max() <= 2e-2 * max(1, np.abs(rdw).max())

    def kvcache():
        kc, vc = _cache(rng, 2, 24, 1, 32)
        q = rng.standard_normal((2, 2, 3, 32)).astype(np.float32)
        lens = np.array([5, 17], np.int32)
        out = cflash.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True, num_splits=2)
        for b in range(2):
            ro, _, _ = R.attention(q[b:b + 1], kc[b:b + 1, :lens[b]], vc[b:b + 1, :lens[b]], causal=True)
            no, _, _ = R.attention(q[b:b + 1], kc[b:b + 1, :lens[b]], vc[b:b + 1, :lens[b]], causal=True,
                                   dtype="float32")
            check_rule("kvcache", out[b:b + 1], ro, no, "float32")

    try:
        cflash.set_backend(backend)
    except ValueError as e:  # a backend with no rows in this build (cpu-neon on x86) is not a name
        pytest.skip("%s is not in this build: %s" % (backend, e))
    try:
        cflash.set_backend(backend)
        for fn in (rotary, norm, kvcache):
            attempt(fn)
    finally:
        cflash.set_backend(None)
    if not served:
        pytest.skip("%s serves none of rotary, norm, kvcache here" % backend)
