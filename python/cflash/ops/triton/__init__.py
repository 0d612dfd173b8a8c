"""Import path of flash-attn's Triton ops (flash_attn.ops.triton), so that replacing `flash_attn`
by `cflash` in an import line is enough."""
