"""cflash as an attention implementation of Hugging Face transformers, through its public
registries only (AttentionInterface and AttentionMaskInterface):

    import cflash.integrations.transformers as cft
    names = cft.register()              # ("cflash", "cfa")
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="cfa")

It serves what transformers' flash-attention path serves, the same way: the mask function gives
the 2-D padding mask (or None), and the attention function unpads padded batches into the varlen
call, finds packed sequences from position_ids (or takes cu_seq_lens_q / cu_seq_lens_k, as
continuous batching passes them), applies sliding windows, softcap, dropout and attention sinks
(gpt-oss's s_aux, the library's learnable_sink), and reads a static cache up to the filled
length. Paged continuous-batching decode (block_table) goes to flash_attn_with_kvcache. A 4-D
mask (a caller's own, or transformers' SDPA mask) is the library's boolean mask or additive bias.

Names: transformers 5.x takes any implementation name containing "flash" for flash-attn itself or
a Hub kernel, and refuses to load a model with "cflash" when neither is installed; "cfa" is the
same implementation under a name it accepts. register(sdpa=True) also serves
attn_implementation="sdpa" (the one continuous batching accepts besides flash names)."""

import torch

import cflash
from cflash.bert_padding import index_first_axis, pad_input

__all__ = ["register", "attention_forward", "padding_mask", "NAMES"]

NAMES = ("cflash", "cfa")
_sdpa_original = {}


def register(names=NAMES, sdpa=False):
    """Registers cflash's attention and mask functions in transformers under `names` (and, with
    sdpa=True, its attention function under "sdpa" too). Returns the names registered."""
    from transformers import AttentionInterface, AttentionMaskInterface

    for n in names:
        AttentionInterface.register(n, attention_forward)
        AttentionMaskInterface.register(n, padding_mask)
    names = tuple(names)
    if sdpa:
        if "sdpa" not in _sdpa_original:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            _sdpa_original["sdpa"] = sdpa_attention_forward
        AttentionInterface.register("sdpa", attention_forward)
        names += ("sdpa",)
    return names


def unregister_sdpa():
    """Gives attn_implementation="sdpa" back to transformers' own function."""
    from transformers import AttentionInterface

    if "sdpa" in _sdpa_original:
        AttentionInterface.register("sdpa", _sdpa_original["sdpa"])


def padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                 device=None, **kwargs):
    """The mask for attention_forward: the 2-D padding mask (batch, kv_length) of bool, or None when
    there is no padding (the causal and window masks are the attention call's own). A key/value
    longer than the tokens seen so far (a static cache) gets a mask of the seen length, so the
    attention reads no unfilled slot."""
    if attention_mask is not None:
        attention_mask = attention_mask[:, -kv_length:]
        if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
            return None
        return attention_mask.to(torch.bool)
    seen = int(q_offset) + q_length if q_offset is not None else kv_length
    if kv_length > seen:  # a static cache: only the first `seen` slots hold keys
        return torch.ones(batch_size, seen, dtype=torch.bool, device=device)
    return None


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                      softcap=None, is_causal=None, **kwargs):
    """transformers' attention interface: query (B, H, Sq, D), key / value (B, Hk, Sk, D[v]);
    returns ((B, Sq, H, Dv), None)."""
    B, H, Sq, _ = query.shape
    sink = kwargs.get("s_aux")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    varlen_kwargs = cu_q is not None and cu_k is not None
    if attention_mask is not None and attention_mask.dim() == 4:
        if not varlen_kwargs:
            return _masked(query, key, value, attention_mask, dropout, scaling, softcap, sink), None
        # Continuous batching under "sdpa": its 4-D mask holds what cu_seq_lens and causality say (and
        # is_causal comes False, the mask carrying it): the module's own causality then.
        attention_mask, is_causal = None, getattr(module, "is_causal", True)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    Sk = k.shape[1]
    window = (sliding_window - 1, sliding_window - 1) if sliding_window is not None and Sk > sliding_window else (-1, -1)
    kw = dict(dropout_p=dropout, softmax_scale=scaling, causal=bool(is_causal), window_size=window,
              softcap=float(softcap or 0.0), learnable_sink=sink)
    block_table = kwargs.get("block_table")
    if block_table is not None and cu_k is not None and kwargs.get("k_cache") is not None:
        return _paged_decode(q, k, v, kwargs, kw), None
    if attention_mask is not None and attention_mask.dim() == 2:
        return _padded(q, k, v, attention_mask, kw), None
    if varlen_kwargs:
        return _varlen(q, k, v, cu_q, cu_k, kwargs.get("max_length_q"), kwargs.get("max_length_k"), kw), None
    cu = _packed(kwargs.get("position_ids"), B)
    if cu is not None:
        return _varlen(q, k, v, cu, cu, None, None, kw), None
    return cflash.flash_attn_func(q, k, v, **kw), None


