"""Bundles and images per target (`edgeopt package`), shipping them to devices (`edgeopt deploy`)
and benchmarking on the device (`edgeopt bench --docker-host`)."""
from .bundle import Bundle, PackageConfig, load_bundle, package

__all__ = ["Bundle", "PackageConfig", "load_bundle", "package"]
