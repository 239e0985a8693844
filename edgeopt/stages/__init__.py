"""Stages: each a typed config (with a ``kind``) and one function artifact -> new artifact."""
