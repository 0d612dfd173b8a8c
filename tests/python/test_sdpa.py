"""cflash.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention
(PyTorch's function in fp64 as the reference, in the inputs' dtype as the naive computation of the
error rule), forward and gradients: (B, H, S, D) layout, top-left causal with Sq < Sk, Sq == Sk and
Sq > Sk, enable_gqa, scale, 3-dim inputs, dropout (against the library's mask); the calls it
boolean and additive attn_mask on libcflash (issue 13's mask and bias), with gradients; the calls
it leaves to PyTorch (other dtypes, shapes PyTorch rejects) and what explain says;
patch_sdpa / unpatch_sdpa."""

import numpy as np
import pytest

from conftest import check_rule, grad_magnitude, grads, require

torch = require("torch", "PyTorch is not installed: the SDPA tests need it")
F = torch.nn.functional

import cflash  # noqa: E402
from cflash import _core, reference as R  # noqa: E402

TN = lambda t: t.detach().double().numpy()  # noqa: E731
SDPA = F.scaled_dot_product_attention  # PyTorch's own, taken before any test patches it


CASES = [  # (B, H, Hk, Sq, Sk, D, Dv, causal, scale)
    (2, 4, 4, 17, 17, 32, 32, True, None),
    (1, 6, 2, 9, 23, 64, 64, True, None),  # Sq < Sk: top-left, keys past Sq unseen
    (2, 4, 1, 23, 9, 16, 24, True, 0.3),  # Sq > Sk: the window
    (1, 2, 2, 1, 33, 128, 128, True, None),  # decode shape, top-left causal: only key 0
    (1, 8, 2, 1, 33, 64, 64, False, None),
    (2, 3, 3, 13, 5, 40, 40, False, 0.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B%d-H%d-Hk%d-Sq%d-Sk%d-D%d-Dv%d-c%d-s%s" % c)
def test_against_torch_sdpa_with_gradients(dtype, case):
    B, H, Hk, Sq, Sk, D, Dv, causal, scale = case
    g = torch.Generator().manual_seed(Sq * 100 + Sk)
    q = torch.randn(B, H, Sq, D, generator=g).to(dtype)
    k = torch.randn(B, Hk, Sk, D, generator=g).to(dtype)
    v = torch.randn(B, Hk, Sk, Dv, generator=g).to(dtype)
    dout = torch.randn(B, H, Sq, Dv, generator=g).to(dtype)
    kw = dict(is_causal=causal, scale=scale, enable_gqa=H != Hk)

    out, gr = grads(lambda a, b, c: cflash.scaled_dot_product_attention(a, b, c, **kw), (q, k, v), dout)
    ref, gref = grads(lambda a, b, c: SDPA(a, b, c, **kw), [x.double() for x in (q, k, v)], dout.double())
    naive, gnaive = grads(lambda a, b, c: SDPA(a, b, c, **kw), (q, k, v), dout)
    assert out.shape == (B, H, Sq, Dv) and out.dtype == dtype
    check_rule("out", TN(out), TN(ref), TN(naive), str(dtype)[6:])
    mag = grad_magnitude([TN(x) for x in gref])
    for name, a, r, n in zip(("dq", "dk", "dv"), gr, gref, gnaive):
        assert a.shape == r.shape and a.dtype == dtype
        check_rule(name, TN(a), TN(r), TN(n), str(dtype)[6:], factor=3.0, magnitude=mag, grad=True)
    text = cflash.explain(cflash.scaled_dot_product_attention, q, k, v, **kw)
    assert "-> libcflash" in text, text


def test_three_dim_inputs_and_non_contiguous_views():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 11, 16, generator=g) for _ in range(3))
    assert torch.allclose(cflash.scaled_dot_product_attention(q, k, v, is_causal=True), SDPA(q, k, v, is_causal=True),
                          atol=1e-5)
    base = torch.randn(2, 7, 3, 4, 16, generator=g)  # (B, S, 3, H, D): q, k, v as strided views
    q, k, v = (base[:, :, i].transpose(1, 2) for i in range(3))
    assert torch.allclose(cflash.scaled_dot_product_attention(q, k, v), SDPA(q, k, v), atol=1e-5)


