"""Layers as in flash_attn.layers (rotary embedding)."""
