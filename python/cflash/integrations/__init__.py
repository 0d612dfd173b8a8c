"""Integrations with other libraries (cflash.integrations.transformers: Hugging Face
transformers' attention and mask registries)."""
