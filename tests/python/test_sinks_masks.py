"""Issue 13 through the Python package: learnable_sink (FA4's name) and attention_chunk (FA3's) in
flash_attn_func and flash_attn_varlen_func, on NumPy and with torch autograd (dq, dk, dv, dsink),
eager and under torch.compile, and the SDPA mask route cflash._torch.sdpa_masked (boolean and
additive masks, the bias gradient), against a float64 torch reference under DESIGN.md's rule
(naive: the same formula in float32)."""

import numpy as np
import pytest

import cflash
from cflash import _core
from conftest import check_rule, grad_magnitude

torch = pytest.importorskip("torch")


def ref_attn(q, k, v, scale, causal=False, sink=None, bias=None, mask=None, chunk=0):
    """q (B, Sq, H, D), k / v (B, Sk, Hk, D[v]) in any float dtype: out (B, Sq, H, Dv), lse (B, H,
    Sq) over the visible scores and the sink; chunk > 0: query i (key position i + Sk - Sq) sees
    only keys of its own chunk."""
    B, Sq, H, _ = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    kk, vv = k.repeat_interleave(H // Hk, dim=2), v.repeat_interleave(H // Hk, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, kk) * scale
    if bias is not None:
        s = s + bias.to(s.dtype)
    ok = torch.ones(Sq, Sk, dtype=torch.bool)
    if causal:
        ok = ok.tril(Sk - Sq)
    if chunk:
        pos = torch.arange(Sq)[:, None] + (Sk - Sq)
        ok = ok & (torch.div(pos, chunk, rounding_mode="floor") == torch.arange(Sk)[None, :] // chunk)
    ok = ok.expand(B, H, Sq, Sk)
    if mask is not None:
        ok = ok & mask
    s = s.masked_fill(~ok, float("-inf"))
    if sink is not None:
        s = torch.cat([s, sink.to(s.dtype).view(1, H, 1, 1).expand(B, H, Sq, 1)], dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)[..., :Sk]
    return torch.einsum("bhij,bjhd->bihd", p, vv), lse


def _inputs(gen, B, Sq, Sk, H, Hk, D, Dv):
    q = torch.randn(B, Sq, H, D, generator=gen)
    k = torch.randn(B, Sk, Hk, D, generator=gen)
    v = torch.randn(B, Sk, Hk, Dv, generator=gen)
    sink = torch.randn(H, generator=gen) * 2
    return q, k, v, sink


def _dsink_scale(out, lse, sink, dout):
    """The magnitude of dsink's terms, sum over rows of |exp(sink - lse) * rowsum(dout * out)|
    (largest head): the scale its fp32 sum's rounding lives on (out (B, Sq, H, Dv), lse (B, H, Sq))."""
    dl = (dout.double() * out.double()).sum(-1).transpose(1, 2)  # (B, H, Sq)
    t = torch.exp(sink.double().view(1, -1, 1) - lse.double()) * dl
    return float(t.abs().sum(dim=(0, 2)).max())


def _grads(fn, inputs, dout):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    out.backward(dout)
    return out.detach(), [x.grad for x in xs]


# (B, Sq, Sk, H, Hk, D, Dv, causal): GQA, Sq > Sk causal (rows that see only the sink), odd sizes
SHAPES = [(2, 37, 53, 4, 2, 32, 32, False), (1, 53, 37, 4, 1, 24, 16, True), (2, 1, 70, 6, 3, 64, 64, True),
          (1, 129, 129, 2, 2, 40, 40, True)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%d-Sq%d-Sk%d-H%d-Hk%d-D%d-Dv%d-c%d" % s)
def test_learnable_sink_torch(shape, rng, poison):
    B, Sq, Sk, H, Hk, D, Dv, causal = shape
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    q, k, v, sink = _inputs(gen, B, Sq, Sk, H, Hk, D, Dv)
    dout = torch.randn(B, Sq, H, Dv, generator=gen)
    scale = D ** -0.5
    got, g = _grads(lambda a, b, c, s: cflash.flash_attn_func(a, b, c, causal=causal, learnable_sink=s),
                    (q, k, v, sink), dout)
    ref, r = _grads(lambda a, b, c, s: ref_attn(a, b, c, scale, causal, s)[0], [x.double() for x in (q, k, v, sink)],
                    dout.double())
    nv, n = _grads(lambda a, b, c, s: ref_attn(a, b, c, scale, causal, s)[0], (q, k, v, sink), dout)
    check_rule("out", got.numpy(), ref.numpy(), nv.numpy(), "float32")
    mag = grad_magnitude([x.numpy() for x in r[:3]])
    o64, l64 = ref_attn(*[x.double() for x in (q, k, v)], scale, causal, sink.double())
    mags = (mag, mag, mag, _dsink_scale(o64, l64, sink, dout))
    for name, a, b, c, m in zip(("dq", "dk", "dv", "dsink"), g, r, n, mags):
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=m, grad=True)


def test_learnable_sink_numpy_lse(rng, poison):
    """NumPy: out, and the LSE includes the sink (FA4's convention); a row that sees no key gets
    out 0 and lse = sink."""
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    B, Sq, Sk, H, Hk, D = 2, 20, 9, 4, 2, 16
    q, k, v, sink = _inputs(gen, B, Sq, Sk, H, Hk, D, D)
    scale = D ** -0.5
    out = cflash.flash_attn_func(q.numpy(), k.numpy(), v.numpy(), causal=True, learnable_sink=sink.numpy())
    o2, lse = _core.attn_fwd(q.numpy(), k.numpy(), v.numpy(), 0.0, scale, True, -1, -1, 0.0, None,
                             sinks=sink.numpy())
    ref, rlse = ref_attn(*[x.double() for x in (q, k, v)], scale, True, sink.double())
    nv, nlse = ref_attn(q, k, v, scale, True, sink)
    check_rule("out", out, ref.numpy(), nv.numpy(), "float32")
    check_rule("lse", lse, rlse.numpy(), nlse.numpy(), "float32")
    np.testing.assert_array_equal(out, o2)
    blind = Sq - Sk - 1  # the last row that sees no key under causal alignment
    assert np.all(out[:, : blind + 1] == 0)
    np.testing.assert_allclose(lse[:, :, blind], np.broadcast_to(sink.numpy(), (B, H)), rtol=0, atol=1e-6)


VARLEN_LQ, VARLEN_LK, VARLEN_H, VARLEN_HK, VARLEN_D = [5, 31, 1], [17, 31, 40], 4, 2, 32


def _varlen_case(rng, chunk=0):
    """Three sequences (a decode row among them): q, k, v, sink, dout, cu_seqlens_q / _k (torch),
    and the causal fp64-able reference ref(q, k, v, sink) sequence by sequence."""
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    lq, lk, H, Hk, D = VARLEN_LQ, VARLEN_LK, VARLEN_H, VARLEN_HK, VARLEN_D
    cq = torch.tensor([0] + list(np.cumsum(lq)), dtype=torch.int32)
    ck = torch.tensor([0] + list(np.cumsum(lk)), dtype=torch.int32)
    q = torch.randn(sum(lq), H, D, generator=gen)
    k = torch.randn(sum(lk), Hk, D, generator=gen)
    v = torch.randn(sum(lk), Hk, D, generator=gen)
    sink = torch.randn(H, generator=gen)
    dout = torch.randn(sum(lq), H, D, generator=gen)

    def ref(a, b, c, s):
        outs = []
        for i in range(len(lq)):
            qs, ks = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
            outs.append(ref_attn(a[None, qs], b[None, ks], c[None, ks], D ** -0.5, True, s, chunk=chunk)[0][0])
        return torch.cat(outs)

    return q, k, v, sink, dout, cq, ck, ref


def test_learnable_sink_varlen_torch(rng, poison):
    q, k, v, sink, dout, cq, ck, ref = _varlen_case(rng)
    lq, lk, scale = VARLEN_LQ, VARLEN_LK, VARLEN_D ** -0.5
    got, g = _grads(lambda a, b, c, s: cflash.flash_attn_varlen_func(a, b, c, cq, ck, max(lq), max(lk), causal=True,
                                                                      learnable_sink=s), (q, k, v, sink), dout)
    rr, r = _grads(ref, [x.double() for x in (q, k, v, sink)], dout.double())
    nv, n = _grads(ref, (q, k, v, sink), dout)
    check_rule("out", got.numpy(), rr.numpy(), nv.numpy(), "float32")
    mag = grad_magnitude([x.numpy() for x in r[:3]])
    for name, a, b, c in zip(("dq", "dk", "dv"), g, r, n):
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=mag, grad=True)
    scales = []
    for i in range(len(lq)):  # dsink's terms, sequence by sequence
        qs, ks = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
        o, lse = ref_attn(q[None, qs].double(), k[None, ks].double(), v[None, ks].double(), scale, True, sink.double())
        scales.append(_dsink_scale(o, lse, sink, dout[None, qs]))
    check_rule("dsink", g[3].numpy(), r[3].numpy(), n[3].numpy(), "float32", factor=3.0, magnitude=sum(scales),
               grad=True)


def test_learnable_sink_refusals():
    q = np.zeros((1, 4, 2, 8), "float32")
    with pytest.raises(ValueError, match="return_attn_probs: S_dmask .with dropout. does not model learnable_sink"):
        cflash.flash_attn_func(q, q, q, dropout_p=0.1, learnable_sink=np.zeros(2, np.float32), return_attn_probs=True)
    # without dropout S_dmask is empty: out and the LSE (the sink included) come back
    out, lse, S = cflash.flash_attn_func(q, q, q, learnable_sink=np.full(2, 3.0, np.float32), return_attn_probs=True)
    assert S.size == 0 and np.allclose(lse, np.log(4 + np.exp(3.0)))
    with pytest.raises(Exception, match="sinks"):  # wrong length: the library names the argument
        cflash.flash_attn_func(q, q, q, learnable_sink=np.zeros(3, np.float32))


# ---- learnable_sink in the KV-cache call (gpt-oss decode): appended rows, GQA, window, splits ----

@pytest.mark.parametrize("case", [(2, 1, 37, 3, 8, 2, 64, -1, 0), (1, 4, 90, 2, 4, 4, 32, 20, 3),
                                  (3, 1, 0, 1, 4, 1, 16, -1, 1)],
                         ids=lambda c: "B%d-Sq%d-L%d-Sn%d-H%d-Hk%d-D%d-w%d-split%d" % c)
def test_learnable_sink_kvcache(case, rng):
    B, Sq, L, Sn, H, Hk, D, wl, splits = case
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    S_cache = L + Sn + 5
    kc, vc = torch.randn(B, S_cache, Hk, D, generator=gen), torch.randn(B, S_cache, Hk, D, generator=gen)
    q, kn, vn, sink = _inputs(gen, B, Sq, Sn, H, Hk, D, D)
    sink[0] = 8.0  # one head's sink dominates its rows
    kc[:, L:], vc[:, L:] = float("nan"), float("nan")  # the append must write these rows
    k_all = torch.cat([kc[:, :L], kn], dim=1)
    v_all = torch.cat([vc[:, :L], vn], dim=1)
    out, lse = cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=L, causal=True, window_size=(wl, 0),
                                              num_splits=splits, return_softmax_lse=True, learnable_sink=sink)
    scale = D ** -0.5
    Sk = L + Sn
    ok = torch.ones(Sq, Sk, dtype=torch.bool).tril(Sk - Sq)
    if wl >= 0:
        ok = ok & ~torch.ones(Sq, Sk, dtype=torch.bool).tril(Sk - Sq - wl - 1)
    mask = ok.expand(B, H, Sq, Sk)
    ro, rl = ref_attn(q.double(), k_all.double(), v_all.double(), scale, sink=sink.double(), mask=mask)
    no, nl = ref_attn(q, k_all, v_all, scale, sink=sink, mask=mask)
    check_rule("out", out.numpy(), ro.numpy(), no.numpy(), "float32")
    check_rule("lse", lse.numpy(), rl.numpy(), nl.numpy(), "float32")
    assert torch.equal(kc[:, L:L + Sn], kn) and torch.equal(vc[:, L:L + Sn], vn)


