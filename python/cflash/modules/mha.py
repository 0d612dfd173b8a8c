"""flash_attn.modules.mha on libcflash: MHA (multi-head, grouped-query or cross attention with its
projections, rotary embedding, ALiBi, a sliding window and a KV cache for generation) and the
attention layers it is built from: FlashSelfAttention / FlashCrossAttention (cflash's
flash_attn_*_func) and SelfAttention / CrossAttention (plain PyTorch, the use_flash_attn=False
path). The parameters have flash-attn's names and shapes (Wqkv, or Wq and Wkv with cross_attn;
out_proj; rotary_emb), so a state dict saved from flash-attn's MHA loads as it is.

Not provided (refused, saying so): dwconv, fused_bias_fc (flash_attn.ops.fused_dense), mixer_subset,
and ParallelMHA (tensor parallelism). SelfAttention / CrossAttention mask padded keys with
key_padding_mask as flash-attn's do (-10000 added to their scores) and align the causal mask to
the bottom right (the last query sees every key), as every flash_attn function does."""

import math

import torch
import torch.nn as nn

from ..flash_attn_interface import (
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)

__all__ = ["FlashSelfAttention", "FlashCrossAttention", "SelfAttention", "CrossAttention", "MHA",
           "get_alibi_slopes"]


def get_alibi_slopes(nheads):
    """ALiBi's slopes for nheads heads: 2^(-8 i / n) for i = 1..n with n = nheads a power of two;
    otherwise those of the power of two below, then every other one of twice that."""
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(nheads).is_integer():
        return powers(nheads)
    below = 2 ** math.floor(math.log2(nheads))
    return powers(below) + powers(2 * below)[0::2][:nheads - below]


class FlashSelfAttention(nn.Module):
    """Attention over a packed qkv with cflash's flash_attn_qkvpacked_func (or its varlen form
    with cu_seqlens). softmax_scale None: 1 / sqrt(headdim); attention_dropout applies in
    training only."""

    def __init__(self, causal=False, softmax_scale=None, attention_dropout=0.0, window_size=(-1, -1),
                 alibi_slopes=None, deterministic=False):
        super().__init__()
        self.causal = causal
        self.softmax_scale = softmax_scale
        self.drop = nn.Dropout(attention_dropout)
        self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)
        self.window_size = window_size
        self.deterministic = deterministic

    def _kw(self, causal):
        return dict(dropout_p=self.drop.p if self.training else 0.0, softmax_scale=self.softmax_scale,
                    causal=self.causal if causal is None else causal, window_size=self.window_size,
                    alibi_slopes=self.alibi_slopes, deterministic=self.deterministic)

    def forward(self, qkv, causal=None, cu_seqlens=None, max_seqlen=None):
        """qkv (batch, seqlen, 3, nheads, headdim), or (total, 3, nheads, headdim) with cu_seqlens
        (batch + 1,) int32 and max_seqlen. Returns (batch, seqlen, nheads, headdim) (or total)."""
        if cu_seqlens is not None:
            return flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, **self._kw(causal))
        return flash_attn_qkvpacked_func(qkv, **self._kw(causal))


class FlashCrossAttention(FlashSelfAttention):
    """Attention of q to a packed kv (nheads_k dividing nheads: grouped-query) with cflash's
    flash_attn_kvpacked_func (or its varlen form)."""

    def forward(self, q, kv, causal=None, cu_seqlens=None, max_seqlen=None, cu_seqlens_k=None,
                max_seqlen_k=None):
        """q (batch, seqlen_q, nheads, headdim), kv (batch, seqlen_k, 2, nheads_k, headdim); or
        (total_q, ...) / (total_k, ...) with cu_seqlens / cu_seqlens_k and max_seqlen(_k)."""
        if cu_seqlens is not None:
            return flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k,
                                                   **self._kw(causal))
        return flash_attn_kvpacked_func(q, kv, **self._kw(causal))


