"""Process helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Callable, Optional


def stop_process(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM (a server's graceful stop), then SIGKILL if it is still there after ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PeakSampler:
    """Samples ``measure()`` (e.g. a server's RSS) every ``interval_s`` in a thread while in a ``with``
    block; ``peak`` is the largest value seen, the one at exit included."""

    def __init__(self, measure: Callable[[], float], interval_s: float):
        self.measure = measure
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(self.measure())
            except Exception:  # the process is gone: nothing more to sample
                return

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.samples.append(self.measure())
        except Exception:
            pass

    @property
    def peak(self) -> float:
        return max(self.samples)


def print_report(md: str, path: Optional[Path]) -> None:
    """Print a Markdown report, and write it to ``path`` when one is given."""
    print()
    print(md)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(md)
        print(f"written: {path}")