# ---- attention_chunk (Llama 4), alone and with causal, sinks, GQA ----

# (B, Sq, Sk, H, Hk, D, causal, chunk, sink)
CHUNKS = [(2, 40, 40, 4, 2, 32, True, 8, False), (1, 13, 50, 4, 1, 16, True, 16, True),
          (2, 33, 21, 2, 2, 24, False, 5, False), (1, 1, 70, 8, 2, 64, True, 32, True)]


@pytest.mark.parametrize("case", CHUNKS, ids=lambda c: "B%d-Sq%d-Sk%d-H%d-Hk%d-D%d-c%d-chunk%d-s%d" % c)
def test_attention_chunk_torch(case, rng, poison):
    B, Sq, Sk, H, Hk, D, causal, chunk, with_sink = case
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    q, k, v, sink = _inputs(gen, B, Sq, Sk, H, Hk, D, D)
    dout = torch.randn(B, Sq, H, D, generator=gen)
    scale = D ** -0.5
    ins = (q, k, v, sink) if with_sink else (q, k, v)

    def call(a, b, c, s=None):
        return cflash.flash_attn_func(a, b, c, causal=causal, learnable_sink=s, attention_chunk=chunk)

    def ref(a, b, c, s=None):
        return ref_attn(a, b, c, scale, causal, s, chunk=chunk)[0]

    got, g = _grads(call, ins, dout)
    rr, r = _grads(ref, [x.double() for x in ins], dout.double())
    nv, n = _grads(ref, ins, dout)
    check_rule("out", got.numpy(), rr.numpy(), nv.numpy(), "float32")
    mag = grad_magnitude([x.numpy() for x in r[:3]])
    for name, a, b, c in zip(("dq", "dk", "dv", "dsink"), g, r, n):
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=mag, grad=True)
    # the chunks change the result: the same call without them differs
    assert (got - call(q, k, v, sink if with_sink else None).detach()).abs().max() == 0
    assert (got - cflash.flash_attn_func(q, k, v, causal=causal)).abs().max() > 1e-3


