"""Benchmarks: in-process latency/accuracy of artifacts, side by side."""
