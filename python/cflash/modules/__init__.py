"""Modules as in flash_attn.modules: mha (MHA and its attention layers). Needs torch."""
