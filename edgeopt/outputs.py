"""Where a command may write: the output-path rule, atomic replacement, and clean-up.

The rule: an existing output path is replaced only when it is edgeopt's own output (an artifact
folder whose ``manifest.json`` edgeopt wrote, a recipe workdir, a bench report). Anything else
that exists — a file, a non-empty folder, the current directory or a folder that contains it, an
input or a folder that contains an input — is refused before any work starts. An empty folder is
fine. Outputs are built in a private temporary sibling (``.NAME.tmp-PID-XXXX``) and renamed into
place; the temporary sibling is removed on errors, Ctrl-C and SIGTERM, and siblings left behind by
a killed run (its PID is gone) are removed the next time the same output is written.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from .errors import ConfigError

MANIFEST = "manifest.json"
WORKDIR_MARK = ".edgeopt-cache.json"  # a recipe workdir holds its stage cache
BUNDLE_FILE = "bundle.json"  # an `edgeopt package` bundle's description
BUNDLE_MARK = "edgeopt bundle"  # its first key's value
REPORT_MARK = "edgeopt bench report"  # first key of every JSON report, last-line comment of every Markdown one

# Stage-config fields that name input files (data, calibration sets, adapters, source models).
INPUT_FIELDS = ("train_data", "val_data", "test_data", "calib", "eval_data", "check_data", "data", "source",
                "adapter", "student")

PathLike = Union[str, Path]


def _cwd() -> Optional[Path]:
    try:
        return Path.cwd().resolve()
    except OSError:  # the current directory was deleted: nothing can be inside it
        return None


def _display(p: Path) -> str:
    """A path as the user would recognise it: relative to the current directory when inside it."""
    cwd = _cwd()
    try:
        rel = p.relative_to(cwd) if cwd is not None else p
        return str(rel) if str(rel) != "." else "."
    except ValueError:
        return str(p)


def _identity(p: Path) -> Optional[tuple[int, int]]:
    """(device, inode): the same folder reached by two spellings, a symlink or a bind mount."""
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _chain(p: Path) -> list[tuple[int, int]]:
    """The identities of ``p`` and each of its existing ancestors."""
    return [i for i in (_identity(a) for a in (p, *p.parents)) if i is not None]


def input_paths(*things: Any) -> list[Path]:
    """Resolved paths of the inputs of a stage: artifacts, paths, or configs (their file fields)."""
    out: list[Path] = []
    for t in things:
        if t is None:
            continue
        if hasattr(t, "manifest") and hasattr(t, "path"):  # an Artifact
            out.append(Path(t.path).expanduser().resolve())
        elif isinstance(t, (str, Path)):
            s = str(t)
            if not s.startswith(("sklearn:", "pkg:")) and not s.lstrip().startswith("{"):
                out.append(Path(s).expanduser().resolve())
        elif hasattr(t, "model_dump"):  # a pydantic stage config
            for k in INPUT_FIELDS:
                v = getattr(t, k, None)
                if isinstance(v, str):
                    out.extend(input_paths(v))
        elif isinstance(t, (list, tuple)):
            out.extend(input_paths(*t))
    return out


def _holds_only_listed(p: Path, description: str, ours) -> bool:
    """``p/description`` is JSON that ``ours(data)`` accepts, and ``p`` holds nothing but the files
    its "files" lists (a folder where someone also keeps their own files is theirs to keep)."""
    f = p / description
    if not f.is_file():
        return False
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return False
    if not (isinstance(data, dict) and ours(data)):
        return False
    listed = set(data.get("files") or {}) | {description}
    return all(x.relative_to(p).as_posix() in listed for x in p.rglob("*") if not x.is_dir())


def is_artifact_dir(p: Path) -> bool:
    """A folder whose manifest.json edgeopt wrote, holding nothing but the files it lists."""
    return _holds_only_listed(p, MANIFEST, lambda d: {"schema_version", "edgeopt_version", "format", "io"} <= set(d))


def is_bundle_dir(p: Path) -> bool:
    """A folder `edgeopt package` wrote: bundle.json with edgeopt's mark and only the files it lists."""
    return _holds_only_listed(p, BUNDLE_FILE, lambda d: next(iter(d.items()), None) == ("kind", BUNDLE_MARK))


def is_report_dir(p: Path) -> bool:
    """A bench stage's folder in a recipe workdir: edgeopt's report.json (and .md/.png) only."""
    names = {f.name for f in p.iterdir()}
    return ("report.json" in names and names <= {"report.json", "report.md", "report.png"}
            and all(is_report_file(p / n) for n in names))