def test_attention_chunk_numpy_lse(rng, poison):
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    B, Sq, Sk, H, Hk, D, chunk = 2, 30, 30, 4, 2, 16, 7
    q, k, v, _ = _inputs(gen, B, Sq, Sk, H, Hk, D, D)
    out, lse, S = cflash.flash_attn_func(q.numpy(), k.numpy(), v.numpy(), causal=True, attention_chunk=chunk,
                                         return_attn_probs=True)
    ro, rl = ref_attn(*[x.double() for x in (q, k, v)], D ** -0.5, True, chunk=chunk)
    no, nl = ref_attn(q, k, v, D ** -0.5, True, chunk=chunk)
    check_rule("out", out, ro.numpy(), no.numpy(), "float32")
    check_rule("lse", lse, rl.numpy(), nl.numpy(), "float32")
    assert S.size == 0
    with pytest.raises(ValueError, match="return_attn_probs: S_dmask .with dropout. does not model"):
        cflash.flash_attn_func(q.numpy(), k.numpy(), v.numpy(), dropout_p=0.1, attention_chunk=chunk,
                               return_attn_probs=True)
    with pytest.raises(ValueError, match="attention_chunk"):  # the library names the argument
        cflash.flash_attn_func(q.numpy(), k.numpy(), v.numpy(), attention_chunk=-3)


