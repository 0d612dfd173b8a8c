"""RotaryEmbedding (torch.nn.Module), as flash-attn's: cos/sin tables cached in fp32 math and
stored in the input's dtype, optional XPos scaling (scale_base), applied in place to qkv / q, kv."""

from typing import Optional, Tuple, Union

import torch

from .rotary import apply_rotary_emb, apply_rotary_emb_kv_, apply_rotary_emb_qkv_


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, dim: int, base=10000.0, interleaved=False, scale_base=None, device=None):
        super().__init__()
        self.dim = dim
        self.base = float(base)
        self.interleaved = interleaved
        self.scale_base = scale_base
        self.register_buffer("inv_freq", self._inv_freq(device), persistent=False)
        scale = self._xpos_scale(device) if scale_base is not None else None
        self.register_buffer("scale", scale, persistent=False)
        self._seq_len_cached = 0
        self._cos_cached = self._sin_cached = None
        self._cos_k_cached = self._sin_k_cached = None

    def _inv_freq(self, device=None):
        i = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32)
        return 1.0 / (self.base ** (i / self.dim))

    def _xpos_scale(self, device=None):
        i = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32)
        return (i + 0.4 * self.dim) / (1.4 * self.dim)

    def _update_cos_sin_cache(self, seqlen, device=None, dtype=None):
        stale = (seqlen > self._seq_len_cached or self._cos_cached is None
                 or self._cos_cached.device != device or self._cos_cached.dtype != dtype
                 or (self.training and not torch.compiler.is_compiling() and self._cos_cached.is_inference()))
        if not stale:
            return
        self._seq_len_cached = seqlen
        t = torch.arange(seqlen, device=device, dtype=torch.float32)
        inv_freq = self.inv_freq if self.inv_freq.dtype == torch.float32 else self._inv_freq(device)
        freqs = torch.outer(t, inv_freq.to(device))  # fp32 even when the model is bf16
        if self.scale is None:
            self._cos_cached = torch.cos(freqs).to(dtype)
            self._sin_cached = torch.sin(freqs).to(dtype)
            return
        scale = self.scale if self.scale.dtype == torch.float32 else self._xpos_scale(self.scale.device)
        power = (torch.arange(seqlen, dtype=torch.float32, device=device) - seqlen // 2) / self.scale_base
        s = scale.to(device) ** power[:, None]
        self._cos_cached = (torch.cos(freqs) * s).to(dtype)
        self._sin_cached = (torch.sin(freqs) * s).to(dtype)
        self._cos_k_cached = (torch.cos(freqs) / s).to(dtype)
        self._sin_k_cached = (torch.sin(freqs) / s).to(dtype)

    def forward(self, qkv: torch.Tensor, kv: Optional[torch.Tensor] = None,
                seqlen_offset: Union[int, torch.Tensor] = 0, max_seqlen: Optional[int] = None,
                num_heads_q: Optional[int] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """qkv (batch, seqlen, 3, nheads, headdim) or (batch, seqlen, nheads_q + 2 * nheads_k,
        headdim) with num_heads_q; or q (batch, seqlen, nheads, headdim) when kv (batch, seqlen, 2,
        nheads_k, headdim) is given. Rotates in place. seqlen_offset int or (batch,); with a
        tensor, pass max_seqlen so the tables cover every position."""
        seqlen = qkv.shape[1]
        if max_seqlen is not None:
            self._update_cos_sin_cache(max_seqlen, device=qkv.device, dtype=qkv.dtype)
        elif isinstance(seqlen_offset, int):
            self._update_cos_sin_cache(seqlen + seqlen_offset, device=qkv.device, dtype=qkv.dtype)
        xpos = self.scale is not None
        if kv is None:
            return apply_rotary_emb_qkv_(qkv, self._cos_cached, self._sin_cached,
                                         self._cos_k_cached if xpos else None, self._sin_k_cached if xpos else None,
                                         interleaved=self.interleaved, seqlen_offsets=seqlen_offset,
                                         num_heads_q=num_heads_q)
        q = apply_rotary_emb(qkv, self._cos_cached, self._sin_cached, interleaved=self.interleaved, inplace=True,
                             seqlen_offsets=seqlen_offset)
        kv = apply_rotary_emb_kv_(kv, self._cos_k_cached if xpos else self._cos_cached,
                                  self._sin_k_cached if xpos else self._sin_cached, interleaved=self.interleaved,
                                  seqlen_offsets=seqlen_offset)
        return q, kv
