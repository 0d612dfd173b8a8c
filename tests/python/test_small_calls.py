"""Small calls: the short path of the Python package (DLTensors from DLPack capsules, no custom-op
dispatch when no autograd is wanted, decode-shape forwards on the library's decode entry) gives
the results of the general path and of the fp64 reference, with NumPy arrays and torch tensors,
and takes the general path where it must (autograd, torch.compile). The speed itself is measured
by bench/py_overhead.py, not here."""

import numpy as np
import pytest

import cflash
from cflash import _fast, reference as R
from conftest import check_rule, require


def _case(rng, B, Sq, Sk, H, Hk, D, dtype=np.float32):
    q = rng.standard_normal((B, Sq, H, D)).astype(dtype)
    k = rng.standard_normal((B, Sk, Hk, D)).astype(dtype)
    v = rng.standard_normal((B, Sk, Hk, D)).astype(dtype)
    return q, k, v


DECODE = [  # (B, Sk, H, Hk, D, causal, window, softcap, alibi)
    (1, 1, 32, 8, 128, False, (-1, -1), 0.0, False),
    (2, 37, 4, 1, 64, True, (-1, -1), 0.0, True),
    (3, 100, 6, 2, 32, False, (9, 0), 5.0, False),
    (1, 300, 4, 4, 40, True, (20, -1), 0.0, False),
]


@pytest.mark.parametrize("case", DECODE, ids=lambda c: "B%d-Sk%d-H%d-Hk%d-D%d-c%d-w%d_%d-s%g-a%d" % (
    c[0], c[1], c[2], c[3], c[4], c[5], c[6][0], c[6][1], c[7], c[8]))
def test_decode_shape_forward_against_reference(rng, poison, case):
    B, Sk, H, Hk, D, causal, window, softcap, alibi = case
    q, k, v = _case(rng, B, 1, Sk, H, Hk, D)
    slopes = rng.uniform(0.1, 0.5, (B, H)).astype(np.float32) if alibi else None
    kw = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=slopes)
    out, lse, _ = cflash.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    assert "kvcache_fwd" in cflash.explain(cflash.flash_attn_func, q, k, v, **kw), "served by the decode entry"
    ro, rl, _ = R.attention(q, k, v, **kw)
    no, nl, _ = R.attention(q, k, v, dtype="float32", **kw)
    check_rule("out", out, ro, no, "float32")
    check_rule("lse", lse, rl, nl, "float32")


def test_decode_entry_is_only_for_one_query_row(rng):
    q, k, v = _case(rng, 1, 2, 9, 2, 2, 16)
    text = cflash.explain(cflash.flash_attn_func, q, k, v)
    assert text.startswith("attn_fwd:") and "kvcache_fwd" not in text


def test_arrays_dlpack_cannot_carry_take_the_general_path(rng):
    q, k, v = _case(rng, 1, 5, 7, 2, 1, 16)
    ro, _, _ = R.attention(q, k, v)
    for x in (q, k, v):
        x.flags.writeable = False  # NumPy's __dlpack__ refuses read-only arrays
    assert np.abs(cflash.flash_attn_func(q, k, v) - ro).max() < 1e-5
    empty = cflash.flash_attn_func(q[:, :0], k, v)
    assert empty.shape == (1, 0, 2, 16)


# ---- torch ----


def _recorded_ops(fn):
    """The aten / cflash ops fn dispatches (a TorchDispatchMode sees each one)."""
    torch = require("torch", "PyTorch is not installed")
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        r = fn()
    return r, seen, torch


@pytest.mark.parametrize("sq", [1, 7])
def test_inference_calls_skip_the_custom_op_and_match_it(sq):
    torch = require("torch", "PyTorch is not installed")
    g = torch.Generator().manual_seed(sq)
    q = torch.randn(2, sq, 8, 64, generator=g)
    k, v = (torch.randn(2, 33, 2, 64, generator=g) for _ in range(2))
    out, seen, _ = _recorded_ops(lambda: cflash.flash_attn_func(q, k, v, causal=True))
    assert not any("cflash." in s for s in seen), "an inference call goes to the library directly: %s" % seen
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out_g, seen_g, _ = _recorded_ops(lambda: cflash.flash_attn_func(qg, kg, vg, causal=True))
    assert any("cflash.attn_fwd" in s for s in seen_g), "autograd goes through the custom op"
    assert torch.equal(out, out_g.detach()), "the same kernel either way"
    with torch.no_grad():
        assert torch.equal(cflash.flash_attn_func(qg, kg, vg, causal=True), out)
    out_g.sum().backward()
    assert qg.grad is not None and kg.grad is not None


def test_kvcache_inference_call_skips_the_custom_op():
    torch = require("torch", "PyTorch is not installed")
    kc, vc = torch.randn(2, 16, 2, 32), torch.randn(2, 16, 2, 32)
    q, kn, vn = torch.randn(2, 1, 4, 32), torch.randn(2, 1, 2, 32), torch.randn(2, 1, 2, 32)
    lens = torch.tensor([3, 9], dtype=torch.int32)
    kc2, vc2 = kc.clone(), vc.clone()
    out, seen, _ = _recorded_ops(lambda: cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens,
                                                                       causal=True))
    assert not any("cflash." in s for s in seen), seen
    assert torch.equal(kc[0, 3], kn[0, 0]) and torch.equal(kc[1, 9], kn[1, 0])
    ref = torch.ops.cflash.attn_kvcache(q, kc2, vc2, kn, vn, None, None, lens, -1, None, None, None, None,
                                        32 ** -0.5, True, -1, -1, 0.0, True, 0)[0]
    assert torch.equal(out, ref) and torch.equal(kc, kc2)