def test_dropout_uses_the_library_mask_seeded_by_torch():
    from cflash import _torch as T

    g = torch.Generator().manual_seed(2)
    B, H, Sq, Sk, D, p = 2, 3, 6, 10, 16, 0.3
    q, k, v = (torch.randn(B, H, s, D, generator=g) for s in (Sq, Sk, Sk))
    torch.manual_seed(5)
    out = cflash.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    torch.manual_seed(5)
    assert torch.equal(out, cflash.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True))
    torch.manual_seed(5)
    seed = T.new_seed()  # what the op draws from torch's generator
    keep = _core.dropout_mask(B, H, Sq, Sq, p, seed)  # Sq < Sk: keys cut to the first Sq
    ql, kl, vl = (x.transpose(1, 2)[:, :Sq] if x is not q else x.transpose(1, 2) for x in (q, k, v))
    ro, _, _ = R.attention(ql, kl, vl, causal=True, dropout_p=p, dropout_mask=keep)
    assert np.abs(out.transpose(1, 2).numpy() - ro).max() < 1e-5


MASKS = [  # (B, H, Hk, Sq, Sk, D, mask shape, boolean, enable_gqa)
    (2, 4, 4, 17, 23, 32, (2, 4, 17, 23), True, False),
    (2, 4, 2, 9, 33, 16, (2, 1, 9, 33), False, True),  # broadcast over heads, GQA
    (1, 3, 3, 12, 12, 64, (12, 12), True, False),  # 2-dim mask, with fully masked rows
    (3, 2, 1, 5, 130, 24, (1, 2, 1, 130), False, True),  # broadcast over batch and query rows
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", MASKS, ids=lambda c: "B%d-H%d-Hk%d-Sq%d-Sk%d-D%d-%s-b%d-g%d" % c)
def test_masks_on_cflash_with_gradients(dtype, case):
    B, H, Hk, Sq, Sk, D, mshape, boolean, gqa = case
    g = torch.Generator().manual_seed(Sq * 7 + Sk)
    q = torch.randn(B, H, Sq, D, generator=g).to(dtype)
    k = torch.randn(B, Hk, Sk, D, generator=g).to(dtype)
    v = torch.randn(B, Hk, Sk, D, generator=g).to(dtype)
    dout = torch.randn(B, H, Sq, D, generator=g).to(dtype)
    if boolean:
        mask = torch.rand(mshape, generator=g) > 0.4
        if len(mshape) == 2:
            mask[3] = False  # a row that sees no key: 0, as PyTorch gives
    else:
        mask = torch.randn(mshape, generator=g).to(dtype)
        mask[..., :2] = -float("inf")
    kw = dict(attn_mask=mask, enable_gqa=gqa)
    text = cflash.explain(cflash.scaled_dot_product_attention, q, k, v, **kw)
    assert "-> libcflash: _torch.sdpa_masked" in text and "attn_fwd" in text, text
    out, gr = grads(lambda a, b, c: cflash.scaled_dot_product_attention(a, b, c, **kw), (q, k, v), dout)
    dkw = dict(kw, attn_mask=mask if boolean else mask.double())
    ref, gref = grads(lambda a, b, c: SDPA(a, b, c, **dkw), [x.double() for x in (q, k, v)], dout.double())
    naive, gnaive = grads(lambda a, b, c: SDPA(a, b, c, **kw), (q, k, v), dout)
    assert out.shape == (B, H, Sq, D) and out.dtype == dtype
    check_rule("out", TN(out), TN(ref), TN(naive), str(dtype)[6:])
    mag = grad_magnitude([TN(x) for x in gref])
    for name, a, r, n in zip(("dq", "dk", "dv"), gr, gref, gnaive):
        check_rule(name, TN(a), TN(r), TN(n), str(dtype)[6:], factor=3.0, magnitude=mag, grad=True)
    if not boolean:  # the additive mask is differentiable, as in PyTorch
        m = mask.detach().clone().requires_grad_(True)
        cflash.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa).backward(dout)
        md = mask.double().requires_grad_(True)
        SDPA(q.double(), k.double(), v.double(), attn_mask=md, enable_gqa=gqa).backward(dout.double())
        mn = mask.detach().clone().requires_grad_(True)
        SDPA(q, k, v, attn_mask=mn, enable_gqa=gqa).backward(dout)
        check_rule("dmask", TN(m.grad), TN(md.grad), TN(mn.grad), str(dtype)[6:], factor=3.0,
                   magnitude=grad_magnitude([TN(md.grad)]), grad=True)
    # 3-dim inputs (N, L, E) with a (N, L, S) mask
    q3, k3, v3, m3 = q[:, 0], k[:, 0], v[:, 0], (mask if mask.dim() == 2 else mask.expand(B, H, Sq, Sk)[:, 0])
    assert torch.allclose(cflash.scaled_dot_product_attention(q3, k3, v3, attn_mask=m3).float(),
                          SDPA(q3, k3, v3, attn_mask=m3).float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-5)