def _torch_attention(q, k, v, softmax_scale, causal, key_padding_mask, drop):
    """softmax(q k^T * scale + masks) v in fp32 math, in plain PyTorch; q (b, sq, h, d), k / v
    (b, sk, hk, d), hk dividing h."""
    h, hk = q.shape[2], k.shape[2]
    if hk != h:
        k, v = k.repeat_interleave(h // hk, dim=2), v.repeat_interleave(h // hk, dim=2)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale
    if key_padding_mask is not None:
        scores = scores + torch.where(key_padding_mask, 0.0, -10000.0).to(scores)[:, None, None, :]
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        scores = scores.masked_fill(j > i + sk - sq, float("-inf"))
    p = drop(torch.softmax(scores, dim=-1))
    return torch.einsum("bhts,bshd->bthd", p, v.float()).to(v.dtype)


class SelfAttention(nn.Module):
    """The same attention as FlashSelfAttention in plain PyTorch (no window, no ALiBi)."""

    def __init__(self, causal=False, softmax_scale=None, attention_dropout=0.0):
        super().__init__()
        self.causal = causal
        self.softmax_scale = softmax_scale
        self.drop = nn.Dropout(attention_dropout)

    def forward(self, qkv, causal=None, key_padding_mask=None):
        """qkv (batch, seqlen, 3, nheads, headdim); key_padding_mask (batch, seqlen) bool, True
        for the keys to keep."""
        q, k, v = qkv.unbind(dim=2)
        return _torch_attention(q, k, v, self.softmax_scale, self.causal if causal is None else causal,
                                key_padding_mask, self.drop)


class CrossAttention(SelfAttention):
    """The same attention as FlashCrossAttention in plain PyTorch."""

    def forward(self, q, kv, causal=None, key_padding_mask=None):
        k, v = kv.unbind(dim=2)
        return _torch_attention(q, k, v, self.softmax_scale, self.causal if causal is None else causal,
                                key_padding_mask, self.drop)


class MHA(nn.Module):
    """Multi-head self- or cross-attention with flash-attn's MHA arguments: num_heads_kv < num_heads
    for grouped-query attention; rotary_emb_dim > 0 rotates the first rotary_emb_dim dims of q and
    k (self-attention); use_alibi and window_size need use_flash_attn; inference_params (a
    cflash.utils.generation.InferenceParams) keeps each layer's KV cache by layer_idx, and a step
    after the first (seqlen_offset > 0) goes through flash_attn_with_kvcache, which appends the new
    k, v and rotates q, k at their positions in the same call."""

    def __init__(self, embed_dim, num_heads, num_heads_kv=None, cross_attn=False, qkv_proj_bias=True,
                 out_proj_bias=True, dropout=0.0, softmax_scale=None, causal=False, layer_idx=None,
                 dwconv=False, rotary_emb_dim=0, rotary_emb_base=10000.0, rotary_emb_scale_base=None,
                 rotary_emb_interleaved=False, use_alibi=False, window_size=(-1, -1), fused_bias_fc=False,
                 use_flash_attn=False, return_residual=False, checkpointing=False, device=None, dtype=None):
        super().__init__()
        for flag, what in ((dwconv, "dwconv (depthwise convolutions on q, k, v)"),
                           (fused_bias_fc, "fused_bias_fc (flash_attn.ops.fused_dense)")):
            if flag:
                raise NotImplementedError(f"cflash.modules.mha.MHA: {what} is not provided")
        if use_alibi and not use_flash_attn:
            raise ValueError("MHA: use_alibi needs use_flash_attn=True (SelfAttention has no ALiBi)")
        if tuple(window_size) != (-1, -1) and not use_flash_attn:
            raise ValueError("MHA: window_size needs use_flash_attn=True (SelfAttention has no window)")
        if rotary_emb_dim > 0 and cross_attn:
            raise ValueError("MHA: rotary embedding applies to self-attention only (cross_attn=False)")
        self.num_heads_kv = num_heads_kv if num_heads_kv is not None else num_heads
        if num_heads % self.num_heads_kv or embed_dim % num_heads:
            raise ValueError(f"MHA: num_heads {num_heads} must divide embed_dim {embed_dim} and be a "
                             f"multiple of num_heads_kv {self.num_heads_kv}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.cross_attn, self.causal, self.layer_idx = cross_attn, causal, layer_idx
        self.rotary_emb_dim, self.use_flash_attn = rotary_emb_dim, use_flash_attn
        self.return_residual, self.checkpointing = return_residual, checkpointing
        alibi = torch.tensor(get_alibi_slopes(num_heads), device=device) if use_alibi else None
        if rotary_emb_dim > 0:
            from ..layers.rotary import RotaryEmbedding

            self.rotary_emb = RotaryEmbedding(rotary_emb_dim, base=rotary_emb_base, scale_base=rotary_emb_scale_base,
                                              interleaved=rotary_emb_interleaved, device=device)
        kv_dim = 2 * self.head_dim * self.num_heads_kv
        if not cross_attn:
            self.Wqkv = nn.Linear(embed_dim, embed_dim + kv_dim, bias=qkv_proj_bias, **factory)
        else:
            self.Wq = nn.Linear(embed_dim, embed_dim, bias=qkv_proj_bias, **factory)
            self.Wkv = nn.Linear(embed_dim, kv_dim, bias=qkv_proj_bias, **factory)
        if use_flash_attn:
            self.inner_attn = FlashSelfAttention(causal, softmax_scale, dropout, window_size, alibi)
            self.inner_cross_attn = FlashCrossAttention(causal, softmax_scale, dropout, window_size, alibi)
        else:
            self.inner_attn = SelfAttention(causal, softmax_scale, dropout)
            self.inner_cross_attn = CrossAttention(causal, softmax_scale, dropout)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=out_proj_bias, **factory)

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None):
        """An empty KV cache for this layer: (batch_size, max_seqlen, 2, nheads_kv, headdim)."""
        weight = self.out_proj.weight
        return torch.empty(batch_size, max_seqlen, 2, self.num_heads_kv, self.head_dim,
                           dtype=weight.dtype if dtype is None else dtype, device=weight.device)

    def _cache(self, inference_params, kv):
        """This layer's whole cache (allocated on first use) and the batch rows [b0, b0 + batch)."""
        if self.layer_idx is None:
            raise ValueError("MHA: inference_params needs the layer's layer_idx (its cache's key)")
        caches = inference_params.key_value_memory_dict
        if self.layer_idx not in caches:
            caches[self.layer_idx] = torch.empty(
                inference_params.max_batch_size, inference_params.max_seqlen, 2, self.num_heads_kv,
                self.head_dim, dtype=kv.dtype, device=kv.device)
        b0, s0 = inference_params.batch_size_offset, inference_params.seqlen_offset
        cache = caches[self.layer_idx]
        if b0 + kv.shape[0] > cache.shape[0] or s0 + kv.shape[1] > cache.shape[1]:
            raise ValueError(f"MHA: batch rows [{b0}, {b0 + kv.shape[0]}) and positions [{s0}, "
                             f"{s0 + kv.shape[1]}) do not fit the cache of {tuple(cache.shape[:2])}")
        return cache[b0:b0 + kv.shape[0]]

    def _cached_attention(self, q, kv, inference_params, fused):
        """The step's k, v (rotated already unless fused) into the cache, and q's attention to
        everything cached: by flash_attn_with_kvcache when fused, else appended here first."""
        cache = self._cache(inference_params, kv)
        if fused:
            return self._fused_step(q, kv, cache, inference_params)
        s0 = inference_params.seqlen_offset
        cache[:, s0:s0 + kv.shape[1]] = kv
        return self.inner_cross_attn(q, cache[:, :s0 + kv.shape[1]])

    def _fused_step(self, q, kv, cache, inference_params):
        """flash_attn_with_kvcache: k, v appended at each sequence's length and q, k rotated there."""
        lengths = inference_params.lengths_per_sample
        b0 = inference_params.batch_size_offset
        seqlens = lengths[b0:b0 + q.shape[0]] if lengths is not None else inference_params.seqlen_offset
        rot = {}
        if self.rotary_emb_dim > 0:
            self.rotary_emb._update_cos_sin_cache(inference_params.max_seqlen, device=q.device, dtype=q.dtype)
            rot = dict(rotary_cos=self.rotary_emb._cos_cached, rotary_sin=self.rotary_emb._sin_cached,
                       rotary_interleaved=self.rotary_emb.interleaved)
        attn = self.inner_cross_attn
        return flash_attn_with_kvcache(q, cache[:, :, 0], cache[:, :, 1], kv[:, :, 0], kv[:, :, 1],
                                       cache_seqlens=seqlens, softmax_scale=attn.softmax_scale, causal=attn.causal,
                                       window_size=attn.window_size, alibi_slopes=attn.alibi_slopes, **rot)

    def _attend(self, fn, *args, **kwargs):
        if self.checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    def forward(self, x, x_kv=None, key_padding_mask=None, cu_seqlens=None, max_seqlen=None, mixer_subset=None,
                inference_params=None, **kwargs):
        """x (batch, seqlen, embed_dim), or (total, embed_dim) with cu_seqlens (batch + 1,) int32 and
        max_seqlen (use_flash_attn: the unpadded batch of cflash.bert_padding.unpad_input);
        x_kv: the keys' and values' input with cross_attn (x when None); key_padding_mask
        (batch, seqlen) bool, True to keep (use_flash_attn=False). Returns (batch, seqlen,
        embed_dim), with x too when return_residual."""
        if mixer_subset is not None:
            raise NotImplementedError("cflash.modules.mha.MHA: mixer_subset is not provided")
        if cu_seqlens is not None and (not self.use_flash_attn or inference_params is not None):
            raise ValueError("MHA: cu_seqlens needs use_flash_attn=True and no inference_params")
        if key_padding_mask is not None and (self.use_flash_attn or inference_params is not None):
            raise ValueError("MHA: key_padding_mask needs use_flash_attn=False and no inference_params "
                             "(with flash attention, unpad the batch and pass cu_seqlens)")
        if inference_params is not None and cu_seqlens is None and x.dim() != 3:
            raise ValueError("MHA: inference_params needs x of (batch, seqlen, embed_dim)")
        h, hk, d = self.num_heads, self.num_heads_kv, self.head_dim
        if self.use_flash_attn:
            attn_kw = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, **kwargs)
            cross_kw = dict(attn_kw, cu_seqlens_k=cu_seqlens, max_seqlen_k=max_seqlen) if cu_seqlens is not None \
                else attn_kw
        else:
            attn_kw = cross_kw = dict(key_padding_mask=key_padding_mask, **kwargs)
        if self.cross_attn:
            q = self.Wq(x).unflatten(-1, (h, d))
            kv = self.Wkv(x if x_kv is None else x_kv).unflatten(-1, (2, hk, d))
            if inference_params is not None:
                fused = inference_params.seqlen_offset > 0 and self.use_flash_attn
                context = self._cached_attention(q, kv, inference_params, fused)
            else:
                context = self._attend(self.inner_cross_attn, q, kv, **cross_kw)
            return self._out(context, x)
        qkv = self.Wqkv(x).unflatten(-1, (h + 2 * hk, d))
        # (XPos rotary, scale_base: k's tables differ from q's, which the fused call does not take)
        fused = (inference_params is not None and inference_params.seqlen_offset > 0 and self.use_flash_attn
                 and (self.rotary_emb_dim == 0 or self.rotary_emb.scale is None))
        if self.rotary_emb_dim > 0 and not fused:
            offset = 0
            if inference_params is not None:
                lengths = inference_params.lengths_per_sample
                offset = lengths if lengths is not None else inference_params.seqlen_offset
            self.rotary_emb(qkv, seqlen_offset=offset, num_heads_q=h,
                            max_seqlen=inference_params.max_seqlen if inference_params is not None else None)
        q, kv = qkv[..., :h, :], qkv[..., h:, :].unflatten(-2, (2, hk))
        if inference_params is not None:
            context = self._cached_attention(q, kv, inference_params, fused)
        elif hk == h:
            context = self._attend(self.inner_attn, qkv.unflatten(-2, (3, h)), **attn_kw)
        else:
            context = self._attend(self.inner_cross_attn, q, kv, **cross_kw)
        return self._out(context, x)

    def _out(self, context, x):
        out = self.out_proj(context.flatten(-2))
        return (out, x) if self.return_residual else out
