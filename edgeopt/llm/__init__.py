"""Decoder-only language models (task ``text-generation``): supported families, token sampling and
the generation loop with a KV cache."""
