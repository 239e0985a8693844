"""Examples shipped with edgeopt (importable as edgeopt._examples) so `edgeopt demo` runs after a plain install."""
