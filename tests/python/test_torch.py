"""The package with PyTorch tensors: forward and gradients against
torch.nn.functional.scaled_dot_product_attention (fp64 as the reference, the same dtype as the
naive computation of the error rule), custom-op registration (torch.library.opcheck),
torch.compile tracing, in-place rotary under autograd, the modules, and CUDA tensors where a GPU
is present. Skipped, saying so, when torch is not installed."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import require

torch = require("torch", "PyTorch is not installed: the torch tests need it")
F = torch.nn.functional

import cflash  # noqa: E402
from cflash import reference as R  # noqa: E402
from cflash.layers.rotary import RotaryEmbedding, apply_rotary_emb, apply_rotary_emb_qkv_  # noqa: E402
from cflash.ops import RMSNorm, layer_norm_fn, rms_norm_fn  # noqa: E402
from conftest import check_rule, grad_magnitude, grads  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def sdpa(q, k, v, causal=False, window=(-1, -1), alibi=None, scale=None):
    """flash-attn semantics through SDPA: (B, S, H, D) layout, GQA by repeating K/V heads, causal and
    window masks aligned bottom-right, ALiBi as an additive bias."""
    H, Hk = q.shape[2], k.shape[2]
    k = k.repeat_interleave(H // Hk, dim=2)
    v = v.repeat_interleave(H // Hk, dim=2)
    Sq, Sk = q.shape[1], k.shape[1]
    ok = torch.from_numpy(R.visible(Sq, Sk, causal, window))
    mask = torch.zeros(Sq, Sk, dtype=q.dtype).masked_fill(~ok, float("-inf"))
    if alibi is not None:
        dist = (torch.arange(Sq)[:, None] + Sk - Sq - torch.arange(Sk)[None, :]).abs().to(q.dtype)
        mask = mask - alibi.to(q.dtype).reshape(-1, H, 1, 1) * dist
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       scale=scale)
    return o.transpose(1, 2)


CASES = [  # (B, Sq, Sk, H, Hk, D, causal, window, alibi)
    (2, 17, 17, 4, 4, 32, True, (-1, -1), False),
    (1, 9, 23, 6, 2, 64, True, (-1, -1), False),
    (2, 23, 9, 4, 1, 16, False, (4, 2), True),
    (1, 1, 33, 2, 2, 128, False, (-1, -1), False),
    (1, 31, 31, 2, 1, 40, True, (8, 0), True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B%d-Sq%d-Sk%d-H%d-Hk%d-D%d-c%d-w%s-a%d" % (
    c[0], c[1], c[2], c[3], c[4], c[5], c[6], "%d_%d" % c[7], c[8]))
def test_against_sdpa_with_gradients(dtype, case):
    B, Sq, Sk, H, Hk, D, causal, window, alibi = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    q = torch.randn(B, Sq, H, D, generator=g).to(dtype)
    k = torch.randn(B, Sk, Hk, D, generator=g).to(dtype)
    v = torch.randn(B, Sk, Hk, D, generator=g).to(dtype)
    dout = torch.randn(B, Sq, H, D, generator=g).to(dtype)
    slopes = torch.rand(H, generator=g) * 0.5 + 0.1 if alibi else None

    def mine(q, k, v):
        return cflash.flash_attn_func(q, k, v, causal=causal, window_size=window, alibi_slopes=slopes)

    def theirs(q, k, v):
        return sdpa(q, k, v, causal, window, slopes)

    out, gr = grads(mine, (q, k, v), dout)
    ref, gref = grads(theirs, [x.double() for x in (q, k, v)], dout.double())
    naive, gnaive = grads(theirs, (q, k, v), dout)
    assert out.dtype == dtype and out.shape == (B, Sq, H, D)
    tn = lambda t: t.double().numpy()  # noqa: E731
    check_rule("out", tn(out), tn(ref), tn(naive), dtype)
    for name, a, r, n in zip(("dq", "dk", "dv"), gr, gref, gnaive):
        assert a.dtype == dtype and a.shape == r.shape
        check_rule(name, tn(a), tn(r), tn(n), dtype, factor=3.0, magnitude=grad_magnitude([tn(g) for g in gref]),
                   grad=True)


def test_lse_softcap_dropout_against_reference():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 12, 4, 16) for _ in range(3))
    out, lse, probs = cflash.flash_attn_func(q, k, v, softcap=3.0, causal=True, return_attn_probs=True)
    ro, rl, rp = R.attention(q, k, v, softcap=3.0, causal=True)
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 12) and probs.shape == (0,)
    assert np.abs(out.numpy() - ro).max() < 1e-5 and np.abs(lse.numpy() - rl).max() < 1e-5
    torch.manual_seed(7)
    o1, _, p1 = cflash.flash_attn_func(q, k, v, dropout_p=0.25, return_attn_probs=True)
    torch.manual_seed(7)
    o2 = cflash.flash_attn_func(q, k, v, dropout_p=0.25)
    assert torch.equal(o1, o2), "torch.manual_seed must make dropout repeatable"
    keep = (p1[:, :, :12, :12] >= 0).double().numpy()
    assert 0.6 < keep.mean() < 0.9
    ro, _, _ = R.attention(q, k, v, dropout_p=0.25, dropout_mask=keep)
    assert np.abs(o1.numpy() - ro).max() < 1e-5


def test_varlen_gradients_against_sdpa():
    torch.manual_seed(2)
    lens = [3, 8, 1]
    cu = torch.tensor([0, 3, 11, 12], dtype=torch.int32)
    q, k, v = (torch.randn(12, 4, 16, requires_grad=True) for _ in range(3))
    out = cflash.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=True)
    dout = torch.randn_like(out)
    out.backward(dout)
    for b in range(3):
        s = slice(int(cu[b]), int(cu[b + 1]))
        qs, ks, vs = (x.detach()[s][None].clone().requires_grad_(True) for x in (q, k, v))
        r = sdpa(qs, ks, vs, causal=True)
        r.backward(dout[s][None])
        assert torch.allclose(out[s], r[0], atol=1e-5)
        for a, bgrad in zip((q.grad[s], k.grad[s], v.grad[s]), (qs.grad[0], ks.grad[0], vs.grad[0])):
            assert torch.allclose(a, bgrad, atol=1e-5)


def test_packed_gradients_flow():
    torch.manual_seed(3)
    qkv = torch.randn(2, 7, 3, 2, 8, requires_grad=True)
    out = cflash.flash_attn_qkvpacked_func(qkv, causal=True)
    out.sum().backward()
    q, k, v = (qkv.detach()[:, :, i].clone().requires_grad_(True) for i in range(3))
    sdpa(q, k, v, causal=True).sum().backward()
    assert torch.allclose(qkv.grad, torch.stack([q.grad, k.grad, v.grad], dim=2), atol=1e-5)


def test_non_contiguous_last_dim_and_strided_inputs():
    torch.manual_seed(4)
    base = torch.randn(2, 4, 9, 32)  # (B, H, S, 2D)
    q = base[..., ::2].transpose(1, 2)  # last dim stride 2: copied, as flash-attn does
    k = base[..., :16].transpose(1, 2)  # strided, contiguous last dim: used in place
    out = cflash.flash_attn_func(q, k, k)
    assert torch.allclose(out, sdpa(q.contiguous(), k.contiguous(), k.contiguous()), atol=1e-5)


def test_rotary_inplace_autograd_and_module():
    torch.manual_seed(5)
    w = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(2, 5, 16)
    cos, sin = torch.randn(8, 4), torch.randn(8, 4)
    # in place on an intermediate view, as RotaryEmbedding does on the output of a projection
    y = (x @ w).view(2, 5, 2, 8)
    apply_rotary_emb(y, cos, sin, inplace=True, seqlen_offsets=1)
    y.square().sum().backward()
    g_inplace = w.grad.clone()
    w.grad = None
    y2 = apply_rotary_emb((x @ w).view(2, 5, 2, 8), cos, sin, seqlen_offsets=1)
    y2.square().sum().backward()
    assert torch.allclose(y, y2) and torch.allclose(g_inplace, w.grad, atol=1e-5)
    # RotaryEmbedding on packed qkv equals the reference rotation of q and k
    re = RotaryEmbedding(8, interleaved=True)
    qkv = torch.randn(2, 5, 3, 2, 8)
    orig = qkv.clone()
    re(qkv, seqlen_offset=2)
    inv = 1.0 / (10000.0 ** (np.arange(0, 8, 2) / 8.0))
    ang = np.outer(np.arange(7), inv)
    for i in (0, 1):
        r = R.rotary(orig[:, :, i], np.cos(ang), np.sin(ang), True, 2)
        assert np.abs(qkv[:, :, i].numpy() - r).max() < 1e-5
    assert torch.equal(qkv[:, :, 2], orig[:, :, 2])
    # GQA layout with num_heads_q; XPos tables
    re = RotaryEmbedding(8, scale_base=512)
    g = torch.randn(1, 4, 4 + 2 * 2, 8, requires_grad=True)
    out = apply_rotary_emb_qkv_(g.clone(), torch.randn(4, 4), torch.randn(4, 4), num_heads_q=4)
    out.sum().backward()
    assert g.grad.shape == g.shape
    q = torch.randn(1, 4, 2, 8)
    kv = torch.randn(1, 4, 2, 2, 8)
    q2, kv2 = re(q.clone(), kv.clone())
    assert q2.shape == q.shape and kv2.shape == kv.shape and torch.equal(kv2[:, :, 1], kv[:, :, 1])


def test_norm_modules_and_gradients():
    torch.manual_seed(6)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 7, 64, dtype=dtype, requires_grad=True)
        r = torch.randn(3, 7, 64, dtype=dtype, requires_grad=True)
        m = RMSNorm(64, eps=1e-5, dtype=dtype)
        with torch.no_grad():
            m.weight.normal_()
        y, h = m(x, residual=r, prenorm=True, residual_in_fp32=True)
        assert y.dtype == dtype and h.dtype == dtype  # the residual's dtype wins, as flash-attn
        (y.float().square().sum() + h.float().sum()).backward()
        xr, rr, wr = (t.detach().float().clone().requires_grad_(True) for t in (x, r, m.weight))
        hr = xr + rr
        yr = hr * torch.rsqrt(hr.square().mean(-1, keepdim=True) + 1e-5) * wr
        (yr.square().sum() + hr.sum()).backward()
        tol = 1e-4 if dtype == torch.float32 else 0.1
        assert torch.allclose(x.grad.float(), xr.grad, atol=tol, rtol=tol)
        assert torch.allclose(r.grad.float(), rr.grad, atol=tol, rtol=tol)
        assert torch.allclose(m.weight.grad.float(), wr.grad, atol=tol * 10, rtol=tol)
    x = torch.randn(4, 32, requires_grad=True)
    w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    y = layer_norm_fn(x, w, b, eps=1e-5)
    y.square().sum().backward()
    xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    F.layer_norm(xr, (32,), wr, br, 1e-5).square().sum().backward()
    for a, bb in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        assert torch.allclose(a, bb, atol=1e-4, rtol=1e-4)


def test_kvcache_with_torch():
    torch.manual_seed(8)
    kc, vc = torch.randn(2, 16, 2, 8), torch.randn(2, 16, 2, 8)
    q, kn, vn = torch.randn(2, 1, 4, 8), torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8)
    lens = torch.tensor([5, 9], dtype=torch.int32)
    out, lse = cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True,
                                              return_softmax_lse=True)
    for b in range(2):
        L = int(lens[b])
        assert torch.equal(kc[b, L], kn[b, 0])
        r = sdpa(q[b:b + 1], kc[b:b + 1, :L + 1], vc[b:b + 1, :L + 1], causal=True)
        assert torch.allclose(out[b:b + 1], r, atol=1e-5)
    assert lse.shape == (2, 4, 1)


def test_opcheck_custom_ops():
    import cflash._torch  # noqa: F401 (registers torch.ops.cflash.*; other tests may not have yet)

    torch.manual_seed(9)
    q, k, v = (torch.randn(1, 5, 2, 8, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.cflash.attn_fwd.default,
                          (q, k, v, None, 0.0, 0.35, True, -1, -1, 0.0, False, 0))
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    qv = torch.randn(5, 2, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.cflash.attn_varlen_fwd.default,
                          (qv, qv, qv, cu, cu, 3, 3, None, 0.0, 0.35, False, -1, -1, 0.0, False, 0))
    x = torch.randn(1, 5, 2, 8, requires_grad=True)
    cos, sin = torch.randn(5, 4), torch.randn(5, 4)
    torch.library.opcheck(torch.ops.cflash.rotary.default, (x, cos, sin, None, 0, None, 0, False, False))
    w = torch.randn(8, requires_grad=True)
    torch.library.opcheck(torch.ops.cflash.norm_fwd.default, (x, w, None, None, 1e-5, 0.0, 0, True, False))
    # issue 13's arguments: sinks (differentiable) and attention_chunk, paged varlen K/V, int8 caches
    sink = torch.randn(2, requires_grad=True)
    torch.library.opcheck(torch.ops.cflash.attn_fwd.default,
                          (q, k, v, None, 0.0, 0.35, True, -1, -1, 0.0, False, 0, sink, 2))
    pages = torch.randn(5, 2, 2, 8, requires_grad=True)
    table = torch.tensor([[1, 0, 3], [2, 4, 0]], dtype=torch.int32)  # (row 1 uses 2 pages)
    torch.library.opcheck(torch.ops.cflash.attn_varlen_fwd.default,
                          (qv, pages, pages, cu, torch.tensor([0, 5, 9], dtype=torch.int32), 3, 5, None, 0.0, 0.35,
                           True, -1, -1, 0.0, False, 0, table, None, None, sink, 3))
    kc = torch.randint(-127, 128, (2, 6, 1, 8), dtype=torch.int8)
    ks = torch.rand(2, 6, 1) * 0.05
    qk, kn = torch.randn(2, 1, 2, 8), torch.randn(2, 1, 1, 8)
    lens = torch.tensor([2, 4], dtype=torch.int32)
    torch.library.opcheck(torch.ops.cflash.attn_kvcache.default,
                          (qk, kc, kc.clone(), kn, kn, None, None, lens, -1, None, None, None, None, 0.35, True, -1,
                           -1, 0.0, True, 0, None, 0, None, 3, None, None, ks, ks.clone(), None, 0))


def test_torch_compile_traces_fullgraph():
    torch.manual_seed(10)
    q, k, v = (torch.randn(2, 6, 4, 16, requires_grad=True) for _ in range(3))
    w = torch.randn(16, requires_grad=True)
    cos, sin = torch.randn(6, 8), torch.randn(6, 8)

    def f(q, k, v, w):
        q = apply_rotary_emb(q, cos, sin)
        o = cflash.flash_attn_func(q, k, v, causal=True)
        return rms_norm_fn(o, w, None, eps=1e-5)

    ref = f(q, k, v, w)
    ref.sum().backward()
    g_ref = [t.grad.clone() for t in (q, k, v, w)]
    for t in (q, k, v, w):
        t.grad = None
    torch._dynamo.reset()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, w)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    for a, b in zip((q.grad, k.grad, v.grad, w.grad), g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_numpy_use_does_not_import_torch():
    code = ("import sys, numpy as np, cflash\n"
            "q = np.ones((1, 2, 1, 4), np.float32)\n"
            "cflash.flash_attn_func(q, q, q)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env_with_package())
    assert r.returncode == 0, r.stderr


def _env_with_package():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(cflash.__file__)) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---- CUDA (only where a GPU is present) ----

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu_on_the_current_stream(dtype):
    torch.manual_seed(11)
    q, k, v = (torch.randn(2, 33, 4, 64, dtype=dtype) for _ in range(3))
    dout = torch.randn(2, 33, 4, 64, dtype=dtype)
    cpu_out, cpu_g = grads(lambda a, b, c: cflash.flash_attn_func(a, b, c, causal=True), (q, k, v), dout)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        qc, kc, vc, dc = (t.cuda() for t in (q, k, v, dout))
        out, g = grads(lambda a, b, c: cflash.flash_attn_func(a, b, c, causal=True), (qc, kc, vc), dc)
    s.synchronize()
    assert out.is_cuda and out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(out.cpu().float(), cpu_out.float(), atol=tol, rtol=tol)
    for a, b in zip(g, cpu_g):
        assert torch.allclose(a.cpu().float(), b.float(), atol=tol * 5, rtol=tol)


@cuda
def test_cuda_varlen_kvcache_rotary_norm():
    torch.manual_seed(12)
    dev = "cuda"
    cu = torch.tensor([0, 3, 10], dtype=torch.int32, device=dev)
    q = torch.randn(10, 4, 32, device=dev, dtype=torch.float16)
    o = cflash.flash_attn_varlen_func(q, q, q, cu, cu, 7, 7, causal=True)
    o_cpu = cflash.flash_attn_varlen_func(q.cpu(), q.cpu(), q.cpu(), cu.cpu(), cu.cpu(), 7, 7, causal=True)
    assert torch.allclose(o.cpu().float(), o_cpu.float(), atol=2e-2)
    kc, vc = torch.randn(2, 16, 2, 32, device=dev), torch.randn(2, 16, 2, 32, device=dev)
    qq = torch.randn(2, 1, 4, 32, device=dev)
    lens = torch.tensor([4, 9], dtype=torch.int32, device=dev)
    out = cflash.flash_attn_with_kvcache(qq, kc, vc, cache_seqlens=lens)
    ref = cflash.flash_attn_with_kvcache(qq.cpu(), kc.cpu(), vc.cpu(), cache_seqlens=lens.cpu())
    assert torch.allclose(out.cpu(), ref, atol=1e-4)
    x = torch.randn(2, 5, 4, 32, device=dev)
    cos, sin = torch.randn(8, 16, device=dev), torch.randn(8, 16, device=dev)
    assert torch.allclose(apply_rotary_emb(x, cos, sin).cpu(), apply_rotary_emb(x.cpu(), cos.cpu(), sin.cpu()),
                          atol=1e-5)
    w = torch.randn(32, device=dev)
    assert torch.allclose(rms_norm_fn(x, w, None).cpu(), rms_norm_fn(x.cpu(), w.cpu(), None), atol=1e-5)


def test_torch_compile_with_dropout_draws_the_seed_inside_the_op():
    q, k, v = (torch.randn(1, 8, 2, 16, requires_grad=True) for _ in range(3))
    w = torch.randn(16, requires_grad=True)

    def f(q, k, v, w):
        o = cflash.flash_attn_func(q, k, v, dropout_p=0.2, causal=True)
        return rms_norm_fn(o, w, None, dropout_p=0.1, residual=o, prenorm=False)

    torch.manual_seed(21)
    ref = f(q, k, v, w)
    ref.sum().backward()
    g_ref = [t.grad.clone() for t in (q, k, v, w)]
    for t in (q, k, v, w):
        t.grad = None
    torch._dynamo.reset()
    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.manual_seed(21)
    out = cf(q, k, v, w)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6), "same torch seed, same dropout masks"
    for a, b in zip((q.grad, k.grad, v.grad, w.grad), g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_norm_dropout_backward_uses_the_forward_mask():
    torch.manual_seed(22)
    p = 0.3
    x = torch.randn(5, 48, requires_grad=True)
    r = torch.randn(5, 48, requires_grad=True)
    w = torch.randn(48)
    y, h = rms_norm_fn(x, w, None, residual=r, dropout_p=p, prenorm=True)
    (y.square().sum() + h.sum()).backward()
    kept = (h - r).detach().abs() > 1e-6  # x is never 0 here: dropped elements give h == r
    assert 0.5 < kept.float().mean() < 0.9
    assert torch.allclose((h - r)[kept], (x / (1 - p))[kept], atol=1e-5)
    want = torch.where(kept, r.grad / (1 - p), torch.zeros_like(r.grad))
    assert torch.allclose(x.grad, want, atol=1e-5)


def test_torch_dltensor_views_do_not_copy():
    from cflash._tensor import DL

    base = torch.randn(2, 4, 9, 40)
    x = base[..., 3:35].transpose(1, 2)
    h = DL(x)
    assert h.t.data == x.data_ptr() and [h.t.strides[i] for i in range(4)] == list(x.stride())
    assert h.t.dtype.code == 2 and h.t.dtype.bits == 32 and h.t.device.device_type == 1
    hb = DL(x.to(torch.bfloat16))
    assert hb.t.dtype.code == 4 and hb.t.dtype.bits == 16


def test_errors_through_the_custom_ops():
    q = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"q: dtype float64, expected float32"):
        cflash.flash_attn_func(q, q, q)
    q = torch.randn(1, 4, 2, 8)
    k = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match=r"k: 3 heads, expected a divisor"):
        cflash.flash_attn_func(q, k, k)
    try:
        cflash.set_backend("cuda-simt")
        with pytest.raises(RuntimeError, match=r"CFLASH_ERR_UNSUPPORTED"):
            cflash.flash_attn_func(q, q, q)
    finally:
        cflash.set_backend(None)


@pytest.mark.parametrize("graph_break", [False, True])
def test_compiled_inplace_rotary_gradients(graph_break):
    """RotaryEmbedding (in place on a view of a projection) under torch.compile, with and without
    a graph break before it: same output and gradients as eager."""
    torch.manual_seed(23)
    re = RotaryEmbedding(8)
    w = torch.randn(16, 48, requires_grad=True)
    x = torch.randn(2, 5, 16)

    def f(x, w):
        qkv = (x @ w).view(2, 5, 3, 2, 8)
        if graph_break:
            torch._dynamo.graph_break()
        qkv = re(qkv)
        return cflash.flash_attn_qkvpacked_func(qkv, causal=True)

    ref = f(x, w)
    ref.sum().backward()
    g = w.grad.clone()
    w.grad = None
    torch._dynamo.reset()
    out = torch.compile(f, backend="aot_eager", fullgraph=not graph_break)(x, w)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(w.grad, g, atol=1e-4)
