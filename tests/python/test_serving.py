"""Issue 13's serving features through the flash-attn-style API, on NumPy and (where installed)
torch: paged K/V in flash_attn_varlen_func (block_table, as vLLM and SGLang call it) and FA3's
seqused_q / seqused_k, against cflash.reference (fp64) on the gathered dense keys, under
DESIGN.md's error rule; the backward (torch autograd) with pages."""

import numpy as np
import pytest

import cflash
from cflash import _core, reference as R
from conftest import check_rule, grad_magnitude


def _paged(rng, k, ck, page, extra_pages=2):
    """The packed key rows k (total_k, Hk, D) of sequences ck scattered into shuffled pages:
    (pages (num_pages, page, Hk, D) holding NaN where no key lies, block_table (B, max_pages) with
    out-of-range entries past each sequence's pages)."""
    lens = np.diff(ck)
    need = [(int(n) + page - 1) // page for n in lens]
    num_pages = sum(need) + extra_pages
    max_pages = max(need) + 1
    perm = rng.permutation(num_pages)
    table = np.full((len(lens), max_pages), num_pages + 5, dtype=np.int32)
    n = 0
    for b, cnt in enumerate(need):
        table[b, :cnt] = perm[n:n + cnt]
        n += cnt
    return _scatter(k, ck, table, page, num_pages), table


def _scatter(x, ck, table, page, num_pages):
    """Rows x of sequences ck into pages laid out by table (NaN elsewhere)."""
    pages = np.full((num_pages, page) + x.shape[1:], np.nan, dtype=x.dtype)
    for b in range(len(ck) - 1):
        for t in range(int(ck[b + 1] - ck[b])):
            pages[table[b, t // page], t % page] = x[ck[b] + t]
    return pages


def _varlen(rng, lq, lk, H, Hk, D, Dv, dtype=np.float32):
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
    q = rng.standard_normal((cq[-1], H, D)).astype(dtype)
    k = rng.standard_normal((ck[-1], Hk, D)).astype(dtype)
    v = rng.standard_normal((ck[-1], Hk, Dv)).astype(dtype)
    return q, k, v, cq, ck


def _paged_case(rng, lq, lk, H, Hk, D, page):
    """A varlen case with its K/V also in pages: q, k, v, cq, ck, k pages, v pages, block_table."""
    q, k, v, cq, ck = _varlen(rng, lq, lk, H, Hk, D, D)
    kp, table = _paged(rng, k, ck, page)
    return q, k, v, cq, ck, kp, _scatter(v, ck, table, page, kp.shape[0]), table


def _check_seqs(out, lse, q, k, v, cq, ck, uq, uk, dtype, **kw):
    for b in range(len(cq) - 1):
        sq = slice(cq[b], cq[b] + uq[b])
        sk = slice(ck[b], ck[b] + uk[b])
        ro, rl, _ = R.attention(q[None, sq], k[None, sk], v[None, sk], **kw)
        no, nl, _ = R.attention(q[None, sq], k[None, sk], v[None, sk], dtype=dtype, **kw)
        check_rule("out[%d]" % b, out[None, sq], ro, no, dtype)
        check_rule("lse[%d]" % b, lse[None, :, sq], rl, nl, "float32")


@pytest.mark.parametrize("page", [1, 3, 16, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_paged_varlen_numpy(rng, poison, page, causal):
    lq, lk = [1, 7, 0, 40], [9, 33, 5, 300]
    H, Hk, D = 4, 2, 32
    q, k, v, cq, ck = _varlen(rng, lq, lk, H, Hk, D, D)
    kp, table = _paged(rng, k, ck, page)
    vp = _scatter(v, ck, table, page, kp.shape[0])
    out = cflash.flash_attn_varlen_func(q, kp, vp, cq, ck, max(lq), max(lk), causal=causal, block_table=table)
    dense = cflash.flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=causal)
    assert out.shape == dense.shape
    assert not np.isnan(out).any()
    # The pages hold the same rows: the same result up to the order of sums across key blocks.
    assert np.abs(out - dense).max() <= 1e-5
    _, lse = _core.attn_varlen_fwd(q, kp, vp, cq, ck, 0, 0, 0.0, None, causal, -1, -1, 0.0, None,
                                   block_table=table)
    _check_seqs(out, lse, q, k, v, cq, ck, lq, lk, "float32", causal=causal)


def test_seqused_numpy(rng, poison):
    lq, lk = [6, 9, 4], [10, 20, 7]
    H, Hk, D = 2, 1, 16
    q, k, v, cq, ck = _varlen(rng, lq, lk, H, Hk, D, D)
    uq = np.array([3, 9, 0], dtype=np.int32)
    uk = np.array([10, 5, 0], dtype=np.int32)
    out, lse = _core.attn_varlen_fwd(q, k, v, cq, ck, 0, 0, 0.0, None, True, -1, -1, 0.0, None,
                                     seqused_q=uq, seqused_k=uk)
    # rows past seqused_q are not written: the poison stays
    for b in range(3):
        assert np.isnan(out[cq[b] + uq[b]:cq[b + 1]]).all()
    _check_seqs(out, lse, q, k, v, cq, ck, uq, uk, "float32", causal=True)
    # paged with seqused_k and no cu_seqlens_k (FA3's call)
    kp, table = _paged(rng, k, ck, 4)
    vp = _scatter(v, ck, table, 4, kp.shape[0])
    out2 = cflash.flash_attn_varlen_func(q, kp, vp, cq, None, max(lq), 0, causal=True, block_table=table,
                                         seqused_q=uq, seqused_k=uk)
    used = np.concatenate([np.arange(cq[b], cq[b] + uq[b]) for b in range(3)])
    assert np.abs(out2[used] - out[used]).max() <= 1e-5


def test_paged_errors(rng):
    q, k, v, cq, ck = _varlen(rng, [2, 3], [5, 6], 2, 2, 8, 8)
    kp, table = _paged(rng, k, ck, 4)
    bad = table.copy()
    bad[1, 0] = kp.shape[0]
    with pytest.raises(ValueError, match=r"block_table\[1, 0\]: %d, expected a page index" % kp.shape[0]):
        cflash.flash_attn_varlen_func(q, kp, kp, cq, ck, 3, 6, block_table=bad)
    with pytest.raises(ValueError, match="block_table: dtype int64, expected int32"):
        cflash.flash_attn_varlen_func(q, kp, kp, cq, ck, 3, 6, block_table=table.astype(np.int64))
    with pytest.raises(ValueError, match=r"seqused_k\[1\]: 7, expected 0 <= seqused_k <= 6"):
        cflash.flash_attn_varlen_func(q, k, v, cq, ck, 3, 6, seqused_k=np.array([5, 7], dtype=np.int32))
    with pytest.raises(ValueError, match="return_attn_probs"):
        cflash.flash_attn_varlen_func(q, kp, kp, cq, ck, 3, 6, block_table=table, return_attn_probs=True)


def test_paged_varlen_torch_autograd(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    lq, lk = [5, 0, 33], [17, 3, 70]
    H, Hk, D, page = 4, 2, 16, 8
    q, k, v, cq, ck, kp, vp, table = _paged_case(rng, lq, lk, H, Hk, D, page)
    uq = np.array([5, 0, 30], dtype=np.int32)
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, kp, vp))
    out = cflash.flash_attn_varlen_func(tq, tk, tv, torch.from_numpy(cq), torch.from_numpy(ck), max(lq), max(lk),
                                        causal=True, block_table=torch.from_numpy(table),
                                        seqused_q=torch.from_numpy(uq))
    dout = rng.standard_normal(out.shape).astype(np.float32)
    mask = np.zeros(out.shape[0], dtype=bool)
    for b in range(3):
        mask[cq[b]:cq[b] + uq[b]] = True
    dout[~mask] = 0  # rows not computed carry no gradient
    out.backward(torch.from_numpy(dout))
    # reference per sequence on dense rows, gradients scattered back to the pages
    dq_ref = np.zeros_like(q, dtype=np.float64)
    dk_ref = np.zeros(kp.shape, dtype=np.float64)
    dv_ref = np.zeros(vp.shape, dtype=np.float64)
    for b in range(3):
        sq, sk = slice(cq[b], cq[b] + uq[b]), slice(ck[b], ck[b + 1])
        ro, _, _ = R.attention(q[None, sq], k[None, sk], v[None, sk], causal=True)
        no, _, _ = R.attention(q[None, sq], k[None, sk], v[None, sk], causal=True, dtype="float32")
        check_rule("out[%d]" % b, out.detach().numpy()[None, sq], ro, no, "float32")
        rg = R.attention_bwd(dout[None, sq], q[None, sq], k[None, sk], v[None, sk], causal=True)
        dq_ref[sq] = rg[0][0]
        for t in range(lk[b]):
            dk_ref[table[b, t // page], t % page] = rg[1][0, t]
            dv_ref[table[b, t // page], t % page] = rg[2][0, t]
    mag = grad_magnitude((dq_ref, dk_ref, dv_ref))
    for name, got, ref in (("dq", tq.grad, dq_ref), ("dk", tk.grad, dk_ref), ("dv", tv.grad, dv_ref)):
        g = got.numpy()
        assert not np.isnan(g).any(), name  # unused page rows get 0, not left as they were
        assert np.abs(g - ref).max() <= 1e-4 * max(1.0, mag), name


def _mixed_step(rng, dtype=np.float32):
    """A serving step over 3 sequences: a decode row, a prefill chunk of 6, a speculative draft of
    3 (as many new keys as query rows), caches (3, 64, Hk, D) holding L = 10, 20, 5 rows."""
    H, Hk, D = 4, 2, 32
    lens = np.array([10, 20, 5], dtype=np.int32)
    rows = [1, 6, 3]
    cu = np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)
    kc = rng.standard_normal((3, 64, Hk, D)).astype(dtype)
    vc = rng.standard_normal((3, 64, Hk, D)).astype(dtype)
    q = rng.standard_normal((cu[-1], H, D)).astype(dtype)
    kn = rng.standard_normal((cu[-1], Hk, D)).astype(dtype)
    vn = rng.standard_normal((cu[-1], Hk, D)).astype(dtype)
    return q, kc, vc, kn, vn, lens, cu


def test_kvcache_varlen_mixed_numpy(rng, poison):
    q, kc, vc, kn, vn, lens, cu = _mixed_step(rng)
    kc0, vc0 = kc.copy(), vc.copy()
    out, lse = cflash.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True,
                                             cu_seqlens_q=cu, cu_seqlens_k_new=cu, max_seqlen_q=8,
                                             return_softmax_lse=True)
    assert out.shape == q.shape and lse.shape == (q.shape[1], q.shape[0])
    for b in range(3):
        L, n = int(lens[b]), int(cu[b + 1] - cu[b])
        assert np.array_equal(kc[b, L:L + n], kn[cu[b]:cu[b + 1]])  # appended in place
        assert np.array_equal(vc[b, L:L + n], vn[cu[b]:cu[b + 1]])
        assert np.array_equal(kc[b, :L], kc0[b, :L]) and np.array_equal(kc[b, L + n:], kc0[b, L + n:])
        rows = slice(cu[b], cu[b + 1])
        ro, rl, _ = R.attention(q[None, rows], kc[None, b, :L + n], vc[None, b, :L + n], causal=True)
        no, nl, _ = R.attention(q[None, rows], kc[None, b, :L + n], vc[None, b, :L + n], causal=True,
                                dtype="float32")
        check_rule("out[%d]" % b, out[None, rows], ro, no, "float32")
        check_rule("lse[%d]" % b, lse[None, :, rows], rl, nl, "float32")
        # the same sequence alone, in batch mode, on the caches as they were
        kb, vb = kc0[b:b + 1].copy(), vc0[b:b + 1].copy()
        ob = cflash.flash_attn_with_kvcache(q[None, rows], kb, vb, kn[None, rows], vn[None, rows],
                                            cache_seqlens=lens[b:b + 1], causal=True)
        assert np.abs(ob[0] - out[rows]).max() <= 1e-6
    with pytest.raises(ValueError, match="max_seqlen_q: 2, but a sequence has 6 query rows"):
        cflash.flash_attn_with_kvcache(q, kc0.copy(), vc0.copy(), kn, vn, cache_seqlens=lens, cu_seqlens_q=cu,
                                       cu_seqlens_k_new=cu, max_seqlen_q=2)


def test_kvcache_varlen_mixed_torch(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q, kc, vc, kn, vn, lens, cu = _mixed_step(rng)
    ref_kc, ref_vc = kc.copy(), vc.copy()
    ref = cflash.flash_attn_with_kvcache(q, ref_kc, ref_vc, kn, vn, cache_seqlens=lens, causal=True,
                                         cu_seqlens_q=cu, cu_seqlens_k_new=cu)
    tkc, tvc = torch.from_numpy(kc), torch.from_numpy(vc)
    out = cflash.flash_attn_with_kvcache(torch.from_numpy(q), tkc, tvc, torch.from_numpy(kn), torch.from_numpy(vn),
                                         cache_seqlens=torch.from_numpy(lens), causal=True,
                                         cu_seqlens_q=torch.from_numpy(cu), cu_seqlens_k_new=torch.from_numpy(cu))
    assert isinstance(out, torch.Tensor) and out.shape == q.shape
    assert np.array_equal(out.numpy(), ref)
    assert np.array_equal(tkc.numpy(), ref_kc) and np.array_equal(tvc.numpy(), ref_vc)


def test_paged_varlen_sink_torch_autograd(rng):
    """learnable_sink with block_table and seqused_k on torch tensors (the custom op carries all
    three): out and dsink against the fp64 reference on the gathered keys; dq, dk, dv equal to the
    dense call's (dk, dv gathered from the pages)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    lq, lk = [3, 12, 1], [20, 12, 33]
    H, Hk, D, page = 4, 2, 16, 5
    q, k, v, cq, ck, kp, vp, table = _paged_case(rng, lq, lk, H, Hk, D, page)
    kp, vp = np.nan_to_num(kp), np.nan_to_num(vp)  # rows no sequence uses: 0 (their gradient is 0)
    uk = np.array([20, 7, 33], dtype=np.int32)
    sink = rng.standard_normal(H).astype(np.float32)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    tq, tk, tv, ts = (torch.from_numpy(x).requires_grad_() for x in (q, kp, vp, sink))
    out = cflash.flash_attn_varlen_func(tq, tk, tv, torch.from_numpy(cq), None, max(lq), 0, causal=True,
                                        block_table=torch.from_numpy(table), seqused_k=torch.from_numpy(uk),
                                        learnable_sink=ts)
    out.backward(torch.from_numpy(dout))
    # dense: the used keys of each sequence packed
    used = np.concatenate([np.arange(ck[b], ck[b] + uk[b]) for b in range(3)])
    cu = np.concatenate([[0], np.cumsum(uk)]).astype(np.int32)
    dq_, dk_, dv_, ds_ = (torch.from_numpy(x).requires_grad_() for x in (q, k[used], v[used], sink))
    dense = cflash.flash_attn_varlen_func(dq_, dk_, dv_, torch.from_numpy(cq), torch.from_numpy(cu), max(lq),
                                          int(uk.max()), causal=True, learnable_sink=ds_)
    dense.backward(torch.from_numpy(dout))
    assert (out - dense).abs().max() <= 1e-5
    def ref(qs, ks, vs, dtype):  # causal attention with the sink, in dtype
        qt, kt, vt, st = (torch.from_numpy(x).to(dtype) for x in (qs, ks, vs, sink))
        kk, vv = kt.repeat_interleave(H // Hk, 2), vt.repeat_interleave(H // Hk, 2)
        s = torch.einsum("bihd,bjhd->bhij", qt, kk) * D ** -0.5
        Sq, Sk = s.shape[-2], s.shape[-1]
        s = s.masked_fill(~torch.ones(Sq, Sk, dtype=torch.bool).tril(Sk - Sq), float("-inf"))
        s = torch.cat([s, st.view(1, H, 1, 1).expand(1, H, Sq, 1)], -1)
        return torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1)[..., :Sk], vv).numpy()

    for b in range(3):
        sq, sk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b] + uk[b])
        args = (q[None, sq], k[None, sk], v[None, sk])
        check_rule("out[%d]" % b, out.detach().numpy()[None, sq], ref(*args, torch.float64), ref(*args, torch.float32),
                   "float32")
    assert torch.allclose(tq.grad, dq_.grad, rtol=0, atol=1e-5)
    assert torch.allclose(ts.grad, ds_.grad, rtol=0, atol=1e-4)
    gk, gv = np.zeros_like(kp), np.zeros_like(vp)
    for b in range(3):
        for t in range(int(uk[b])):
            gk[table[b, t // page], t % page] = dk_.grad.numpy()[cu[b] + t]
            gv[table[b, t // page], t % page] = dv_.grad.numpy()[cu[b] + t]
    assert np.abs(tk.grad.numpy() - gk).max() <= 1e-5 and np.abs(tv.grad.numpy() - gv).max() <= 1e-5
