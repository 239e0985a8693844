"""Target specs shipped with edgeopt (importable as edgeopt._targets)."""