def test_attention_chunk_varlen_torch(rng, poison):
    chunk = 6
    q, k, v, sink, dout, cq, ck, ref = _varlen_case(rng, chunk)
    lq, lk = VARLEN_LQ, VARLEN_LK
    got, g = _grads(lambda a, b, c, s: cflash.flash_attn_varlen_func(a, b, c, cq, ck, max(lq), max(lk), causal=True,
                                                                      learnable_sink=s, attention_chunk=chunk),
                    (q, k, v, sink), dout)
    rr, r = _grads(ref, [x.double() for x in (q, k, v, sink)], dout.double())
    nv, n = _grads(ref, (q, k, v, sink), dout)
    check_rule("out", got.numpy(), rr.numpy(), nv.numpy(), "float32")
    mag = grad_magnitude([x.numpy() for x in r[:3]])
    for name, a, b, c in zip(("dq", "dk", "dv", "dsink"), g, r, n):
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=mag, grad=True)
    # NumPy: the same call, the same numbers
    on = cflash.flash_attn_varlen_func(q.numpy(), k.numpy(), v.numpy(), cq.numpy(), ck.numpy(), max(lq), max(lk),
                                       causal=True, learnable_sink=sink.numpy(), attention_chunk=chunk)
    np.testing.assert_array_equal(on, got.numpy())


