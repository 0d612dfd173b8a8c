"""flash_attn.ops.triton.rotary's apply_rotary (the function under apply_rotary_emb), served by
libcflash: x (batch, seqlen, nheads, headdim) or varlen (total, nheads, headdim)."""

from ...layers.rotary import apply_rotary_emb


def apply_rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None, interleaved=False,
                 inplace=False, conjugate=False):
    if conjugate:
        sin = -sin
    return apply_rotary_emb(x, cos, sin, interleaved, inplace, seqlen_offsets, cu_seqlens, max_seqlen)
