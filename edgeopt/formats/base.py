"""What every format handler and every format's manifest section share."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact
    from ..runtime import Runtime


class ModelInfo(BaseModel):
    """The format-specific section of a manifest (``manifest.model``). Keys a newer edgeopt wrote
    are kept (extra="allow"), so reading and re-writing a manifest never drops them."""

    model_config = ConfigDict(extra="allow")
    format: str
    precision: str = "fp32"


class FormatHandler:
    """Everything edgeopt knows about one artifact format: its manifest section, its files, how it
    loads into a runtime and what that needs installed, and how ``inspect`` describes it."""

    name: ClassVar[str]
    model: ClassVar[type[ModelInfo]]
    # extras -> import names needed to run this format (None: the whole extra)
    runtime_requires: ClassVar[dict[str, Optional[tuple[str, ...]]]] = {}

    def model_files(self, artifact: "Artifact") -> list[Path]:
        """The files that hold the network (what "size" means in bench and manifests)."""
        raise NotImplementedError

    def check_runtime_installed(self, artifact: "Artifact") -> None:
        from .._optional import require

        for extra, modules in self.runtime_requires.items():
            require(extra, purpose=f"running {self.name} artifacts such as {artifact.path}", modules=modules)

    def load_runtime(self, artifact: "Artifact", *, threads: Optional[int] = None,
                     providers: Optional[list[str]] = None, session_config: Optional[dict[str, str]] = None) -> "Runtime":
        raise NotImplementedError

    def describe(self, artifact: "Artifact") -> dict[str, Any]:
        """Format-specific facts for ``edgeopt inspect`` (label -> value)."""
        return {}

    def size_bytes(self, artifact: "Artifact") -> int:
        return sum(f.stat().st_size for f in self.model_files(artifact) if f.is_file())
