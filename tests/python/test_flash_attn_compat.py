"""flash-attn 2.8's behaviour where a user can see it, checked through the package with torch:
S_dmask in flash-attn's form (decoded as flash-attn's own tests decode it), in-place rotary under
autograd on leaves and on varlen inputs (eager and compiled), every argument of layer_norm_fn /
rms_norm_fn and layer_norm_linear_fn against a plain-torch reference, cflash.bert_padding, the
private _flash_attn_*forward entry points, and the error types flash-attn's callers catch.
The checks are written here from flash-attn's documented behaviour; no code is taken from it."""

import numpy as np
import pytest

from conftest import require

torch = require("torch", "PyTorch is not installed: the flash-attn behaviour tests need it")
F = torch.nn.functional

import cflash  # noqa: E402
from cflash import reference as R  # noqa: E402
from cflash.bert_padding import index_first_axis, pad_input, unpad_input, unpad_input_for_concatenated_sequences  # noqa: E402,E501
from cflash.flash_attn_interface import _get_block_size_n, round_multiple  # noqa: E402
from cflash.layers.rotary import (RotaryEmbedding, apply_rotary_emb, apply_rotary_emb_kv_,  # noqa: E402
                                  apply_rotary_emb_qkv_, apply_rotary_emb_torch)
from cflash.ops.triton.layer_norm import (RMSNorm, layer_norm_fn, layer_norm_linear_fn,  # noqa: E402
                                          layer_norm_ref, rms_norm_fn, rms_norm_ref)
from conftest import check_rule, grad_magnitude  # noqa: E402

TN = lambda t: t.detach().double().cpu().numpy()  # noqa: E731


# ---- S_dmask ----