def is_workdir(p: Path) -> bool:
    return (p / WORKDIR_MARK).is_file()


MD_MARK_LINE = f"<!-- {REPORT_MARK} -->"


def is_report_file(p: Path) -> bool:
    """A report edgeopt wrote: JSON whose first key is ``"kind": REPORT_MARK``, Markdown whose last
    line is edgeopt's closing comment, or a PNG whose 'Software' tag names edgeopt."""
    try:
        data = p.read_bytes() if p.stat().st_size < 64 << 20 else b""
    except OSError:
        return False
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return (_png_text(data).get("Software") or "").startswith("edgeopt ")
    if data.lstrip().startswith(b"{"):
        try:
            doc = json.loads(data)
        except ValueError:
            return False
        return isinstance(doc, dict) and next(iter(doc.items()), None) == ("kind", REPORT_MARK)
    lines = data.decode("utf-8", "replace").rstrip().splitlines()
    return bool(lines) and lines[-1].strip() == MD_MARK_LINE


def _png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (keyword -> text)."""
    import struct

    out, i = {}, 8
    while i + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[i:i + 8])
        if ctype == b"tEXt":
            key, _, text = data[i + 8:i + 8 + length].partition(b"\0")
            out[key.decode("latin-1")] = text.decode("latin-1")
        if ctype == b"IEND":
            break
        i += 12 + length
    return out


def check_output(out: PathLike, *inputs: Any, kind: str = "artifact") -> Path:
    """Refuse an output path that is not edgeopt's to replace; return it resolved.

    ``kind`` is what will be written there: ``artifact`` (a folder with manifest.json), ``workdir``
    (a recipe's folder of artifacts), ``report-dir`` (a bench stage folder) or ``file`` (a report).
    ``inputs`` are the stage's inputs (artifacts, paths, configs): the output may neither be one of
    them, nor contain one, nor lie inside one, however each is spelled (symlinks, bind mounts).
    """
    shown = str(out)
    if shown.strip() == "":
        raise ConfigError("the output path is empty; give a new folder for the output")
    noun = "file" if kind == "file" else "folder"

    def refuse(why: str, fix: str = f"give a new {noun} for the output") -> ConfigError:
        return ConfigError(f"{shown}: {why}; {fix}")

    try:
        p = Path(out).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise refuse(f"cannot be resolved ({e})") from e
    if kind == "file" and (p.name in ("", ".", "..") or Path(out).name in ("", ".", "..")):
        raise refuse("is not a file name", "give a file name for the report, e.g. reports/bench.md")
    cwd = _cwd()
    if cwd is not None and _identity(p) is not None and _identity(p) in _chain(cwd):
        what = "is the current directory" if _identity(p) == _identity(cwd) else "contains the current directory"
        raise refuse(f"{what}, which edgeopt will not replace", f"give a new {noun} for the output, e.g. {Path(shown) / 'out'}")
    out_chain = _chain(p)
    for inp in input_paths(*inputs):
        inp_id = _identity(inp)
        if inp_id is None:
            continue
        if _identity(p) is not None and _identity(p) in _chain(inp):
            what = "is an input of this command" if _identity(p) == inp_id else f"contains an input of this command ({_display(inp)})"
            raise refuse(what)
        if inp.is_dir() and inp_id in out_chain:
            raise refuse(f"lies inside the input {_display(inp)}, which edgeopt never changes", f"give a {noun} outside it")
    if not p.exists():
        _check_parent(p, refuse)
        return p
    if kind == "file":
        if p.is_file() and is_report_file(p):
            return p
        what = "is a folder" if p.is_dir() else "exists and was not written by edgeopt"
        raise refuse(what, "give a new file name for the report")
    if not p.is_dir():
        raise refuse("is an existing file")
    if _is_mount_point(p):  # a volume: it cannot be swapped out by a rename
        raise refuse("is a mount point, which edgeopt cannot replace atomically", f"give a new folder inside it, e.g. {Path(shown) / 'out'}")
    _check_parent(p, refuse)
    if not any(p.iterdir()):
        return p
    ours = {"artifact": is_artifact_dir, "workdir": is_workdir, "report-dir": is_report_dir, "bundle": is_bundle_dir}[kind]
    if ours(p):
        return p
    what = {"artifact": "an edgeopt artifact (files other than those its manifest.json lists, or no manifest.json "
                        "written by edgeopt)",
            "workdir": "an edgeopt recipe workdir", "report-dir": "an edgeopt bench report",
            "bundle": "an edgeopt bundle (files other than those its bundle.json lists)"}[kind]
    raise refuse(f"is a folder with files in it that is not {what}, so edgeopt will not replace it",
                 "give a new folder (or an empty one)")


def _is_mount_point(p: Path) -> bool:
    """os.path.ismount misses bind mounts within one file system (Docker volumes often are)."""
    if os.path.ismount(p):
        return True
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    unescape = lambda f: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f)  # noqa: E731
    return any(len(f) > 4 and unescape(f[4]) == str(p) for f in (ln.split(" ") for ln in lines))


def _check_parent(p: Path, refuse) -> None:
    """The output's nearest existing ancestor must be a folder edgeopt can write in."""
    anc = p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise refuse(f"{anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise refuse(f"cannot write in {anc} (permission denied or read-only)", "give a folder you can write in")


# ---------------------------------------------------------------------------------------------
# temporary siblings
# ---------------------------------------------------------------------------------------------

_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_siblings(out: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` left next to ``out`` by runs that were killed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for f in out.parent.iterdir():
        m = _SIBLING.match(f.name)
        if m and m.group("name") == out.name and not _pid_alive(int(m.group("pid"))):
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def _sibling(out: Path, what: str, directory: bool = True) -> Path:
    prefix = f".{out.name}.{what}-{os.getpid()}-"
    if directory:
        p = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
        p.chmod(0o755)
        return p
    fd, name = tempfile.mkstemp(prefix=prefix, dir=out.parent)
    os.close(fd)
    return Path(name)


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM while an output is being written (exit status 143)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into an exception, so ``finally`` clean-up runs as on Ctrl-C (a container stop
    sends SIGTERM). Only in the main thread, and only where nobody else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def staged_dir(out: PathLike, *inputs: Any, kind: str = "artifact",
               complete: Optional[Callable[[Path], bool]] = None) -> Iterator[Path]:
    """Yield a private temporary folder next to ``out``; on success rename it to ``out`` atomically.

    The output rule is checked before (see :func:`check_output`) and again just before the rename,
    in case something appeared at ``out`` meanwhile. On any error, Ctrl-C or SIGTERM the temporary
    folder is removed and an existing ``out`` is left untouched.
    """
    out = check_output(out, *inputs, kind=kind)
    created = make_parents(out)
    remove_stale_siblings(out)
    with sigterm_as_exit():
        tmp = _sibling(out, "tmp")
        try:
            yield tmp
            if complete is not None and not complete(tmp):
                raise RuntimeError("internal: the stage did not finish its output")
            check_output(out, *inputs, kind=kind)
            _public_modes(tmp)
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            remove_empty(created)
            raise


def _public_modes(folder: Path) -> None:
    """Modes as the user's umask gives them, for every file and folder of an output: libraries write some
    files through private temporary files (0600; e.g. ONNX external data), which a container's non-root
    server, or another user, could not read."""
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        want = (0o777 if p.is_dir() or mode & 0o111 else 0o666) & ~mask
        if mode & 0o777 != want:
            os.chmod(p, want)


def make_parents(p: Path) -> list[Path]:
    """Create the missing ancestors of ``p``; return them, deepest first, for :func:`remove_empty`."""
    missing = [a for a in p.parents if not a.exists()]
    p.parent.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove folders this run created, if still empty, so a failed command leaves none behind."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            break


def _replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (checked to be ours) is swapped out and removed."""
    if dst.is_dir() and not dst.is_symlink():
        backup = _sibling(dst, "old")
        backup.rmdir()
        os.replace(dst, backup)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(backup, dst)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_file_atomic(out: PathLike, write: Callable[[Path], None], *inputs: Any) -> Path:
    """Write a report file through a temporary sibling, under the same output rule."""
    out = check_output(out, *inputs, kind="file")
    created = make_parents(out)
    remove_stale_siblings(out)
    with sigterm_as_exit():
        tmp = _sibling(out, "tmp", directory=False)
        try:
            write(tmp)
            tmp.chmod(0o644)
            check_output(out, *inputs, kind="file")
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            remove_empty(created)
            raise
    return out


def check_outputs_distinct(paths: Iterable[Optional[Path]]) -> None:
    seen: dict[Path, Path] = {}
    for p in paths:
        if p is None:
            continue
        r = Path(p).expanduser().resolve()
        if r in seen:
            raise ConfigError(f"{_display(r)} is named as two outputs; give each output its own path")
        seen[r] = p
