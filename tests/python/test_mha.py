"""cflash.modules.mha (flash_attn.modules.mha's MHA and attention layers): the flash path against the
plain-PyTorch path of the same module with the same weights (forward and gradients), that path
against torch's SDPA, generation step by step with a KV cache against one causal forward, varlen
against a padded batch with a key padding mask, flash-attn's parameter names, and each refusal."""

import math

import pytest
from conftest import require

torch = require("torch", "PyTorch is not installed: cflash.modules needs it")
F = torch.nn.functional

from cflash.modules.mha import MHA, CrossAttention, SelfAttention, get_alibi_slopes  # noqa: E402
from cflash.utils.generation import InferenceParams  # noqa: E402


def pair(seed, **kw):
    """The flash module and the plain-PyTorch one, with the same (random) weights."""
    torch.manual_seed(seed)
    ref = MHA(use_flash_attn=False, **kw)
    for p in ref.parameters():  # biases too: nn.Linear's init leaves no pattern to hide behind
        torch.nn.init.normal_(p, std=0.2)
    fast = MHA(use_flash_attn=True, **kw)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return fast, ref


def close(a, b, tol, what=""):
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"{what} max error {err:.3g} > {tol:.3g}"


def test_parameter_names_and_shapes():
    m = MHA(64, 4, num_heads_kv=2, qkv_proj_bias=False)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"Wqkv.weight": (64 + 2 * 2 * 16, 64), "out_proj.weight": (64, 64), "out_proj.bias": (64,)}
    c = MHA(64, 8, cross_attn=True)
    assert sorted(c.state_dict()) == ["Wkv.bias", "Wkv.weight", "Wq.bias", "Wq.weight", "out_proj.bias",
                                      "out_proj.weight"]
    assert tuple(c.Wkv.weight.shape) == (2 * 64, 64)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk", [(37, 37), (5, 23)])
def test_plain_attention_matches_sdpa(causal, sq, sk):
    """The reference path itself, against torch's SDPA (bottom-right causal mask as a boolean)."""
    torch.manual_seed(3)
    q, k, v = torch.randn(2, sq, 4, 16), torch.randn(2, sk, 4, 16), torch.randn(2, sk, 4, 16)
    mask = None
    if causal:
        mask = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + sk - sq
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)
    got = CrossAttention(causal=causal)(q, torch.stack([k, v], dim=2))
    close(got, want, 1e-5)
    if sq == sk:
        close(SelfAttention(causal=causal)(torch.stack([q, k, v], dim=2)), want, 1e-5)


