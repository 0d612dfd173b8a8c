"""InferenceParams as in flash_attn.utils.generation: the state of one generation that
cflash.modules.mha.MHA layers share (their KV caches by layer_idx, and where the next tokens go).
Plain Python: no torch needed to build one."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class InferenceParams:
    """max_seqlen, max_batch_size: the caches' size (each MHA allocates its own on first use, in
    key_value_memory_dict[layer_idx], (max_batch_size, max_seqlen, 2, nheads_kv, headdim)).
    seqlen_offset: tokens already in the caches (0: the prompt's step); batch_size_offset: the
    first cache row of this batch; lengths_per_sample: (batch,) int32 per-sequence lengths
    (ragged batches), used instead of seqlen_offset when given."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: Dict[Any, Any] = field(default_factory=dict)
    lengths_per_sample: Optional[Any] = None

    def reset(self, max_seqlen, max_batch_size):
        """A new generation over the same caches."""
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()
