"""`import edgeopt` and the CLI module stay light: no torch, onnxruntime or tensorrt until a command needs them."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "tensorrt", "transformers")


def _loaded_after(code: str) -> list[str]:
    script = code + f"\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lean_import():
    loaded = _loaded_after("import edgeopt, edgeopt.cli.main, edgeopt.recipe")
    assert loaded == []


def test_lean_import_of_configs_and_data():
    loaded = _loaded_after("from edgeopt import ExportConfig, QuantizeConfig, BenchConfig, load_dataset, get_target\n"
                           "get_target('x86'); load_dataset('sklearn:digits:test')")
    assert loaded == []


def test_probe_detects_heavy_imports():
    """The probe can fail: a module that does import onnxruntime is seen."""
    assert "onnxruntime" in _loaded_after("import edgeopt.runtime.onnxruntime as r; r.session_options()")