@pytest.mark.parametrize("heads_kv", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rotary", [0, 8])
def test_flash_matches_plain_forward_backward(heads_kv, causal, rotary):
    fast, ref = pair(11 + heads_kv, embed_dim=64, num_heads=4, num_heads_kv=heads_kv, causal=causal,
                     rotary_emb_dim=rotary)
    x = torch.randn(2, 37, 64)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    of, orf = fast(xf), ref(xr)
    close(of, orf, 2e-5)
    g = torch.randn_like(of)
    of.backward(g)
    orf.backward(g)
    close(xf.grad, xr.grad, 5e-5)
    for (name, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        close(pf.grad, pr.grad, 5e-5, name)


def test_checkpointing_and_residual():
    """checkpointing recomputes the attention in the backward (same gradients); return_residual
    returns x beside the output."""
    fast, ref = pair(21, embed_dim=32, num_heads=4, causal=True, return_residual=True)
    ck = MHA(32, 4, causal=True, return_residual=True, checkpointing=True, use_flash_attn=True)
    ck.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 11, 32)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    (of, rf), (oc, rc) = fast(xs[0]), ck(xs[1])
    assert rf is xs[0] and rc is xs[1]
    close(oc, of, 0.0)
    g = torch.randn_like(of)
    of.backward(g)
    oc.backward(g)
    close(xs[1].grad, xs[0].grad, 1e-6, "x")
    for (name, pc), pf in zip(ck.named_parameters(), fast.parameters()):
        close(pc.grad, pf.grad, 1e-6, name)


def test_cross_attention():
    fast, ref = pair(5, embed_dim=48, num_heads=6, num_heads_kv=3, cross_attn=True)
    x, ctx = torch.randn(3, 9, 48), torch.randn(3, 21, 48)
    close(fast(x, x_kv=ctx), ref(x, x_kv=ctx), 2e-5)
    close(fast(x), ref(x), 2e-5)  # x_kv None: keys and values from x


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("rotary,heads_kv", [(0, 4), (16, 2), (8, 1)])
def test_generation_matches_one_forward(flash, rotary, heads_kv):
    """A prompt, then one token per step with the cache (flash: flash_attn_with_kvcache appends and
    rotates), equals one causal forward over the whole sequence, row by row."""
    fast, ref = pair(7, embed_dim=64, num_heads=4, num_heads_kv=heads_kv, causal=True, rotary_emb_dim=rotary,
                     layer_idx=3)
    m = (fast if flash else ref).eval()
    x = torch.randn(2, 13, 64)
    with torch.no_grad():
        want = ref.eval()(x)
        params = InferenceParams(max_seqlen=16, max_batch_size=2)
        got = [m(x[:, :6], inference_params=params)]
        params.seqlen_offset = 6
        for t in range(6, 13):
            got.append(m(x[:, t:t + 1], inference_params=params))
            params.seqlen_offset += 1
    close(torch.cat(got, dim=1), want, 5e-5)
    assert tuple(params.key_value_memory_dict[3].shape) == (2, 16, 2, heads_kv, 16)


def test_generation_cross_attention():
    fast, ref = pair(9, embed_dim=32, num_heads=4, cross_attn=True, causal=True, layer_idx=0)
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        want = ref.eval()(x)
        params = InferenceParams(max_seqlen=8, max_batch_size=1)
        got = [fast.eval()(x[:, :2], inference_params=params)]
        for t in range(2, 5):
            params.seqlen_offset = t
            got.append(fast(x[:, t:t + 1], inference_params=params))
    close(torch.cat(got, dim=1), want, 5e-5)


def test_varlen_matches_padded_batch():
    """use_flash_attn with cu_seqlens over the unpadded tokens, against the plain path on the padded
    batch with key_padding_mask (rows of padding left out)."""
    fast, ref = pair(13, embed_dim=64, num_heads=4, num_heads_kv=2)
    lens = [7, 12, 3]
    x = torch.randn(3, 12, 64)
    keep = torch.arange(12)[None, :] < torch.tensor(lens)[:, None]
    want = ref(x, key_padding_mask=keep)[keep]
    cu = torch.tensor([0, 7, 19, 22], dtype=torch.int32)
    close(fast(x[keep], cu_seqlens=cu, max_seqlen=12), want, 2e-5)


def test_alibi_and_window():
    torch.manual_seed(17)
    assert get_alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    assert get_alibi_slopes(6) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    m = MHA(48, 6, causal=True, use_alibi=True, window_size=(5, 0), use_flash_attn=True)
    x = torch.randn(2, 19, 48)
    q, k, v = m.Wqkv(x).unflatten(-1, (3, 6, 8)).unbind(dim=2)
    # the reference: scores with the ALiBi bias -slope |i - j| and the window i - 5 <= j <= i
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(8)
    i, j = torch.arange(19)[:, None], torch.arange(19)[None, :]
    s = s - torch.tensor(get_alibi_slopes(6))[:, None, None] * (i - j).abs()
    s = s.masked_fill((j > i) | (j < i - 5), float("-inf"))
    want = m.out_proj(torch.einsum("bhts,bshd->bthd", torch.softmax(s, -1), v).flatten(-2))
    close(m(x), want, 2e-5)


def test_refusals():
    with pytest.raises(NotImplementedError, match="dwconv"):
        MHA(32, 4, dwconv=True)
    with pytest.raises(NotImplementedError, match="fused_dense"):
        MHA(32, 4, fused_bias_fc=True)
    with pytest.raises(ValueError, match="use_alibi needs use_flash_attn"):
        MHA(32, 4, use_alibi=True)
    with pytest.raises(ValueError, match="window_size needs use_flash_attn"):
        MHA(32, 4, window_size=(4, 0))
    with pytest.raises(ValueError, match="multiple of num_heads_kv"):
        MHA(32, 4, num_heads_kv=3)
    m = MHA(32, 4, use_flash_attn=True, layer_idx=0)
    x = torch.randn(1, 5, 32)
    with pytest.raises(NotImplementedError, match="mixer_subset"):
        m(x, mixer_subset=slice(0, 1))
    with pytest.raises(ValueError, match="key_padding_mask needs use_flash_attn=False"):
        m(x, key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not fit the cache"):
        m(x, inference_params=InferenceParams(max_seqlen=4, max_batch_size=1))
    with pytest.raises(ValueError, match="layer_idx"):
        MHA(32, 4)(x, inference_params=InferenceParams(max_seqlen=8, max_batch_size=1))
