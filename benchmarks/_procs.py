"""Process helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""
from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM (a server's graceful stop), then SIGKILL if it is still there after ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