def decode_s_dmask(S, t, lse, block):
    """flash-attn's S_dmask decoded as its tests do: the sign is the keep mask, |S| times
    exp(m - lse) the probability, m being the running maximum of the scores over the key blocks
    from the block of the entry to the last. t (1, H, Sq, Sk) fp64 masked scores, lse (1, H, Sq)."""
    Sq, Sk = t.shape[-2:]
    S = S[..., :Sq, :Sk].double().numpy()
    keep = ~np.signbit(S)
    starts = range(0, Sk, block)
    bmax = np.stack([t[..., j:j + block].max(axis=-1) for j in starts], axis=-1)
    running = np.maximum.accumulate(bmax[..., ::-1], axis=-1)[..., ::-1]
    m = np.concatenate([np.repeat(running[..., [n]], min(block, Sk - j), axis=-1) for n, j in enumerate(starts)],
                       axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.where(np.isfinite(m) & np.isfinite(lse[..., None]), np.abs(S) * np.exp(m - lse[..., None]), 0.0)
    return p, keep


def test_block_size_table_as_flash_attn():
    # flash-attn's _get_block_size_n on an A100 (sm80), the one S_dmask is laid out by here
    assert [_get_block_size_n(None, d, True, False) for d in (32, 64, 96, 128, 160, 256)] == [128, 64, 64, 32, 64, 64]
    assert [_get_block_size_n(None, d, False, True) for d in (32, 64, 128)] == [128, 128, 64]
    assert round_multiple(200, 128) == 256 and round_multiple(128, 128) == 128


S_CASES = [  # (B, Sq, Sk, H, Hk, D, causal, window, softcap, alibi, dtype)
    (2, 97, 97, 3, 3, 32, False, (-1, -1), 0.0, False, torch.float16),
    (1, 130, 201, 2, 1, 59, True, (-1, -1), 0.0, True, torch.bfloat16),
    (2, 64, 300, 4, 2, 128, False, (40, 7), 0.0, False, torch.float16),
    (1, 33, 129, 2, 2, 160, True, (-1, -1), 5.0, False, torch.float32),
    (1, 200, 17, 2, 1, 64, True, (-1, -1), 0.0, False, torch.bfloat16),
]


@pytest.mark.parametrize("case", S_CASES, ids=lambda c: "B%d-Sq%d-Sk%d-D%d-c%d-w%d_%d-s%g-a%d-%s" % (
    c[0], c[1], c[2], c[5], c[6], c[7][0], c[7][1], c[8], c[9], str(c[10])[6:]))
def test_s_dmask_as_flash_attn(case):
    B, Sq, Sk, H, Hk, D, causal, window, softcap, alibi, dtype = case
    if dtype == torch.bfloat16:
        require("ml_dtypes", "ml_dtypes is not installed (NumPy's bfloat16, for the naive reference)")
    p_drop = 0.17
    g = torch.Generator().manual_seed(Sq * 1000 + Sk)
    q = torch.randn(B, Sq, H, D, generator=g).to(dtype)
    k = torch.randn(B, Sk, Hk, D, generator=g).to(dtype)
    v = torch.randn(B, Sk, Hk, D, generator=g).to(dtype)
    slopes = torch.rand(B, H, generator=g) * 0.3 if alibi else None
    kw = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=slopes)
    out, lse, S = cflash.flash_attn_func(q, k, v, dropout_p=p_drop, return_attn_probs=True, **kw)
    assert S.dtype == dtype and S.shape == (B, H, round_multiple(Sq, 128), round_multiple(Sk, 128))
    assert cflash.flash_attn_func(q, k, v, return_attn_probs=True, **kw)[2].shape == (0,), "empty without dropout"
    block = _get_block_size_n(q.device, D, True, causal)
    ok = R.visible(Sq, Sk, causal, window)
    for b in range(B):
        rkw = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=None if slopes is None else slopes[b])
        t = R.scores(q[b:b + 1], k[b:b + 1], **rkw)
        _, rlse, rp = R.attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], **rkw)
        p, keep = decode_s_dmask(S[b:b + 1], t, rlse, block)
        check_rule("probs[%d]" % b, p, rp, TN(torch.from_numpy(rp).to(dtype)), str(dtype))
        # the sign carries exactly the mask the output was computed with
        ro, _, _ = R.attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], dropout_p=p_drop, dropout_mask=keep, **rkw)
        no, _, _ = R.attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], dropout_p=p_drop, dropout_mask=keep,
                               dtype=str(dtype)[6:], **rkw)
        check_rule("out[%d]" % b, TN(out[b:b + 1]), ro, no, str(dtype))
        frac = 1 - keep[0][:, ok].mean()
        assert abs(frac - p_drop) < 0.05, "dropped fraction %.3f for p %.2f" % (frac, p_drop)
    assert not S[..., Sq:, :].any() and not S[..., Sk:].any(), "the rounding padding is zero"


def test_s_dmask_varlen_as_flash_attn():
    torch.manual_seed(3)
    lq, lk = [5, 77, 1, 30], [9, 130, 4, 30]
    cq = torch.tensor(np.concatenate([[0], np.cumsum(lq)]), dtype=torch.int32)
    ck = torch.tensor(np.concatenate([[0], np.cumsum(lk)]), dtype=torch.int32)
    H, D, p_drop = 2, 64, 0.3
    q = torch.randn(int(cq[-1]), H, D, dtype=torch.float16)
    k, v = (torch.randn(int(ck[-1]), H, D, dtype=torch.float16) for _ in range(2))
    out, lse, S = cflash.flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), dropout_p=p_drop, causal=True,
                                                return_attn_probs=True)
    assert S.shape == (4, H, 128, 256)
    block = _get_block_size_n(q.device, D, True, True)
    for b in range(4):
        qs, ks, vs = (x[None, int(c[b]):int(c[b + 1])] for x, c in ((q, cq), (k, ck), (v, ck)))
        t = R.scores(qs, ks, causal=True)
        _, rlse, rp = R.attention(qs, ks, vs, causal=True)
        p, keep = decode_s_dmask(S[b:b + 1], t, rlse, block)
        check_rule("probs[%d]" % b, p, rp, rp.astype(np.float16), "float16")
        ro, _, _ = R.attention(qs, ks, vs, causal=True, dropout_p=p_drop, dropout_mask=keep)
        no, _, _ = R.attention(qs, ks, vs, causal=True, dropout_p=p_drop, dropout_mask=keep, dtype="float16")
        check_rule("out[%d]" % b, TN(out[int(cq[b]):int(cq[b + 1])])[None], ro, no, "float16")
        assert not S[b, :, lq[b]:].any() and not S[b, :, :, lk[b]:].any()


