"""Ring attention over torch.distributed: each rank keeps its queries and passes its K/V block
around the ring with P2P (batch_isend_irecv), computing its queries against the block it holds
while the next one travels; partial results merge by LSE (cflash_attn_merge). The backward passes
K/V around again and, with each block, the fp32 sum of its dK/dV so far, which ends at its owner.
The same code runs gloo on CPU tensors and NCCL on CUDA tensors (the library runs on torch's
current stream; the collectives order themselves against it)."""

import torch
import torch.distributed as dist

from .. import _core
from .._merge import attn_merge
from ._plan import dense_blocks, varlen_blocks

# Bytes and messages per rank since the last reset, for bench/ring_bench.py (comm_stats()).
STATS = {}


def reset_stats():
    for phase in ("forward", "backward"):
        STATS[phase] = {"sent": 0, "received": 0, "messages": 0}


reset_stats()


class Ring:
    """This rank's place in the ring of `group` (the default group when None; a single process
    when torch.distributed is not initialised)."""

    def __init__(self, group):
        if group is None and not (dist.is_available() and dist.is_initialized()):
            self.group, self.rank, self.world = None, 0, 1
            return
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self.next = dist.get_global_rank(self.group, (self.rank + 1) % self.world)
        self.prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world)

    def start(self, send, recv, phase):
        """Posts send -> next rank and recv <- previous rank; returns the requests."""
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in send]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group) for t in recv]
        st = STATS[phase]
        st["sent"] += sum(t.numel() * t.element_size() for t in send)
        st["received"] += sum(t.numel() * t.element_size() for t in recv)
        st["messages"] += len(send)
        return dist.batch_isend_irecv(ops)

    @staticmethod
    def wait(reqs):
        for r in reqs:
            r.wait()

    def broadcast_seed(self, seed, device):
        """Rank 0's seed on every rank: the dropout mask is keyed by global (b, h, i, j), so all
        ranks must use one seed."""
        if self.world == 1:
            return seed
        t = torch.tensor([seed], dtype=torch.int64, device=device)
        dist.broadcast(t, src=dist.get_global_rank(self.group, 0), group=self.group)
        return int(t.item())


