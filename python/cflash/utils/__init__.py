"""Utilities as in flash_attn.utils: generation.InferenceParams (the KV-cache state MHA reads)."""