def _masked(query, key, value, mask, dropout, scaling, softcap, sink):
    """A 4-D mask (B|1, H|1, Sq, Sk) (a caller's own, or transformers' SDPA mask when registered for
    "sdpa"): as SDPA reads it, boolean (True = the key takes part) or additive, holding the causal,
    window and padding masks (transformers then calls SDPA without is_causal); softcap and sinks
    as the call's. Returns (B, Sq, H, Dv)."""
    from cflash._torch import sdpa_masked

    out = sdpa_masked(query, key, value, mask, dropout_p=dropout, scale=scaling, softcap=float(softcap or 0.0),
                      sinks=sink)
    return out.transpose(1, 2)


def _varlen(q, k, v, cu_q, cu_k, max_q, max_k, kw):
    """Sequences packed along the (single) batch row: the varlen call."""
    B, Sq, H = q.shape[:3]
    cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)
    max_q = int(max_q) if max_q is not None else int((cu_q[1:] - cu_q[:-1]).max())
    max_k = int(max_k) if max_k is not None else int((cu_k[1:] - cu_k[:-1]).max())
    out = cflash.flash_attn_varlen_func(q.reshape(-1, H, q.shape[-1]), k.reshape(-1, *k.shape[2:]),
                                        v.reshape(-1, *v.shape[2:]), cu_q, cu_k, max_q, max_k, **kw)
    return out.view(B, Sq, H, out.shape[-1])


def _packed(position_ids, batch_size):
    """cu_seqlens of sequences packed in one row, found where position_ids restart; None when the
    row is one sequence (or there are several rows)."""
    if position_ids is None or batch_size != 1 or position_ids.shape[-1] < 2:
        return None
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1
    if starts.numel() == 0:
        return None
    zero = torch.zeros(1, dtype=starts.dtype, device=starts.device)
    end = torch.full((1,), pos.numel(), dtype=starts.dtype, device=starts.device)
    return torch.cat([zero, starts, end]).to(torch.int32)


def _padded(q, k, v, mask, kw):
    """A batch with padding (mask (B, L) of bool, True = a token): unpad, varlen call, pad back.
    Keys beyond the mask (a static cache's unfilled slots) are not read; queries are the last Sq
    tokens of their row (left padding), or every row's one token when decoding."""
    B, Sq, H, D = q.shape
    L = mask.shape[1]
    k, v = k[:, :L], v[:, :L]
    seqlens_k = mask.sum(dim=-1, dtype=torch.int32)
    idx_k = torch.nonzero(mask.flatten()).flatten()
    cu_k = torch.nn.functional.pad(torch.cumsum(seqlens_k, 0, dtype=torch.int32), (1, 0))
    max_k = int(seqlens_k.max())
    ku = index_first_axis(k.reshape(B * L, *k.shape[2:]), idx_k)
    vu = index_first_axis(v.reshape(B * L, *v.shape[2:]), idx_k)
    if Sq == L:
        idx_q, cu_q, max_q = idx_k, cu_k, max_k
    elif Sq == 1:
        idx_q = torch.arange(B, device=q.device)
        cu_q, max_q = torch.arange(B + 1, dtype=torch.int32, device=q.device), 1
    else:
        mq = mask[:, -Sq:]
        seqlens_q = mq.sum(dim=-1, dtype=torch.int32)
        idx_q = torch.nonzero(mq.flatten()).flatten()
        cu_q = torch.nn.functional.pad(torch.cumsum(seqlens_q, 0, dtype=torch.int32), (1, 0))
        max_q = int(seqlens_q.max())
    qu = index_first_axis(q.reshape(B * Sq, H, D), idx_q)
    out = cflash.flash_attn_varlen_func(qu, ku, vu, cu_q, cu_k, max_q, max_k, **kw)
    return pad_input(out, idx_q, B, Sq)


def _paged_decode(q, k, v, kwargs, kw):
    """Continuous batching's paged decode: one new token per sequence, appended to the paged cache
    (k_cache / v_cache, block_table) and attended over it, as transformers' flash path does."""
    B = q.shape[0]
    qs = q.reshape(-1, 1, *q.shape[-2:])
    ks, vs = k.reshape(-1, 1, *k.shape[-2:]), v.reshape(-1, 1, *v.shape[-2:])
    n = ks.shape[0]
    cu_k = kwargs["cu_seq_lens_k"].to(torch.int32)
    cache_seqlens = (cu_k[1:n + 1] - cu_k[:n] - 1).to(torch.int32)
    out = cflash.flash_attn_with_kvcache(qs, kwargs["k_cache"], kwargs["v_cache"], ks, vs,
                                         cache_seqlens=cache_seqlens, block_table=kwargs["block_table"].to(torch.int32),
                                         softmax_scale=kw["softmax_scale"], causal=kw["causal"],
                                         window_size=kw["window_size"], softcap=kw["softcap"])
    return out.view(B, -1, *out.shape[-2:])