def test_sink_and_chunk_compiled_fullgraph(rng):
    """learnable_sink and attention_chunk are arguments of the custom ops: torch.compile traces the
    call and its backward in one graph, with eager's numbers."""
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    q, k, v, sink = _inputs(gen, 2, 24, 24, 4, 2, 16, 16)
    cq = torch.tensor([0, 10, 24], dtype=torch.int32)

    def f(a, b, c, s):
        x = cflash.flash_attn_func(a, b, c, causal=True, learnable_sink=s, attention_chunk=8)
        y = cflash.flash_attn_varlen_func(a[0], b[0], c[0], cq, cq, 14, 14, causal=True, learnable_sink=s,
                                          attention_chunk=5)
        return x.sum() + (y * y).sum()

    torch._dynamo.reset()
    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    ins = [x.clone().requires_grad_() for x in (q, k, v, sink)]
    ins_c = [x.clone().requires_grad_() for x in (q, k, v, sink)]
    f(*ins).backward()
    cf(*ins_c).backward()
    for a, b in zip(ins, ins_c):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)


# (mask kind, mask shape): boolean or additive, broadcast over B / H / Sq as SDPA allows
MASKS = [("bool", (2, 4, 33, 47)), ("bool", (33, 47)), ("float", (1, 4, 33, 47)), ("float", (2, 1, 1, 47))]


@pytest.mark.parametrize("kind,mshape", MASKS, ids=lambda x: str(x))
def test_sdpa_masked(kind, mshape, rng, poison):
    _sdpa_masked_case(kind, mshape, int(rng.integers(1 << 31)))


# Generator seeds at which dbias of the (2, 1, 1, 47) bias failed the rule (4 of 400) while the
# backward formed dS from the forward's lse and rowsum(dO O): a dbias element is a short sum of
# single dS values, and those two roundings put it up to 5.5x the naive's error. The backward now
# takes each row's own softmax statistics for dbias (attn_tiled_bwd.c, dbias_stats).
@pytest.mark.parametrize("seed", [27, 92, 270, 335])
def test_sdpa_masked_dbias_seeds(seed, poison):
    _sdpa_masked_case("float", (2, 1, 1, 47), seed)


# A full bias, where a dbias element is one dS = P (dP - sum P dP): at this seed the row sum of
# P dP (11.3, from terms up to 11.6) rounded in fp32 put one element at 5x the naive's error
# (3.9e-6 against a bound of 3.3e-6; the naive takes rowsum(dO O)). dbias_stats now sums in double
# (9.6e-7); 600 seeds of the four bias shapes pass.
def test_sdpa_masked_dbias_full_bias_seed(poison):
    _sdpa_masked_case("float", (2, 4, 33, 47), 34)


