"""flash_attn.bert_padding with the same names, arguments and results: move between a padded batch
(batch, seqlen, ...) and the packed layout of the varlen calls (total_nnz, ...) with its
cu_seqlens. Plain torch indexing ops, so autograd and torch.compile handle them without custom
Functions; their outputs are fresh tensors, not views, so rotary can rotate them in place."""

import torch
import torch.nn.functional as F

__all__ = ["index_first_axis", "index_put_first_axis", "unpad_input", "pad_input",
           "unpad_input_for_concatenated_sequences"]


def index_first_axis(input, indices):
    """input[indices] along dim 0: (first_axis_dim, ...) -> (len(indices), ...)."""
    return torch.index_select(input, 0, indices)


def index_put_first_axis(values, indices, first_axis_dim):
    """A (first_axis_dim, ...) tensor of zeros with values at rows `indices`."""
    out = values.new_zeros((first_axis_dim,) + tuple(values.shape[1:]))
    return out.index_copy(0, indices, values)


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """hidden_states (batch, seqlen, ...), attention_mask (batch, seqlen) bool or int, 1 = valid;
    unused_mask (batch, seqlen), 1 = allocated but unused (kept, but not counted in seqused).
    Returns (hidden_states (total_nnz, ...), indices (total_nnz,) into the flattened
    (batch * seqlen), cu_seqlens int32 (batch + 1,), max_seqlen_in_batch (int), seqused int32
    (batch,): the valid tokens of each sequence)."""
    all_masks = attention_mask + unused_mask if unused_mask is not None else attention_mask
    seqlens = all_masks.sum(dim=-1, dtype=torch.int32)
    used = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape((-1,) + tuple(hidden_states.shape[2:]))
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen, used


def unpad_input_for_concatenated_sequences(hidden_states, attention_mask_in_length):
    """Several short samples packed per row: attention_mask_in_length (batch, seqlen) holds the
    lengths of the samples of each row, left-aligned, then zeros (e.g. [2, 3, 0, 0, 0, 0]).
    Returns (hidden_states (total_nnz, ...), indices, cu_seqlens over all samples,
    max_seqlen_in_batch)."""
    length = attention_mask_in_length.sum(dim=-1)
    seqlen = attention_mask_in_length.size(-1)
    mask_2d = torch.arange(seqlen, device=length.device, dtype=length.dtype).expand(len(length), seqlen)
    mask_2d = mask_2d < length.unsqueeze(1)
    flat_lengths = attention_mask_in_length.flatten()
    seqlens = flat_lengths[torch.nonzero(flat_lengths, as_tuple=False).flatten()]
    indices = torch.nonzero(mask_2d.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape((-1,) + tuple(hidden_states.shape[2:]))
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen


def pad_input(hidden_states, indices, batch, seqlen):
    """The inverse of unpad_input: (total_nnz, ...) -> (batch, seqlen, ...), zeros where padded."""
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.reshape((batch, seqlen) + tuple(hidden_states.shape[1:]))