def test_private_forward_entry_points():
    torch.manual_seed(4)
    from cflash.flash_attn_interface import _flash_attn_forward, _flash_attn_varlen_forward

    q, k, v = (torch.randn(2, 9, 2, 16) for _ in range(3))
    out, lse, S, rng = _flash_attn_forward(q, k, v, 0.0, 0.25, True, -1, -1, 0.0, None, False)
    assert torch.equal(out, cflash.flash_attn_func(q, k, v, softmax_scale=0.25, causal=True))
    assert lse.shape == (2, 2, 9) and S.shape == (0,) and rng.dtype == torch.int64 and rng.shape == (2,)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    qv = q[0]
    out, lse, S, rng = _flash_attn_varlen_forward(qv, qv, qv, cu, cu, 5, 5, 0.0, 0.25, False)
    assert torch.equal(out, cflash.flash_attn_varlen_func(qv, qv, qv, cu, cu, 5, 5, softmax_scale=0.25))
    with pytest.raises(RuntimeError, match="num_splits > 1 is not supported"):
        _flash_attn_varlen_forward(qv, qv, qv, cu, cu, 5, 5, 0.0, 0.25, False, num_splits=2)


# ---- Rotary in place under autograd ----


def rot_ref(x, cos, sin, offsets, interleaved):
    """The rotation with positions from offsets (int or (B,)), in fp32, by flash-attn's plain-torch
    formula (apply_rotary_emb_torch) on gathered tables."""
    S = x.shape[1]
    if isinstance(offsets, torch.Tensor):
        idx = offsets.long()[:, None] + torch.arange(S)[None]
        c, s = cos[idx], sin[idx]  # (B, S, r)
    else:
        c, s = cos[offsets:offsets + S], sin[offsets:offsets + S]
    return apply_rotary_emb_torch(x.float(), c.float(), s.float(), interleaved).to(x.dtype)


def close_to(got, want, what):
    # flash-attn's criterion: within 2x the rounding of one arithmetic op on the reference
    atol = ((want.float() + 0.3 - 0.3) - want.float()).abs().max().item()
    assert torch.allclose(got.float(), want.float(), rtol=1e-3, atol=2 * atol + 1e-7), \
        "%s: max diff %g" % (what, (got.float() - want.float()).abs().max().item())


