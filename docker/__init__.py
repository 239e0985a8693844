"""Dockerfile templates shipped with edgeopt (importable as edgeopt._docker)."""
