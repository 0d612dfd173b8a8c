"""Issue 13 through the Python package: learnable_sink (FA4's name) in flash_attn_func and
flash_attn_varlen_func, on NumPy and with torch autograd (dq, dk, dv, dsink), and the SDPA mask
route cflash._torch.sdpa_masked (boolean and additive masks, the bias gradient), against a float64
torch reference under DESIGN.md's rule (naive: the same formula in float32)."""

import numpy as np
import pytest

import cflash
from cflash import _core
from conftest import check_rule, grad_magnitude

torch = pytest.importorskip("torch")


def ref_attn(q, k, v, scale, causal=False, sink=None, bias=None, mask=None):
    """q (B, Sq, H, D), k / v (B, Sk, Hk, D[v]) in any float dtype: out (B, Sq, H, Dv), lse (B, H,
    Sq) over the visible scores and the sink."""
    B, Sq, H, _ = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    kk, vv = k.repeat_interleave(H // Hk, dim=2), v.repeat_interleave(H // Hk, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, kk) * scale
    if bias is not None:
        s = s + bias.to(s.dtype)
    ok = torch.ones(Sq, Sk, dtype=torch.bool)
    if causal:
        ok = ok.tril(Sk - Sq)
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
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=m)


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


def test_learnable_sink_varlen_torch(rng, poison):
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    H, Hk, D = 4, 2, 32
    lq, lk = [5, 31, 1], [17, 31, 40]
    cq = torch.tensor([0] + list(np.cumsum(lq)), dtype=torch.int32)
    ck = torch.tensor([0] + list(np.cumsum(lk)), dtype=torch.int32)
    q = torch.randn(sum(lq), H, D, generator=gen)
    k = torch.randn(sum(lk), Hk, D, generator=gen)
    v = torch.randn(sum(lk), Hk, D, generator=gen)
    sink = torch.randn(H, generator=gen)
    dout = torch.randn(sum(lq), H, D, generator=gen)
    scale = D ** -0.5

    def ref(a, b, c, s):
        outs = []
        for i in range(len(lq)):
            qs, ks = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
            outs.append(ref_attn(a[None, qs], b[None, ks], c[None, ks], scale, True, s)[0][0])
        return torch.cat(outs)

    got, g = _grads(lambda a, b, c, s: cflash.flash_attn_varlen_func(a, b, c, cq, ck, max(lq), max(lk), causal=True,
                                                                      learnable_sink=s), (q, k, v, sink), dout)
    rr, r = _grads(ref, [x.double() for x in (q, k, v, sink)], dout.double())
    nv, n = _grads(ref, (q, k, v, sink), dout)
    check_rule("out", got.numpy(), rr.numpy(), nv.numpy(), "float32")
    mag = grad_magnitude([x.numpy() for x in r[:3]])
    for name, a, b, c in zip(("dq", "dk", "dv"), g, r, n):
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=mag)
    scales = []
    for i in range(len(lq)):  # dsink's terms, sequence by sequence
        qs, ks = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
        o, lse = ref_attn(q[None, qs].double(), k[None, ks].double(), v[None, ks].double(), scale, True, sink.double())
        scales.append(_dsink_scale(o, lse, sink, dout[None, qs]))
    check_rule("dsink", g[3].numpy(), r[3].numpy(), n[3].numpy(), "float32", factor=3.0, magnitude=sum(scales))


def test_learnable_sink_refusals():
    q = np.zeros((1, 4, 2, 8), "float32")
    with pytest.raises(ValueError, match="return_attn_probs: not supported with learnable_sink"):
        cflash.flash_attn_func(q, q, q, learnable_sink=np.zeros(2, np.float32), return_attn_probs=True)
    with pytest.raises(Exception, match="sinks"):  # wrong length: the library names the argument
        cflash.flash_attn_func(q, q, q, learnable_sink=np.zeros(3, np.float32))


# (mask kind, mask shape): boolean or additive, broadcast over B / H / Sq as SDPA allows
MASKS = [("bool", (2, 4, 33, 47)), ("bool", (33, 47)), ("float", (1, 4, 33, 47)), ("float", (2, 1, 1, 47))]


@pytest.mark.parametrize("kind,mshape", MASKS, ids=lambda x: str(x))
def test_sdpa_masked(kind, mshape, rng, poison):
    from cflash._torch import sdpa_masked
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
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
        ins = (q, k, v, m)
        got, g = _grads(lambda a, b, c, x: sdpa_masked(a, b, c, x), ins, dout)
        ref, r = _grads(lambda a, b, c, x: F.scaled_dot_product_attention(a, b, c, attn_mask=x),
                        [x.double() for x in ins], dout.double())
        nv, n = _grads(lambda a, b, c, x: F.scaled_dot_product_attention(a, b, c, attn_mask=x), ins, dout)
        names = ("dq", "dk", "dv", "dbias")
    check_rule("out", got.numpy(), ref.numpy(), nv.numpy(), "float32")
    mag = grad_magnitude([x.numpy() for x in r[:3]])
    for name, a, b, c in zip(names, g, r, n):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        check_rule(name, a.numpy(), b.numpy(), c.numpy(), "float32", factor=3.0, magnitude=mag)