def _tables(S_ro, rd, dtype, g):
    ang = torch.rand(S_ro, rd // 2, generator=g) * 2 * np.pi
    return ang.cos().to(dtype), ang.sin().to(dtype)


OFFSETS = ["zero", "int", "tensor"]


def _offsets(kind, B, S, g):
    if kind == "zero":
        return 0
    if kind == "int":
        return int(torch.randint(0, S + 1, (1,), generator=g))
    return torch.randint(0, S + 1, (B,), generator=g, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offsets", OFFSETS)
@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_rotary_on_a_leaf(inplace, interleaved, rotary_fraction, offsets, dtype):
    g = torch.Generator().manual_seed(5)
    B, S, H, D = 3, 37, 2, 64
    x = torch.randn(B, S, H, D, generator=g).to(dtype).requires_grad_()
    x0 = x.detach().clone()
    x_pt = x.detach().clone().requires_grad_()
    cos, sin = _tables(2 * S, int(rotary_fraction * D), dtype, g)
    off = _offsets(offsets, B, S, g)
    out = apply_rotary_emb(x, cos, sin, seqlen_offsets=off, interleaved=interleaved, inplace=inplace)
    out_pt = rot_ref(x_pt, cos, sin, off, interleaved)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(dout)
    out_pt.backward(dout)
    close_to(out, out_pt, "out")
    close_to(x.grad, x_pt.grad, "dx")
    if inplace:
        assert torch.equal(x.detach(), out.detach()), "in place: the leaf holds the result"
    else:
        assert torch.equal(x.detach(), x0)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("offsets", OFFSETS)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_qkv_on_a_leaf(interleaved, offsets, gqa, compiled):
    if compiled:
        torch._dynamo.reset()
    g = torch.Generator().manual_seed(6)
    B, S, H, Hk, D = 2, 19, 4, 2, 32
    dtype = torch.float16
    shape = (B, S, H + 2 * Hk, D) if gqa else (B, S, 3, H, D)
    qkv = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    qkv_pt = qkv.detach().clone().requires_grad_()
    cos, sin = _tables(2 * S, D // 2, dtype, g)
    off = _offsets(offsets, B, S, g)
    fn = torch.compile(apply_rotary_emb_qkv_, backend="aot_eager") if compiled else apply_rotary_emb_qkv_
    out = fn(qkv, cos, sin, seqlen_offsets=off, interleaved=interleaved, num_heads_q=H if gqa else None)
    if gqa:
        q, k, v = qkv_pt.split([H, Hk, Hk], dim=2)
        out_pt = torch.cat([rot_ref(q, cos, sin, off, interleaved), rot_ref(k, cos, sin, off, interleaved), v], 2)
    else:
        q, k, v = qkv_pt.unbind(2)
        out_pt = torch.stack([rot_ref(q, cos, sin, off, interleaved), rot_ref(k, cos, sin, off, interleaved), v], 2)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(dout)
    out_pt.backward(dout)
    close_to(out, out_pt, "out")
    close_to(qkv.grad, qkv_pt.grad, "dqkv")


def test_rotary_kv_and_module_on_leaves():
    g = torch.Generator().manual_seed(7)
    B, S, H, D = 2, 23, 2, 16
    kv = torch.randn(B, S, 2, H, D, generator=g).requires_grad_()
    kv_pt = kv.detach().clone().requires_grad_()
    cos, sin = _tables(S + 3, D, torch.float32, g)
    out = apply_rotary_emb_kv_(kv, cos, sin, seqlen_offsets=3)
    out_pt = torch.stack([rot_ref(kv_pt[:, :, 0], cos, sin, 3, False), kv_pt[:, :, 1]], 2)
    dout = torch.randn(out.shape, generator=g)
    out.backward(dout)
    out_pt.backward(dout)
    close_to(out, out_pt, "kv out")
    close_to(kv.grad, kv_pt.grad, "dkv")
    # RotaryEmbedding.forward on a leaf qkv, as flash-attn's layer tests call it
    re = RotaryEmbedding(D)
    qkv = torch.randn(B, S, 3, H, D, generator=g).requires_grad_()
    qkv_pt = qkv.detach().clone().requires_grad_()
    out = re(qkv, seqlen_offset=5)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    ang = torch.outer(torch.arange(S + 5, dtype=torch.float32), inv)
    q, k, v = qkv_pt.unbind(2)
    out_pt = torch.stack([rot_ref(q, ang.cos(), ang.sin(), 5, False), rot_ref(k, ang.cos(), ang.sin(), 5, False), v], 2)
    out.backward(dout.new_ones(()).expand(out.shape))
    out_pt.backward(dout.new_ones(()).expand(out.shape))  # an expanded (stride 0) gradient
    close_to(out, out_pt, "module out")
    close_to(qkv.grad, qkv_pt.grad, "module dqkv")


def test_rotary_in_place_on_a_view_made_by_a_custom_function():
    """flash-attn's own index_first_axis returns a view made inside a custom Function; rotated in
    place with the gradient flowing from an earlier layer (not a leaf), autograd refuses to let it
    be written outside a Function: the rotation is written inside one, as flash-attn does."""
    class Gather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t, idx):
            ctx.save_for_backward(idx)
            ctx.n = t.shape[0]
            return t.reshape(t.shape[0], -1)[idx].reshape(-1, *t.shape[1:])

        @staticmethod
        def backward(ctx, grad):
            (idx,) = ctx.saved_tensors
            out = grad.new_zeros((ctx.n,) + tuple(grad.shape[1:]))
            return out.index_add(0, idx, grad), None

    g = torch.Generator().manual_seed(14)
    w = torch.randn(12, 2, 16, generator=g).requires_grad_()
    idx = torch.tensor([0, 2, 3, 5, 6, 7, 9, 11])
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    cos, sin = _tables(8, 16, torch.float32, g)
    out = apply_rotary_emb(Gather.apply(w * 2.0, idx), cos, sin, inplace=True, cu_seqlens=cu, max_seqlen=5)
    dout = torch.randn(out.shape, generator=g)
    out.backward(dout)
    w2 = w.detach().clone().requires_grad_()
    x2 = (w2 * 2.0)[idx]
    ref = torch.cat([rot_ref(x2[None, 0:3], cos, sin, 0, False)[0], rot_ref(x2[None, 3:8], cos, sin, 0, False)[0]])
    ref.backward(dout)
    close_to(out, ref, "out")
    close_to(w.grad, w2.grad, "dw")


@pytest.mark.parametrize("view_kind", ["bert_padding", "custom_function_view"])
@pytest.mark.parametrize("inplace", [False, True])
def test_rotary_varlen_on_unpadded_leaf(inplace, view_kind):
    g = torch.Generator().manual_seed(8)
    B, S, H, D = 4, 29, 2, 32
    dtype = torch.bfloat16
    x = torch.randn(B, S, H, D, generator=g).to(dtype)
    x_pt = x.detach().clone().requires_grad_()
    lengths = torch.randint(S - 10, S + 1, (B, 1), generator=g)
    mask = torch.arange(S)[None] < lengths
    x_unpad, indices, cu, max_s, used = unpad_input(x, mask)
    if view_kind == "custom_function_view":
        # what flash-attn's own index_first_axis returns: a view made inside a custom Function
        class Gather(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t, idx):
                return t.reshape(t.shape[0], -1)[idx].reshape(-1, *t.shape[1:])

            @staticmethod
            def backward(ctx, grad):
                return None, None

        x_unpad = Gather.apply(x.reshape(B * S, H, D), indices)
    x_unpad_og = x_unpad.clone()
    x_unpad.requires_grad_()
    cos, sin = _tables(2 * S, D, dtype, g)
    out_unpad = apply_rotary_emb(x_unpad, cos, sin, seqlen_offsets=2, inplace=inplace, cu_seqlens=cu, max_seqlen=max_s)
    out = pad_input(out_unpad, indices, B, S)
    out_pt = rot_ref(x_pt, cos, sin, 2, False).masked_fill(~mask[..., None, None], 0.0)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(dout)
    out_pt.backward(dout)
    close_to(out, out_pt, "out")
    close_to(pad_input(x_unpad.grad, indices, B, S), x_pt.grad, "dx")
    if not inplace:
        assert torch.equal(x_unpad.detach(), x_unpad_og)


# ---- layer_norm_fn / rms_norm_fn ----


def _least_precise(*dtypes):
    order = [torch.bfloat16, torch.float16, torch.float32]
    return next(d for d in order if d in dtypes)


NORM_EXTRAS = ["none", "zero_centered", "rowscale", "x1", "x1_weight1", "weight1_zero_centered"]


@pytest.mark.parametrize("extra", NORM_EXTRAS)
@pytest.mark.parametrize("dropout_p", [0.0, 0.27])
@pytest.mark.parametrize("is_rms_norm", [False, True])
@pytest.mark.parametrize("has_residual", [True, False])
@pytest.mark.parametrize("input_dtype,residual_dtype,weight_dtype", [  # weights in x's dtype, fp32 or a third one
    (torch.float16, torch.float16, torch.float32), (torch.float16, torch.float32, torch.float16),
    (torch.float32, torch.float32, torch.float32), (torch.float32, torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16, torch.float16)], ids=lambda d: str(d)[6:])
def test_layer_norm_every_argument(input_dtype, residual_dtype, weight_dtype, has_residual, is_rms_norm, dropout_p,
                                   extra):
    g = torch.Generator().manual_seed(9)
    B, S, N = 3, 11, 192
    x0 = torch.randn(B, S, N, generator=g).to(input_dtype).requires_grad_()
    res = torch.randn(B, S, N, generator=g).to(residual_dtype).requires_grad_() if has_residual else None
    weight = torch.randn(N, generator=g).to(weight_dtype).requires_grad_()
    bias = None if is_rms_norm else torch.randn(N, generator=g).to(weight_dtype).requires_grad_()
    x1 = torch.randn(B, S, N, generator=g).to(input_dtype).requires_grad_() if "x1" in extra else None
    weight1 = torch.randn(N, generator=g).to(weight_dtype).requires_grad_() if "weight1" in extra else None
    bias1 = torch.randn(N, generator=g).to(weight_dtype).requires_grad_() if weight1 is not None and not is_rms_norm \
        else None
    rowscale = torch.randn(B, S, generator=g).to(input_dtype) if extra == "rowscale" else None
    zc = "zero_centered" in extra
    residual_in_fp32 = not has_residual and residual_dtype == torch.float32
    leaves = [t for t in (x0, res, weight, bias, x1, weight1, bias1) if t is not None]
    outs = layer_norm_fn(x0, weight, bias, residual=res, x1=x1, weight1=weight1, bias1=bias1, eps=1e-6,
                         dropout_p=dropout_p, rowscale=rowscale, prenorm=True, residual_in_fp32=residual_in_fp32,
                         zero_centered_weight=zc, is_rms_norm=is_rms_norm, return_dropout_mask=True)
    outs = list(outs)
    mask, mask1 = outs[-2:]
    if dropout_p == 0:
        assert mask is None and mask1 is None
    else:
        assert mask.dtype == torch.bool and mask.shape == x0.shape
        assert abs((1 - mask.float().mean()).item() - dropout_p) < 0.03
        assert (mask1 is not None) == (x1 is not None)
        if mask1 is not None:
            assert not torch.equal(mask, mask1)
    out, out1, residual = outs[0], (outs[1] if weight1 is not None else None), outs[-3]
    assert out.dtype == input_dtype and residual.dtype == residual_dtype and residual.shape == x0.shape

    ref_fn = rms_norm_ref if is_rms_norm else layer_norm_ref

    def run_ref(cast):
        ts = [cast(t).detach().requires_grad_() if t is not None else None for t in (x0, res, weight, bias, x1,
                                                                                       weight1, bias1)]
        r = ref_fn(ts[0], ts[2], ts[3], residual=ts[1], x1=ts[4], weight1=ts[5], bias1=ts[6], eps=1e-6,
                   dropout_p=dropout_p, rowscale=rowscale if rowscale is None else cast(rowscale), prenorm=True,
                   zero_centered_weight=zc, dropout_mask=mask, dropout_mask1=mask1)
        return list(r), [t for t in ts if t is not None]

    ref, ref_leaves = run_ref(lambda t: t.double())  # fp64: the reference
    naive, naive_leaves = run_ref(lambda t: t)  # the inputs' dtypes: the naive computation
    low = str(_least_precise(input_dtype, residual_dtype, weight_dtype))[6:]
    check_rule("out", TN(out), TN(ref[0]), TN(naive[0]), low)
    check_rule("residual", TN(residual), TN(ref[-1]), TN(naive[-1]), low)
    if out1 is not None:
        check_rule("out1", TN(out1), TN(ref[1]), TN(naive[1]), low)

    # the backward of out * gelu(out1) + sigmoid(residual), as flash-attn's test takes it
    def loss(o, o1, r, dout):
        y = o.float() * (F.gelu(o1.float()) if o1 is not None else 1.0)
        return (y * dout).sum() + torch.sigmoid(r.float()).sum()

    dout = torch.randn(B, S, N, generator=g)
    loss(out, out1, residual, dout).backward()
    loss(ref[0], ref[1] if out1 is not None else None, ref[-1], dout.double()).backward()
    loss(naive[0], naive[1] if out1 is not None else None, naive[-1], dout).backward()
    refs = [TN(t.grad) for t in ref_leaves]
    for t, r, n in zip(leaves, ref_leaves, naive_leaves):
        assert t.grad.dtype == t.dtype
        check_rule("grad", TN(t.grad), TN(r.grad), TN(n.grad), low, factor=3.0, magnitude=grad_magnitude(refs),
                   grad=True)


def test_norm_out_dtype_prenorm_false_and_buffers():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(4, 64, generator=g, dtype=torch.bfloat16)
    w = torch.randn(64, generator=g)
    y = rms_norm_fn(x, w, None, out_dtype=torch.float32)
    assert y.dtype == torch.float32
    ref = rms_norm_ref(x.double(), w.double(), None)
    assert (y.double() - ref).abs().max() < 1e-2
    y2 = rms_norm_fn(x, w, None)
    assert y2.dtype == torch.bfloat16 and torch.equal(y2, y.to(torch.bfloat16))
    # nothing added: the returned residual is x itself, as flash-attn's
    y3, h = rms_norm_fn(x, w, None, prenorm=True)
    assert h is x
    # out / residual_out buffers are filled and returned
    out, res_out = torch.empty(4, 64, dtype=torch.bfloat16), torch.empty(4, 64, dtype=torch.float32)
    r = torch.randn(4, 64, generator=g, dtype=torch.float32)
    y4, h4 = layer_norm_fn(x, w, None, residual=r, prenorm=True, out=out, residual_out=res_out)
    assert y4 is out and h4 is res_out and torch.allclose(res_out, x.float() + r)
    # return_dropout_mask with dropout 0: two Nones, as flash-attn
    assert rms_norm_fn(x, w, None, return_dropout_mask=True)[1:] == (None, None)


def test_norm_arguments_on_numpy():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    x1 = rng.standard_normal((5, 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float16)  # a weight in neither x's dtype nor fp32
    rs = rng.standard_normal(5).astype(np.float32)
    y, y1, h = layer_norm_fn(x, w, None, x1=x1, weight1=w, prenorm=True, is_rms_norm=True, zero_centered_weight=True)
    hr = x.astype(np.float64) + x1
    yr = R.norm(hr, w.astype(np.float64) + 1, None, None, 1e-6, True)[0]
    assert np.abs(y - yr).max() < 1e-4 and np.abs(y1 - yr).max() < 1e-4 and np.abs(h - hr).max() < 1e-6
    y = rms_norm_fn(x, w, None, rowscale=rs)
    assert np.abs(y - R.norm(x * rs[:, None].astype(np.float64), w, None, None, 1e-6, True)[0]).max() < 1e-4
    np.random.seed(1)
    y, h, m, m1 = rms_norm_fn(x, np.ones(32, np.float32), None, x1=x1, dropout_p=0.4, prenorm=True,
                              return_dropout_mask=True)
    hr = np.where(m, x / 0.6, 0) + np.where(m1, x1 / 0.6, 0)
    assert np.abs(h - hr).max() < 1e-5 and not np.array_equal(m, m1)


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("is_rms_norm", [False, True])
@pytest.mark.parametrize("has_residual", [True, False])
def test_layer_norm_linear(has_residual, is_rms_norm, prenorm):
    g = torch.Generator().manual_seed(12)
    B, S, N = 2, 9, 64
    x = torch.randn(B, S, N, generator=g, dtype=torch.bfloat16).requires_grad_()
    res = torch.randn(B, S, N, generator=g, dtype=torch.float32).requires_grad_() if has_residual else None
    nw = torch.randn(N, generator=g).requires_grad_()
    nb = None if is_rms_norm else torch.randn(N, generator=g).requires_grad_()
    lw = (torch.randn(2 * N, N, generator=g) * N ** -0.5).requires_grad_()
    lb = None if is_rms_norm else torch.randn(2 * N, generator=g).requires_grad_()
    leaves = [t for t in (x, res, nw, nb, lw, lb) if t is not None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = layer_norm_linear_fn(x, nw, nb, lw, lb, residual=res, eps=1e-6, prenorm=prenorm, is_rms_norm=is_rms_norm)
    out = r[0] if prenorm else r
    assert out.dtype == torch.bfloat16
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    it = iter(ref_leaves)
    xr = next(it)
    rr = next(it) if has_residual else None
    nwr = next(it)
    nbr = None if is_rms_norm else next(it)
    lwr = next(it)
    lbr = None if is_rms_norm else next(it)
    yr, hr = (rms_norm_ref if is_rms_norm else layer_norm_ref)(xr, nwr, nbr, residual=rr, prenorm=True)
    outr = F.linear(yr, lwr, lbr)
    assert (out.double() - outr).abs().max() < 0.1 * max(1, outr.abs().max().item())
    if prenorm:
        assert r[1].dtype == (torch.float32 if has_residual else torch.bfloat16)
        assert (r[1].double() - hr).abs().max() < 1e-2
    dout = torch.randn(out.shape, generator=g)
    (out.float() * dout).sum().backward()
    (outr * dout.double()).sum().backward()
    for t, tr in zip(leaves, ref_leaves):
        scale = max(1, tr.grad.abs().max().item())
        assert (t.grad.double() - tr.grad).abs().max() < 0.1 * scale


def test_rms_norm_module_zero_centered():
    m = RMSNorm(16, zero_centered_weight=True)
    assert torch.equal(m.weight.detach(), torch.zeros(16))
    x = torch.randn(3, 16)
    assert torch.allclose(m(x), x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5), atol=1e-6)


# ---- bert_padding ----


def test_bert_padding_round_trip_and_gradients():
    g = torch.Generator().manual_seed(13)
    B, S, H, D = 3, 7, 2, 4
    x = torch.randn(B, S, H, D, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7, [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    unused = torch.zeros(B, S, dtype=torch.bool)
    unused[0, 3] = True
    xu, idx, cu, mx, used = unpad_input(x, mask, unused)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 4, 11, 13] and mx == 7 and used.tolist() == [3, 7, 2]
    assert torch.equal(xu, x.reshape(B * S, H, D)[idx]) and idx.tolist()[:4] == [0, 1, 2, 3]
    back = pad_input(xu, idx, B, S)
    assert torch.equal(back[mask | unused], x[mask | unused]) and not back[~(mask | unused)].any()
    back.sum().backward()
    assert torch.equal(x.grad, (mask | unused).float()[..., None, None].expand_as(x))
    assert torch.equal(index_first_axis(torch.arange(10.0).reshape(5, 2), torch.tensor([3, 1])),
                       torch.tensor([[6.0, 7.0], [2.0, 3.0]]))
    lens = torch.tensor([[2, 3, 0, 0, 0, 0], [6, 0, 0, 0, 0, 0]])
    h = torch.arange(12.0).reshape(2, 6, 1)
    hu, idx, cu, mx = unpad_input_for_concatenated_sequences(h, lens)
    assert cu.tolist() == [0, 2, 5, 11] and mx == 6 and hu[:, 0].tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]


# ---- Errors flash-attn's callers catch ----


def test_paged_cache_over_capacity_is_a_runtime_error_naming_block_table():
    page, nblocks = 16, 4
    kc, vc = torch.randn(nblocks, page, 1, 8), torch.randn(nblocks, page, 1, 8)
    bt = torch.zeros(1, 1, dtype=torch.int32)
    q = torch.randn(1, 1, 1, 8)
    for k, v, L in ((None, None, page + 1), (torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8), page)):
        with pytest.raises(RuntimeError, match="block_table"):
            cflash.flash_attn_with_kvcache(q, kc, vc, k=k, v=v, cache_seqlens=torch.tensor([L], dtype=torch.int32),
                                           block_table=bt)
    out = cflash.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([page], dtype=torch.int32),
                                         block_table=bt)
    assert out.shape == (1, 1, 1, 8) and not out.isnan().any()


def test_invalid_arguments_are_both_value_and_runtime_errors():
    q = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    for kind in (ValueError, RuntimeError):
        with pytest.raises(kind, match="q: dtype float64"):
            cflash.flash_attn_func(q, q, q)