# transformers' additive masks: finfo.min (not -inf) above the diagonal and on padding keys, small
# values elsewhere (a row all at finfo.min: test_far_keys_hidden keeps its keys). Keys far
# below their row's largest value go to the library hidden by a boolean mask as well (its tiles
# skipped): the results must not change. "far": a key whose mask value is -300 but whose score is
# ~400 above the others' dominates its rows: what is hidden must depend on the scores' bound.
@pytest.mark.parametrize("kind", ["finfo", "far"])
def test_sdpa_masked_far_values(kind, rng, poison):
    _sdpa_masked_case(kind, (2, 1, 33, 47), int(rng.integers(1 << 31)))


def test_far_keys_hidden():
    from cflash._torch import _hide_far_keys
    mn = torch.finfo(torch.float32).min
    m = torch.full((1, 1, 6, 9), mn).triu(1)
    m[0, 0, 2] = mn  # a row all at finfo.min keeps every key
    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 9, 4)
    keep = _hide_far_keys(q, k, m, 0.5)[0]
    want = torch.ones(6, 9, dtype=torch.bool).tril()
    want[2] = True
    assert torch.equal(keep[0, 0], want)
    assert _hide_far_keys(q, k, torch.zeros(1, 1, 6, 9), 0.5)[0] is None  # nothing far: no mask
    m[0, 0, 4, 3] = float("nan")  # a NaN is kept (it must reach the output), its row too
    assert bool(_hide_far_keys(q, k, m, 0.5)[0][0, 0, 4].all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_far_keys_library_as_torch(dtype, rng):
    """The library's pass (cflash_attn_mask_far_keys, CPU masks) and the torch ops that serve masks
    on a GPU agree on keep and zero: random values, finfo.min and -inf entries, a row all
    finfo.min, a NaN, +inf, a strided view."""
    from cflash._torch import _far_keys_torch, _hide_far_keys
    mn = torch.finfo(dtype).min
    g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    m = (torch.rand(2, 3, 7, 45, generator=g) * 600 - 300).to(dtype)
    m[0, 0, 1] = mn
    m[0, 1, :, ::3] = mn
    m[1, 0, 2, 5] = float("-inf")
    m[1, 1, 3, 7] = float("nan")
    m[1, 2, 4, 0] = float("inf")
    q, k = torch.randn(1, 3, 7, 4), torch.randn(1, 3, 45, 4)
    for mask in (m, m[:, :, :, 5:], m.transpose(0, 1)):
        got = _hide_far_keys(q, k, mask, 0.5)
        qn, kn = (x.shape[-1] ** 0.5 * float(x.abs().max()) for x in (q, k))
        want = _far_keys_torch(mask, 2.0 * 0.5 * qn * kn + 200.0, torch.empty(mask.shape, dtype=torch.bool))
        assert got[1] == want[1]
        assert (got[0] is None) == (want[0] is None)
        if got[0] is not None:
            assert torch.equal(got[0], want[0])


def test_hide_far_keys_zero():
    """zero: the mask is 0 wherever the hiding keeps a key (transformers' masks), so the boolean
    mask alone says it all; not so with other values there, a row all at finfo.min, or a NaN."""
    from cflash._torch import _hide_far_keys
    mn = torch.finfo(torch.float32).min
    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 9, 4)
    m = torch.full((1, 1, 6, 9), mn).triu(1)
    m[..., 1:, 0] = mn  # (padding; row 0 keeps key 0)
    m[..., 5, :] = 0.0
    keep, zero = _hide_far_keys(q, k, m, 0.5)
    assert zero and torch.equal(keep, m == 0)
    assert _hide_far_keys(q, k, torch.zeros(1, 1, 6, 9), 0.5) == (None, True)
    for i, j, x in ((3, 0, 0.25), (1, 1, mn), (4, 3, float("nan"))):  # a value, a row of finfo.min, a NaN
        w = m.clone()
        w[..., i, :] = mn if x == mn else w[..., i, :]
        w[..., i, j if x != mn else 0] = x
        assert not _hide_far_keys(q, k, w, 0.5)[1], (i, j, x)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("Sq", [1, 8, 9])