class Config:
    """Everything about a call but its tensors: the ring, the layout, the attention parameters."""

    def __init__(self, ring, varlen, layout, dropout_p, scale, causal, window, softcap, alibi, deterministic,
                 seed, heads_per_pass, cu_seqlens=None):
        self.ring, self.varlen, self.layout = ring, varlen, layout
        self.dropout_p, self.scale, self.causal, self.window = dropout_p, scale, causal, window
        self.softcap, self.has_alibi, self.deterministic, self.seed = softcap, alibi, deterministic, seed
        self.heads_per_pass, self.cu = heads_per_pass, cu_seqlens
        self._plans = {}

    def check_varlen(self, local):
        """Plans every pair of ranks, so that a case the library cannot serve raises on every rank
        before any message (a rank raising alone would leave the others waiting)."""
        r = self.ring
        for a in range(r.world):
            for b in range(r.world):
                varlen_blocks(self.cu, a, b, r.world, local, self.causal, self.window, self.has_alibi,
                              self.dropout_p)

    def blocks(self, src, local):
        if src not in self._plans:
            r = self.ring
            if self.varlen:
                self._plans[src] = varlen_blocks(self.cu, r.rank, src, r.world, local, self.causal, self.window,
                                                 self.has_alibi, self.dropout_p)
            else:
                self._plans[src] = dense_blocks(self.layout, r.rank, src, r.world, local, self.causal,
                                                self.window)
        return self._plans[src]

    def passes(self, hk):
        """KV-head ranges, one ring pass each: fewer heads per pass keep the travelling buffers
        small (memory per rank) at the cost of more, smaller messages. Dropout runs all heads in
        one pass: the library keys its mask by the call's own head index."""
        n = self.heads_per_pass
        if self.dropout_p > 0:
            if n is not None and n < hk:
                raise ValueError("heads_per_pass: %d, expected None or >= nheads_k = %d with dropout (the "
                                 "dropout mask is keyed by the head index within one call)" % (n, hk))
            n = hk
        elif n is None:
            n = -(-hk // 8)  # at most 8 passes
        elif n < 1:
            raise ValueError("heads_per_pass: %d, expected None or >= 1" % n)
        return [(h, min(h + n, hk)) for h in range(0, hk, n)]


# ---- Views ---------------------------------------------------------------------------------------


def _pack(k, v):
    """k and v copied into one contiguous buffer: one message per ring step."""
    buf = torch.empty(k.numel() + v.numel(), dtype=k.dtype, device=k.device)
    buf[:k.numel()].view(k.shape).copy_(k)
    buf[k.numel():].view(v.shape).copy_(v)
    return buf


def _unpack(buf, kshape, vshape):
    nk = kshape.numel()
    return buf[:nk].view(kshape), buf[nk:].view(vshape)


def _lse_dims(cfg):
    """(head dim, row dim) of the lse: (B, H, S) or varlen (H, total)."""
    return (0, 1) if cfg.varlen else (1, 2)


def _slopes(alibi, a, b, blk):
    """ALiBi slopes of query heads [a, b); [B, H] slopes of a varlen call keep its sequences."""
    if alibi is None:
        return None
    s = alibi.narrow(-1, a, b - a)
    if s.dim() == 2 and blk is not None and blk.cu_q is not None:
        s = s[:len(blk.cu_q) - 1]
    return s


def _call_args(cfg, blk):
    return dict(seed=cfg.seed, q_offset=blk.q_offset, k_offset=blk.k_offset)


# ---- Forward ---------------------------------------------------------------------------------------


def _block_fwd(cfg, q, kb, vb, alibi, blk):
    rd = 0 if cfg.varlen else 1
    qb, kk, vv = q.narrow(rd, blk.q0, blk.q1 - blk.q0), kb.narrow(rd, blk.k0, blk.k1 - blk.k0), \
        vb.narrow(rd, blk.k0, blk.k1 - blk.k0)
    wl, wr = blk.window
    if cfg.varlen:
        return _core.attn_varlen_fwd(qb, kk, vv, blk.cu_q, blk.cu_k, 0, 0, cfg.dropout_p, cfg.scale, blk.causal, wl,
                                     wr, cfg.softcap, alibi, **_call_args(cfg, blk))
    return _core.attn_fwd(qb, kk, vv, cfg.dropout_p, cfg.scale, blk.causal, wl, wr, cfg.softcap, alibi,
                          **_call_args(cfg, blk))


def _merge_into(cfg, acc_o, acc_l, o, lse, blk):
    """acc (fp32) <- merge(acc, block result) over the block's query rows, by the library."""
    n = blk.q1 - blk.q0
    hd, ld = _lse_dims(cfg)
    a = acc_o.narrow(0 if cfg.varlen else 1, blk.q0, n)
    al = acc_l.narrow(ld, blk.q0, n)
    parts, lparts = torch.stack([a, o.float()]), torch.stack([al, lse])
    if cfg.varlen:  # merged as B = 1 views
        parts, lparts = parts.unsqueeze(1), lparts.unsqueeze(1)
    m, ml = attn_merge(parts, lparts)
    a.copy_(m.view_as(a))
    al.copy_(ml.view_as(al))


def forward(cfg, q, k, v, alibi):
    """out like q (last dim Dv), lse fp32: (B, H, S) or varlen (H, total)."""
    ring = cfg.ring
    rd, hdim = (0, 1) if cfg.varlen else (1, 2)
    H, Hk, local = q.shape[hdim], k.shape[hdim], q.shape[rd]
    G = H // Hk
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    lhd, _ = _lse_dims(cfg)
    lse = torch.empty((H, local) if cfg.varlen else (q.shape[0], H, local), dtype=torch.float32, device=q.device)
    for h0, h1 in cfg.passes(Hk):
        qc = q.narrow(hdim, h0 * G, (h1 - h0) * G)
        kc, vc = k.narrow(hdim, h0, h1 - h0), v.narrow(hdim, h0, h1 - h0)
        oc, lc = out.narrow(hdim, h0 * G, (h1 - h0) * G), lse.narrow(lhd, h0 * G, (h1 - h0) * G)
        acc_o = torch.zeros(oc.shape, dtype=torch.float32, device=q.device)
        acc_l = torch.full(lc.shape, float("-inf"), dtype=torch.float32, device=q.device)
        cur = _pack(kc, vc)
        nxt = torch.empty_like(cur) if ring.world > 1 else None
        for s in range(ring.world):
            src = (ring.rank - s) % ring.world
            reqs = ring.start([cur], [nxt], "forward") if s < ring.world - 1 else None
            kb, vb = _unpack(cur, kc.shape, vc.shape)
            for blk in cfg.blocks(src, local):
                o, bl = _block_fwd(cfg, qc, kb, vb, _slopes(alibi, h0 * G, h1 * G, blk), blk)
                _merge_into(cfg, acc_o, acc_l, o, bl, blk)
                del o, bl  # before the next block's call: the peak holds one block's results
            if reqs:
                ring.wait(reqs)
                cur, nxt = nxt, cur
        oc.copy_(acc_o)
        lc.copy_(acc_l)
    return out, lse


# ---- Backward ----------------------------------------------------------------------------------
# In the forward pass each block gave out_b, lse_b, merged into out, lse. With the merged lse, a
# block's scores give the final probabilities P = exp(S - lse), so the library's backward of the
# block with (out, lse) of the whole row yields exactly that block's share: dq sums over blocks,
# dk and dv of a block sum over the ranks whose queries visit it.


def _block_bwd(cfg, dout, q, kb, vb, out, lse, alibi, blk):
    rd = 0 if cfg.varlen else 1
    n, m = blk.q1 - blk.q0, blk.k1 - blk.k0
    qs = [x.narrow(rd, blk.q0, n) for x in (dout, q)]
    ks = [x.narrow(rd, blk.k0, m) for x in (kb, vb)]
    ob = out.narrow(rd, blk.q0, n)
    lb = lse.narrow(_lse_dims(cfg)[1], blk.q0, n)
    wl, wr = blk.window
    if cfg.varlen:
        return _core.attn_varlen_bwd(qs[0], qs[1], ks[0], ks[1], ob, lb, blk.cu_q, blk.cu_k, 0, 0, cfg.dropout_p,
                                     cfg.scale, blk.causal, wl, wr, cfg.softcap, alibi, cfg.deterministic,
                                     **_call_args(cfg, blk))
    return _core.attn_bwd(qs[0], qs[1], ks[0], ks[1], ob, lb, cfg.dropout_p, cfg.scale, blk.causal, wl, wr,
                          cfg.softcap, alibi, cfg.deterministic, **_call_args(cfg, blk))


def backward(cfg, dout, q, k, v, out, lse, alibi):
    ring = cfg.ring
    rd, hdim = (0, 1) if cfg.varlen else (1, 2)
    H, Hk, local = q.shape[hdim], k.shape[hdim], q.shape[rd]
    G = H // Hk
    lhd, _ = _lse_dims(cfg)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for h0, h1 in cfg.passes(Hk):
        qa, qn = h0 * G, (h1 - h0) * G
        qc, doc, oc = (x.narrow(hdim, qa, qn) for x in (q, dout, out))
        lc = lse.narrow(lhd, qa, qn)
        kc, vc = k.narrow(hdim, h0, h1 - h0), v.narrow(hdim, h0, h1 - h0)
        # fp32 sums of dq over the blocks: in dq itself when it is fp32
        dqc = dq.narrow(hdim, qa, qn)
        dq_acc = dqc.zero_() if dq.dtype == torch.float32 else torch.zeros(qc.shape, dtype=torch.float32,
                                                                             device=q.device)
        cur = _pack(kc, vc)
        nxt = torch.empty_like(cur) if ring.world > 1 else None
        # dacc: the fp32 dK/dV sum of the block this rank holds; it travels with the block.
        dacc = torch.zeros(cur.numel(), dtype=torch.float32, device=q.device)
        dnxt = torch.empty_like(dacc) if ring.world > 1 else None
        dreqs = None
        for s in range(ring.world):
            src = (ring.rank - s) % ring.world
            reqs = ring.start([cur], [nxt], "backward") if s < ring.world - 1 else None
            kb, vb = _unpack(cur, kc.shape, vc.shape)
            for blk in cfg.blocks(src, local):
                g = _block_bwd(cfg, doc, qc, kb, vb, oc, lc, _slopes(alibi, qa, qa + qn, blk), blk)
                dq_acc.narrow(rd, blk.q0, blk.q1 - blk.q0).add_(g[0])
                if dreqs:  # the block's sum so far, sent by the previous rank after its step
                    ring.wait(dreqs)
                    dreqs, dacc, dnxt = None, dnxt, dacc
                dka, dva = _unpack(dacc, kc.shape, vc.shape)
                dka.narrow(rd, blk.k0, blk.k1 - blk.k0).add_(g[1])
                dva.narrow(rd, blk.k0, blk.k1 - blk.k0).add_(g[2])
                del g
            if dreqs:
                ring.wait(dreqs)
                dreqs, dacc, dnxt = None, dnxt, dacc
            if reqs:
                ring.wait(reqs)
                cur, nxt = nxt, cur
            if ring.world > 1:  # pass this block's sum on; after the last step it reaches its owner
                dreqs = ring.start([dacc], [dnxt], "backward")
        if dreqs:
            ring.wait(dreqs)
            dacc = dnxt
        dka, dva = _unpack(dacc, kc.shape, vc.shape)
        if dq_acc is not dqc:
            dqc.copy_(dq_acc)
        dk.narrow(hdim, h0, h1 - h0).copy_(dka)
        dv.narrow(hdim, h0, h1 - h0).copy_(dva)
    return dq, dk, dv


class RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, alibi, cfg):
        out, lse = forward(cfg, q, k, v, alibi)
        ctx.cfg = cfg
        ctx.save_for_backward(q, k, v, out, lse, alibi)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, alibi = ctx.saved_tensors
        dq, dk, dv = backward(ctx.cfg, dout.contiguous(), q, k, v, out, lse, alibi)
        return dq, dk, dv, None, None
