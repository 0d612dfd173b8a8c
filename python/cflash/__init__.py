"""cflash: exact attention (FlashAttention) and the ops around it, on CPUs and NVIDIA GPUs, as a
drop-in for flash-attn 2.x: `from cflash import flash_attn_func` where a model had
`from flash_attn import flash_attn_func`; cflash.scaled_dot_product_attention has torch's SDPA
signature (cflash.patch_sdpa() routes torch's function to it). NumPy arrays and torch tensors (CPU or CUDA) are passed
to libcflash through DLPack without copies; torch is optional and imported only when used."""

from ._lib import InvalidArgumentError, library_path, set_backend, get_backend, set_num_threads, version as _version
from .flash_attn_interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
from ._report import report, explain
from ._merge import attn_merge
from .sdpa import scaled_dot_product_attention, patch_sdpa, unpatch_sdpa

__version__ = _version()

__all__ = [
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_with_kvcache",
    "attn_merge",
    "scaled_dot_product_attention",
    "patch_sdpa",
    "unpatch_sdpa",
    "report",
    "explain",
    "set_backend",
    "get_backend",
    "set_num_threads",
    "library_path",
    "InvalidArgumentError",
    "__version__",
]