def test_sdpa_masked_zero_bias_as_mask(Sq, grad, rng, poison):
    """An additive padding mask of 0 and finfo.min (transformers' masks) over more than
    _DECODE_SQ query rows goes to the library as a boolean mask alone (no bias to read; its hidden
    tiles skipped), unless the mask wants a gradient; over a decode step's rows as the bias it is
    (the KV-cache kernels add it: no pass over the keys for the hiding). Results as fp64 SDPA's."""
    import cflash._torch as ct
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    B, H, Hk, Sk, D = 3, 8, 2, 70, 32
    q = torch.randn(B, H, Sq, D, generator=gen)
    k, v = torch.randn(B, Hk, Sk, D, generator=gen), torch.randn(B, Hk, Sk, D, generator=gen)
    m = torch.zeros(B, 1, 1, Sk)
    m[1, ..., :13] = torch.finfo(torch.float32).min
    m[2, ..., :69] = torch.finfo(torch.float32).min
    m.requires_grad_(grad)
    seen = []
    real = ct._core.attn_fwd

    def spy(*a, **kw):
        seen.append((kw["attn_bias"] is None, kw["attn_mask"] is None))  # (no bias, no boolean mask)
        return real(*a, **kw)

    try:
        ct._core.attn_fwd = spy
        got = ct.sdpa_masked(q, k, v, m)
    finally:
        ct._core.attn_fwd = real
    assert seen == [(not grad, False) if Sq > ct._DECODE_SQ else (False, True)]
    rep = lambda x: x.double().repeat_interleave(H // Hk, 1)  # noqa: E731
    ref = F.scaled_dot_product_attention(q.double(), rep(k), rep(v), attn_mask=m.detach().double())
    nv = F.scaled_dot_product_attention(q, k.repeat_interleave(H // Hk, 1), v.repeat_interleave(H // Hk, 1),
                                        attn_mask=m.detach())
    err, bound = (got.detach().double() - ref).abs().max().item(), (nv.double() - ref).abs().max().item()
    assert err <= 2 * bound + 1e-6, (err, bound)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_masked_inference_skips_autograd(kind, rng):
    """Without a gradient to take (no_grad, or no input that wants one) sdpa_masked calls the
    library directly, no autograd Function; the same kernel as the autograd path."""
    import cflash._torch as ct
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    q = torch.randn(2, 8, 1, 32, generator=gen)
    k, v = torch.randn(2, 2, 40, 32, generator=gen), torch.randn(2, 2, 40, 32, generator=gen)
    m = torch.rand(2, 1, 1, 40, generator=gen) < 0.7
    m[..., 0] = True
    if kind == "float":
        m = torch.zeros(m.shape).masked_fill(~m, float("-inf")) + 0.1 * torch.randn(m.shape, generator=gen)
    calls = []
    real = ct.AttnExtra

    class Spy:
        @staticmethod
        def apply(*a):
            calls.append(1)
            return real.apply(*a)

    try:
        ct.AttnExtra = Spy
        plain = ct.sdpa_masked(q, k, v, m)
        with torch.no_grad():
            nograd = ct.sdpa_masked(q.requires_grad_(), k, v, m)
        assert calls == [] and plain.grad_fn is None
        graded = ct.sdpa_masked(q, k, v, m)
        assert calls == [1] and graded.grad_fn is not None
    finally:
        ct.AttnExtra = real
    assert torch.equal(plain, nograd) and torch.equal(plain, graded.detach())


@pytest.mark.parametrize("kind", ["bool", "-inf", "finfo"])
def test_sdpa_speculative_tree_step(kind, rng):
    """A speculative decoding step as a serving loop sends it through SDPA: bf16, GQA, 5 draft rows
    whose mask keeps the keys before the draft (one sequence left-padded) and, of the draft, each
    row's own key and its ancestors' (random parents), as a boolean or an additive mask (0 and
    -inf, or transformers' 0 and finfo.min). The library's decode rows take the blocks every row
    sees whole as without a mask and the draft's block with it; results as fp64 SDPA's."""
    from cflash._torch import sdpa_masked
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    B, H, Hk, Sq, Sk, D = 2, 8, 2, 5, 300, 64
    q, k, v = (torch.randn(B, h, s, D, generator=gen).bfloat16() for h, s in ((H, Sq), (Hk, Sk), (Hk, Sk)))
    keep = torch.zeros(B, 1, Sq, Sk, dtype=torch.bool)
    keep[..., :Sk - Sq] = True
    keep[1, ..., :20] = False  # left padding
    parent = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, Sq)]
    for i in range(Sq):
        a = i
        while a >= 0:
            keep[..., i, Sk - Sq + a] = True
            a = parent[a]
    if kind == "bool":
        m = keep
    else:
        hide = float("-inf") if kind == "-inf" else torch.finfo(torch.bfloat16).min
        m = torch.zeros(keep.shape, dtype=torch.bfloat16).masked_fill(~keep, hide)
    with torch.no_grad():
        got = sdpa_masked(q, k, v, m)  # (the library's call: no fallback to PyTorch)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                             attn_mask=m if kind == "bool" else m.double(), enable_gqa=True)
        nv = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
    check_rule("out", got.float().numpy(), ref.numpy(), nv.float().numpy(), "bfloat16")