def test_compiled_calls_keep_the_custom_op():
    torch = require("torch", "PyTorch is not installed")
    q, k, v = (torch.randn(1, 1, 4, 16) for _ in range(3))
    torch._dynamo.reset()
    f = torch.compile(lambda a, b, c: cflash.flash_attn_func(a, b, c), backend="aot_eager", fullgraph=True)
    assert torch.allclose(f(q, k, v), cflash.flash_attn_func(q, k, v), atol=1e-6)


def test_views_and_bfloat16_through_capsules():
    torch = require("torch", "PyTorch is not installed")
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 11, 40, generator=g)
    q = base[..., 3:35].transpose(1, 2)  # strided, contiguous last dim: passed as it is
    k = base[..., 4:36].transpose(1, 2)
    out = cflash.flash_attn_func(q, k, k)
    ro, _, _ = R.attention(q, k, k)
    assert np.abs(out.numpy() - ro).max() < 1e-5
    qb, kb = q.to(torch.bfloat16), k.to(torch.bfloat16)
    out = cflash.flash_attn_func(qb, kb, kb)
    assert out.dtype == torch.bfloat16 and np.abs(out.float().numpy() - ro).max() < 0.05


# ---- The pieces that keep a call cheap ----


def test_capsule_pointer_read_in_place_is_the_dltensor():
    """_fast reads a capsule's pointer from the capsule object (CPython's layout, checked at
    import) instead of calling PyCapsule_GetPointer: the same address."""
    import ctypes

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    keep = []
    addr = _fast.address(x, "x", keep)
    assert addr == _fast._capsule_pointer(keep[-1], b"dltensor")
    t = cflash._lib.DLTensor.from_address(addr)
    assert t.data == x.ctypes.data and t.ndim == 2 and tuple(t.shape[i] for i in range(2)) == (3, 4)
    import platform

    if platform.python_implementation() == "CPython":
        assert _fast._OFFSET == object.__basicsize__
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    y = torch.arange(6, dtype=torch.float32).reshape(2, 3)[:, 1:]
    keep = []
    addr = _fast.address(y, "y", keep)
    assert _fast._torch_capsules[0] is (_fast._OFFSET is not None)
    t = cflash._lib.DLTensor.from_address(addr)
    assert t.data == y.data_ptr() and (t.strides[0], t.strides[1]) == (3, 1)
    assert addr == _fast._capsule_pointer(keep[-1], b"dltensor")
    del ctypes


def test_kvcache_params_forget_the_last_calls_pointers(rng):
    """The KV-cache params are reused call after call with only the given pointers written: a
    field set by one call (cache_batch_idx, k_new, block_table, quantized-cache scales) must be NULL
    in the next call that does not pass it."""
    B, S, Hk, H, D = 2, 12, 2, 4, 16
    kc = rng.standard_normal((B, S, Hk, D)).astype(np.float32)
    vc = rng.standard_normal((B, S, Hk, D)).astype(np.float32)
    q = rng.standard_normal((B, 1, H, D)).astype(np.float32)
    kn = rng.standard_normal((B, 1, Hk, D)).astype(np.float32)
    lens = np.array([5, 9], dtype=np.int32)
    swap = cflash.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, cache_batch_idx=np.array([1, 0], np.int32))
    plain = cflash.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens)
    for b in range(B):
        ro, _, _ = R.attention(q[b:b + 1], kc[b:b + 1, :lens[b]], vc[b:b + 1, :lens[b]])
        assert np.abs(plain[b:b + 1] - ro).max() < 1e-5, "cache_batch_idx of the last call still set"
    kc2, vc2 = kc.copy(), vc.copy()
    cflash.flash_attn_with_kvcache(q, kc2, vc2, kn, kn, cache_seqlens=lens)  # appends at 5 and 9
    kc3, vc3 = kc.copy(), vc.copy()
    cflash.flash_attn_with_kvcache(q, kc3, vc3, cache_seqlens=lens)
    assert np.array_equal(kc3, kc) and np.array_equal(vc3, vc), "k_new of the last call still set"
    assert not np.array_equal(swap, plain)


def test_hot_custom_ops_have_their_own_cpu_kernel():
    """The attention ops' plain functions are their CPU / CUDA kernels (custom_op's checking
    wrapper costs 3.5 us a call); the op still matches the direct call and passes opcheck."""
    torch = require("torch", "PyTorch is not installed")
    import cflash._torch  # noqa: F401

    for name in ("attn_fwd", "attn_bwd", "attn_varlen_fwd", "attn_varlen_bwd", "attn_kvcache"):
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key("cflash::" + name, key), (name, key)
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(1, 1, 8, 32, generator=g), torch.randn(1, 9, 2, 32, generator=g), torch.randn(
        1, 9, 2, 32, generator=g)
    with torch.inference_mode():
        out, lse, rng_state = torch.ops.cflash.attn_fwd(q, k, v, None, 0.0, 32 ** -0.5, False, -1, -1, 0.0, False, 0)
    assert torch.equal(out, cflash.flash_attn_func(q, k, v))
    assert rng_state.tolist() == [0, 0] and lse.shape == (1, 8, 1)
