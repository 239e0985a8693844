"""Readiness across the worker processes of ``serve --workers N``.

Each worker has one file in the folder the parent made (``ready-<pid>`` once its model is loaded
and warmed up). Whichever worker answers ``/readyz`` counts the ready files of live processes, so
the server says ready only when all N are; a worker that died does not count, and the one uvicorn
starts in its place counts once it is ready.
"""
from __future__ import annotations

import os
from pathlib import Path

from .metrics import alive


class WorkerBoard:
    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / f"ready-{os.getpid()}"

    def ready(self) -> None:
        self.path.touch()

    def leave(self) -> None:
        self.path.unlink(missing_ok=True)

    def count_ready(self) -> int:
        n = 0
        for f in self.folder.glob("ready-*"):
            pid = f.name.removeprefix("ready-")
            if pid.isdigit() and alive(int(pid)):
                n += 1
        return n
