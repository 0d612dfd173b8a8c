"""cflash.attn_merge: combine attention results computed over disjoint key sets by their LSE (what
split-KV decoding and ring attention do), on libcflash."""

from . import _core
from ._tensor import is_torch, to_array


def attn_merge(out_partial, lse_partial):
    """out_partial (splits, batch, seqlen_q, nheads, headdim), lse_partial float32 (splits, batch,
    nheads, seqlen_q) -> out (batch, seqlen_q, nheads, headdim), lse (batch, nheads, seqlen_q):
    lse = log(sum_s exp(lse_s)), out = sum_s exp(lse_s - lse) * out_s. Parts with lse -inf add
    nothing; a row where every part is -inf gets out 0, lse -inf. No backward."""
    out_partial, lse_partial = to_array(out_partial, "out_partial"), to_array(lse_partial, "lse_partial")
    if is_torch(out_partial):
        from . import _torch

        return _torch.torch.ops.cflash.attn_merge(out_partial, lse_partial)
    return _core.attn_merge(out_partial, lse_partial)