def test_calls_left_to_pytorch():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(5, 5, generator=g) > 0.3
    imask = torch.randint(0, 2, (5, 5), generator=g)
    with pytest.raises(RuntimeError) as theirs:
        SDPA(q, k, v, attn_mask=imask)
    with pytest.raises(RuntimeError) as ours:
        cflash.scaled_dot_product_attention(q, k, v, attn_mask=imask)
    assert str(ours.value) == str(theirs.value)
    assert "-> PyTorch: attn_mask: dtype torch.int64" in cflash.explain(cflash.scaled_dot_product_attention, q, k, v,
                                                                         attn_mask=imask)
    qd, kd, vd = q.double(), k.double(), v.double()
    assert torch.equal(cflash.scaled_dot_product_attention(qd, kd, vd), SDPA(qd, kd, vd))
    assert "dtypes" in cflash.explain(cflash.scaled_dot_product_attention, qd, kd, vd)
    q5 = torch.randn(1, 2, 2, 5, 8, generator=g)
    assert torch.allclose(cflash.scaled_dot_product_attention(q5, q5, q5), SDPA(q5, q5, q5), atol=1e-6)
    # a head dim of 1 broadcasts in PyTorch: left to it
    assert torch.allclose(cflash.scaled_dot_product_attention(q, k[:, :1], v[:, :1]), SDPA(q, k[:, :1], v[:, :1]),
                          atol=1e-6)
    # what PyTorch rejects, it rejects with its own error
    k3 = torch.randn(1, 3, 5, 8, generator=g)
    for args, kw in (((q, k[..., :4], v), {}), ((q, k3, k3), {}), ((q, k, v), dict(attn_mask=mask, is_causal=True))):
        with pytest.raises(RuntimeError) as theirs:
            SDPA(*args, **kw)
        with pytest.raises(RuntimeError) as ours:
            cflash.scaled_dot_product_attention(*args, **kw)
        assert str(ours.value) == str(theirs.value)


def test_patch_and_unpatch():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 7, 16, generator=g) for _ in range(3))
    try:
        cflash.patch_sdpa()
        cflash.patch_sdpa()  # idempotent
        assert F.scaled_dot_product_attention is not SDPA
        text = cflash.explain(F.scaled_dot_product_attention, q, k, v, is_causal=True)
        assert "-> libcflash" in text and "attn_fwd" in text
        assert torch.allclose(F.scaled_dot_product_attention(q, k, v, is_causal=True), SDPA(q, k, v, is_causal=True),
                              atol=1e-5)
        m = torch.ones(7, 7, dtype=torch.bool).tril()
        assert torch.allclose(F.scaled_dot_product_attention(q, k, v, attn_mask=m), SDPA(q, k, v, attn_mask=m),
                              atol=1e-6)
    finally:
        cflash.unpatch_sdpa()
    assert F.scaled_dot_product_attention is SDPA


def test_patched_sdpa_under_torch_compile():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 6, 16, generator=g, requires_grad=True) for _ in range(3))
    try:
        cflash.patch_sdpa()
        torch._dynamo.reset()
        f = torch.compile(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                          backend="aot_eager", fullgraph=True)
        out = f(q, k, v)
        out.sum().backward()
    finally:
        cflash.unpatch_sdpa()
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    ref = SDPA(q2, k2, v2, is_causal=True)
    ref.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for a, b in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        assert torch.allclose(a, b, atol=1e-5)
