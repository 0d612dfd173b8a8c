"""Drop-in: a small GPT-style block written against flash-attn's API (fused residual + RMSNorm,
rotary embedding in place on a GQA-packed qkv, causal GQA attention), run with cflash by replacing
`flash_attn` with `cflash` in its import lines, against the same block in pure PyTorch (SDPA),
forward and backward. Skipped, saying so, when torch is not installed."""

import re
import types

import pytest
from conftest import require

torch = require("torch", "PyTorch is not installed: the drop-in test needs it")
nn = torch.nn
F = torch.nn.functional

# The model as a user of flash-attn writes it.
FLASH_ATTN_BLOCK = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from flash_attn import flash_attn_func
from flash_attn.layers.rotary import RotaryEmbedding
from flash_attn.ops.triton.layer_norm import RMSNorm


class Block(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.norm1 = RMSNorm(dim, eps=1e-5)
        self.wqkv = nn.Linear(dim, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.rotary_emb = RotaryEmbedding(self.head_dim)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = RMSNorm(dim, eps=1e-5)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x, residual=None):
        B, S, dim = x.shape
        h, residual = self.norm1(x, residual=residual, prenorm=True)
        qkv = self.wqkv(h).view(B, S, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        qkv = self.rotary_emb(qkv, num_heads_q=self.n_heads)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        o = flash_attn_func(q, k, v, causal=True)
        x = self.out_proj(o.reshape(B, S, dim))
        h, residual = self.norm2(x, residual=residual, prenorm=True)
        return self.fc2(F.gelu(self.fc1(h))), residual
'''


def load_with_cflash():
    src = re.sub(r"\bfrom flash_attn\b", "from cflash", FLASH_ATTN_BLOCK)
    assert "from cflash import flash_attn_func" in src and "flash_attn_func(q, k, v" in src
    mod = types.ModuleType("dropin_block")
    exec(compile(src, "dropin_block", "exec"), mod.__dict__)
    return mod.Block


class TorchBlock(nn.Module):
    """The same block in plain PyTorch: RMSNorm by hand, NeoX rotary, SDPA with repeated KV heads."""

    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.norm1 = nn.Module()
        self.norm1.weight = nn.Parameter(torch.ones(dim))
        self.wqkv = nn.Linear(dim, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.Module()
        self.norm2.weight = nn.Parameter(torch.ones(dim))
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    @staticmethod
    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w

    def rotate(self, x, S):
        d = self.head_dim
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        ang = torch.outer(torch.arange(S, dtype=torch.float32), inv)
        cos, sin = ang.cos().to(x.dtype)[:, None], ang.sin().to(x.dtype)[:, None]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, x, residual=None):
        B, S, dim = x.shape
        residual = x if residual is None else x + residual
        h = self.rms(residual, self.norm1.weight)
        qkv = self.wqkv(h).view(B, S, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        q, k = self.rotate(q, S), self.rotate(k, S)
        g = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = self.out_proj(o.transpose(1, 2).reshape(B, S, dim))
        residual = x + residual
        h = self.rms(residual, self.norm2.weight)
        return self.fc2(F.gelu(self.fc1(h))), residual


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 6e-2)], ids=["fp32", "bf16"])
def test_gpt_block_drop_in(dtype, tol):
    torch.manual_seed(0)
    dim, H, Hk, B, S = 64, 4, 2, 2, 19
    Block = load_with_cflash()
    ours, theirs = Block(dim, H, Hk), TorchBlock(dim, H, Hk)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    theirs.load_state_dict(ours.state_dict())
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = torch.randn(B, S, dim, dtype=dtype)
    res0 = torch.randn(B, S, dim, dtype=dtype)
    g_out, g_res = torch.randn(B, S, dim, dtype=dtype), torch.randn(B, S, dim, dtype=dtype)

    def run(block):
        xi, ri = x.clone().requires_grad_(True), res0.clone().requires_grad_(True)
        block.zero_grad()
        out, res = block(xi, ri)
        out2, _ = block(out, res)  # two blocks deep, the second without a fresh residual
        (out2.float() * g_out.float()).sum().add((res.float() * g_res.float()).sum()).backward()
        grads = {n: p.grad.float().clone() for n, p in block.named_parameters()}
        return out2.float(), xi.grad.float(), ri.grad.float(), grads

    o1, gx1, gr1, gp1 = run(ours)
    o2, gx2, gr2, gp2 = run(theirs)

    def close(a, b, what):
        scale = max(1.0, b.abs().max().item())
        err = (a - b).abs().max().item()
        assert err <= tol * scale, "%s: max error %.3g (scale %.3g, %s)" % (what, err, scale, dtype)

    close(o1, o2, "output")
    close(gx1, gx2, "d x")
    close(gr1, gr2, "d residual")
    assert set(gp1) == set(gp2)
    for n in gp1:
        close(gp1[n], gp2[n], "d " + n)


def test_gpt_block_drop_in_compiled():
    """The cflash block under torch.compile (fullgraph): same output and gradients as eager."""
    torch.manual_seed(1)
    Block = load_with_cflash()
    blk = Block(32, 4, 2)
    x = torch.randn(2, 11, 32)

    def run(fn):
        blk.zero_grad()
        out, res = fn(x)
        (out.square().sum() + res.sum()).backward()
        return out.detach(), {n: p.grad.clone() for n, p in blk.named_parameters()}

    o1, g1 = run(blk)
    torch._dynamo.reset()
    o2, g2 = run(torch.compile(blk, backend="aot_eager", fullgraph=True))
    assert torch.allclose(o1, o2, atol=1e-5)
    for n in g1:
        assert torch.allclose(g1[n], g2[n], atol=1e-4), n
