"""Benchmarks: in-process latency/accuracy of artifacts (core.py), HTTP load (http.py), reports.

``edgeopt.bench(...)`` is the public bench function, but once this subpackage is imported Python
binds ``edgeopt.bench`` to the package itself; calling the package runs the function, so both
spellings work whatever was imported first.
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .core import bench

        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