def _sdpa_masked_case(kind, mshape, seed):
    from cflash._torch import sdpa_masked
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(seed)
    B, H, Hk, Sq, Sk, D = 2, 4, 4, 33, 47, 32
    q = torch.randn(B, H, Sq, D, generator=gen)
    k = torch.randn(B, Hk, Sk, D, generator=gen)
    v = torch.randn(B, Hk, Sk, D, generator=gen)
    dout = torch.randn(B, H, Sq, D, generator=gen)
    if kind == "bool":
        m = torch.rand(mshape, generator=gen) < 0.4
        m[..., 0] = True  # every row sees a key (PyTorch gives NaN for a row that sees none)
        ins = (q, k, v)
        got, g = _grads(lambda a, b, c: sdpa_masked(a, b, c, m), ins, dout)
        ref, r = _grads(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=m),
                        [x.double() for x in ins], dout.double())
        nv, n = _grads(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=m), ins, dout)
        names = ("dq", "dk", "dv")
    else:
        m = torch.randn(mshape, generator=gen)
        m[..., 5] = float("-inf")  # a masked key through the bias
        if kind == "finfo":
            mn = torch.finfo(torch.float32).min
            m = (m * 0.1).masked_fill(torch.ones(Sq, Sk, dtype=torch.bool).triu(Sk - Sq + 1), mn)
            m[..., Sk - 4:] = mn  # padding keys
            m[..., 7, :] = mn  # a left-padded row: every key at finfo.min (lse rounds to it)
        if kind == "far":  # key 10: bias -300 but a score ~400 above the others': it dominates
            u = torch.randn(D, generator=gen)
            u = u / u.norm()
            q = 20 * u + 0.1 * q
            k[:, :, 10] = 120 * u
            m = torch.zeros(mshape)
            m[..., 10] = -300.0
        ins = (q, k, v, m)
        got, g = _grads(lambda a, b, c, x: sdpa_masked(a, b, c, x), ins, dout)
        ref, r = _grads(lambda a, b, c, x: F.scaled_dot_product_attention(a, b, c, attn_mask=x),
                        [x.double() for x in ins], dout.double())
        nv, n = _grads(lambda a, b, c, x: F.scaled_dot_product_attention(a, b, c, attn_mask=x), ins, dout)
        names = ("dq", "dk", "dv", "dbias")
    check_rule("out", got.numpy(), ref.numpy(), nv.numpy(), "float32")
    if kind == "far":  # (one-hot rows: the naive's gradients are exact zeros, ours ~1e-5)
        return
    mag = grad_magnitude([x.numpy() for x in r[:3]])
    for name, a, b, c in zip(names, g, r, n):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=mag, grad=True)
