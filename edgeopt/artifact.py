"""Artifacts: a directory of model files plus ``manifest.json``.

Every stage reads one artifact and writes a new one through :func:`write_artifact`,
which builds it in a temporary sibling directory and renames it into place, so a
crash or a failed check never leaves a half-written artifact behind and never
touches the previous one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, model_validator

from ._version import __version__
from .errors import InputError
from .formats import AnyModel

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
Format = str  # a name in edgeopt.formats.HANDLERS
TASKS = ("text-classification", "feature-extraction", "image-classification", "text-generation")


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[Union[int, str]]  # str entries are named dynamic axes


class TextPreprocessing(BaseModel):
    kind: Literal["text"] = "text"
    tokenizer: str = "tokenizer"  # directory inside the artifact
    max_length: int = 512
    padding: Literal["longest", "max_length"] = "longest"


class ImagePreprocessing(BaseModel):
    kind: Literal["image"] = "image"
    size: list[int]  # [height, width]
    channels: int = 3
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    scale: float = 1.0 / 255.0  # applied to raw pixel values before normalisation


Preprocessing = Union[TextPreprocessing, ImagePreprocessing]


class IOSpec(BaseModel):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Optional[Preprocessing] = Field(default=None, discriminator="kind")


class LineageEntry(BaseModel):
    stage: str
    parent_hash: Optional[str] = None
    config: dict[str, Any] = Field(default_factory=dict)
    edgeopt_version: str = __version__


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    edgeopt_version: str = __version__
    format: Format
    task: str
    labels: Optional[list[str]] = None
    io: IOSpec
    model: AnyModel  # format-specific section, typed per format (edgeopt.formats): files, precision, ...
    lineage: list[LineageEntry] = Field(default_factory=list)  # oldest first; last entry made this one
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _model_format(cls, data: Any) -> Any:
        """``model`` carries its format (the discriminator); manifests written before it did, and
        callers that give the format once at the top, get it filled in from ``format``."""
        if isinstance(data, dict) and "format" in data:
            from .formats import HANDLERS

            if data["format"] not in HANDLERS:
                raise ValueError(f"format '{data['format']}' is not supported by this edgeopt; known formats: "
                                 f"{', '.join(HANDLERS)}")
            model = data.get("model")
            if model is None:
                model = {}
            if isinstance(model, dict):
                if model.get("format", data["format"]) != data["format"]:
                    raise ValueError(f"model.format '{model['format']}' differs from format '{data['format']}'")
                data = {**data, "model": {**model, "format": data["format"]}}
            elif getattr(model, "format", None) != data["format"]:
                raise ValueError(f"model.format '{getattr(model, 'format', None)}' differs from format '{data['format']}'")
        return data

    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.model_dump(mode="json")).encode()).hexdigest()

    def child(self, *, stage: str, config: dict[str, Any], **changes: Any) -> "Manifest":
        """A manifest for an artifact derived from this one (files and metrics reset)."""
        data = self.model_dump()
        data.update(files={}, metrics={}, edgeopt_version=__version__)
        data["lineage"] = [*data["lineage"], LineageEntry(stage=stage, parent_hash=self.digest(), config=config).model_dump()]
        data.update(changes)
        return Manifest.model_validate(data)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Artifact:
    """An artifact on disk: ``path`` and its parsed ``manifest``."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, format={self.manifest.format}, task={self.manifest.task})"

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, rel: str) -> Path:
        return self.path / rel

    def verify(self) -> None:
        """Check every recorded file exists and matches its sha256."""
        for rel, digest in self.manifest.files.items():
            p = self.path / rel
            if not p.is_file():
                raise InputError(f"{self.path}: file {rel} listed in manifest.json is missing; re-run the stage that made it")
            if sha256_file(p) != digest:
                raise InputError(
                    f"{self.path}: {rel} does not match its sha256 in manifest.json (corrupted or edited); re-run the stage that made it"
                )


def load_artifact(path: Union[str, Path], verify: bool = True) -> Artifact:
    """Load an artifact directory, or adopt a plain Hugging Face checkpoint folder as a source artifact."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{path}: no such file or directory; give an artifact directory or a Hugging Face checkpoint folder")
    if p.is_file():
        raise InputError(f"{path}: is a file; give the artifact directory that holds it (with manifest.json or config.json)")
    mf = p / MANIFEST
    if mf.is_file():
        try:
            manifest = Manifest.model_validate_json(mf.read_text())
        except Exception as e:  # pydantic / json errors: name the first bad field
            errors = getattr(e, "errors", None)
            if callable(errors) and errors():
                err = errors()[0]
                where = ".".join(str(x) for x in err.get("loc", ()))
                msg = str(err.get("msg")).removeprefix("Value error, ")
                first = f"{where}: {msg}" if where else msg
            else:
                first = str(e).splitlines()[0]
            raise InputError(f"{mf}: not a valid edgeopt manifest ({first}); re-create the artifact") from e
        art = Artifact(p, manifest)
        if verify:
            art.verify()
        return art
    if (p / "config.json").is_file():
        from .models.hf import adopt_hf_folder

        return adopt_hf_folder(p)
    raise InputError(
        f"{path}: not a model — no manifest.json (edgeopt artifact) or config.json (Hugging Face checkpoint) inside"
    )


def write_artifact(out: Union[str, Path], *inputs: Any) -> contextlib.AbstractContextManager[Path]:
    """Yield a private temporary folder; on success rename it to ``out`` atomically.

    The caller writes model files into the yielded folder and calls :func:`finalize` on it.
    ``out`` must be new, empty, or an earlier edgeopt artifact (never a user's folder, the current
    directory, or one of ``inputs``; see :mod:`edgeopt.outputs`). If the body raises, or the
    process gets Ctrl-C or SIGTERM, the temporary folder is removed and an existing ``out`` is
    left untouched.
    """
    from .outputs import staged_dir

    return staged_dir(out, *inputs, kind="artifact", complete=lambda tmp: (tmp / MANIFEST).is_file())


def finalize(tmp: Path, manifest: Manifest) -> Manifest:
    """Hash every file in ``tmp`` into the manifest and write manifest.json."""
    files = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            files[f.relative_to(tmp).as_posix()] = sha256_file(f)
    manifest = manifest.model_copy(update={"files": files})
    (tmp / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return manifest


def cache_key(parent: Optional[Manifest], stage: str, config: dict[str, Any]) -> str:
    payload = {"parent": parent.digest() if parent else None, "stage": stage, "config": config, "version": __version__}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
