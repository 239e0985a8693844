"""The install layers, for real: fresh virtual environments with `pip install edgeopt` (the core)
and `pip install 'edgeopt[serve]'`, built from this checkout.

- in the core, every command either works (inspect, targets, bench of ONNX artifacts, recipe
  validation) or stops with one line naming the extra to install, never an ImportError;
- in the [serve] environment there is no torch, it stays under 300 MB, and `edgeopt serve` on an
  int8 artifact answers with the predictions of a reference built from transformers' tokenizer.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _support import REPO, write_jsonl

pytestmark = pytest.mark.slow

# Real descriptions and text that tokenizers get wrong easily: accents, emoji, CJK, very long.
SENTENCES_FOR_SERVE = [
    "Wireless noise-cancelling headphones with 30 hours of battery life.",
    "Crème brûlée torch, café-grade, naïve façade — déjà vu.",
    "👩‍👩‍👧 family pack 👍🏽 of socks 🧦",
    "无线蓝牙耳机，降噪，续航三十小时。",
    "ok",
    "Stainless steel chef's knife " * 130,  # ~3,800 characters: under the server's 4,096, far over 128 tokens
]

HEAVY = ("torch", "transformers", "peft", "onnx", "fastapi", "uvicorn", "matplotlib", "sklearn", "PIL")


class Venv:
    def __init__(self, root: Path):
        self.root = root
        self.python = str(root / "bin" / "python")
        self.edgeopt = str(root / "bin" / "edgeopt")

    def site_packages(self) -> Path:
        return next((self.root / "lib").glob("python3*/site-packages"))

    def run(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        return subprocess.run([self.edgeopt, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _make_venv(tmp: Path, extras: str = "") -> Venv:
    """A venv with edgeopt installed (not editable) from a copy of this checkout's sources, so
    building it writes nothing into the checkout."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("edgeopt", "targets", "examples", "docker"):  # edgeopt/_docker links to ../docker
        shutil.copytree(REPO / name, src / name, ignore=ignore, symlinks=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    venv = Venv(tmp / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv.root)], check=True)
    proc = subprocess.run([venv.python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-c", str(REPO / "constraints.txt"), f"{src}{extras}"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> Venv:
    return _make_venv(tmp_path_factory.mktemp("core"))


@pytest.fixture(scope="module")
def serve_env(tmp_path_factory) -> Venv:
    return _make_venv(tmp_path_factory.mktemp("serve"), "[serve]")


def _importable(venv: Venv, modules) -> list[str]:
    code = f"import importlib.util as u; print([m for m in {tuple(modules)!r} if u.find_spec(m)])"
    out = subprocess.run([venv.python, "-c", code], capture_output=True, text=True, check=True, cwd=venv.root).stdout
    return eval(out)  # a list literal of module names


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def test_core_holds_no_training_serving_or_plotting_stack(core):
    assert _importable(core, HEAVY) == []
    assert _importable(core, ("onnxruntime", "tokenizers", "numpy")) == ["onnxruntime", "tokenizers", "numpy"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, tiny_text_classifier, text_jsonl) -> Path:
    d = tmp_path_factory.mktemp("recipe")
    p = d / "recipe.yaml"
    p.write_text(f"name: t\nmodel: {tiny_text_classifier}\nworkdir: {d / 'runs'}\nstages:\n"
                 f"  - {{name: onnx, kind: export}}\n"
                 f"  - {{name: int8, kind: quantize, ptq: dynamic, eval_data: {text_jsonl}}}\n")
    return p


def _commands(hf, onnx, text_jsonl, recipe):
    """(arguments, the extra the command must ask for, or None where it works in the core)."""
    return [
        (["export", hf, "-o", "out"], "train"),
        (["export", onnx, "-o", "out"], "train"),
        (["quantize", onnx, "-o", "out", "--ptq", "dynamic"], "train"),
        (["quantize", hf, "-o", "out", "--qat", "--data", text_jsonl], "train"),
        (["merge", hf, "--adapter", hf, "-o", "out"], "train"),
        (["prune", hf, "-o", "out", "--sparsity", "0.5"], "train"),
        (["distill", hf, "-o", "out", "--data", text_jsonl, "--student-layers", "1"], "train"),
        (["run", recipe], "train"),
        (["demo", "--workdir", "demo"], "demo"),
        (["serve", onnx], "serve"),
        (["bench", hf], "train"),
        (["bench", onnx, "--report", "report.md", "--runs", "2"], "report"),
        (["inspect", hf], "train"),
        (["bench", onnx, "--data", "sklearn:digits"], "demo"),
        (["run", "--validate", recipe], None),
        (["bench", onnx, "--runs", "3", "--batch-sizes", "1"], None),
        (["inspect", onnx], None),
        (["targets"], None),
        (["--version"], None),
    ]


def test_every_command_in_the_core_works_or_names_its_extra(core, tmp_path, tiny_text_classifier, cls_int8_dynamic,
                                                            text_jsonl, recipe_file):
    commands = _commands(str(tiny_text_classifier), str(cls_int8_dynamic.path), str(text_jsonl), str(recipe_file))
    for args, extra in commands:
        cwd = tmp_path / f"cwd-{len(list(tmp_path.iterdir()))}"
        cwd.mkdir()
        proc = core.run(*args, cwd=cwd)
        shown = f"edgeopt {' '.join(args)}\nstdout: {proc.stdout[-800:]}\nstderr: {proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr.replace("error:", ""), shown
        if extra is None:
            assert proc.returncode == 0, shown
        else:
            assert proc.returncode == 2, shown
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1, shown
            assert lines[0].startswith("error: ") and f"pip install 'edgeopt[{extra}]'" in lines[0], shown
            assert "ModuleNotFoundError" not in lines[0] and "ImportError" not in lines[0], shown
        assert list(cwd.iterdir()) == [], f"{shown}\nleft behind: {list(cwd.iterdir())}"
    # the HTTP load generator needs no extra (the standard library's asyncio): a server that is not
    # there is one error line
    proc = core.run("bench", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "cannot reach the server (connection refused)" in lines[0] and "Error:" not in lines[0], proc.stderr
    for args, _ in [*commands, (["bench"], None)]:  # --help of every command works without its extra
        if args[0] not in ("--version",):
            proc = core.run(args[0], "--help", cwd=tmp_path)
            assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr


def test_python_api_in_the_core_raises_missing_dependency(core, tmp_path, tiny_text_classifier):
    code = (
        "import edgeopt\n"
        "for name, call in [('export', lambda: edgeopt.export(%r, %r)),\n"
        "                   ('load_artifact', lambda: edgeopt.load_artifact(%r))]:\n"
        "    try:\n        call()\n    except edgeopt.MissingDependencyError as e:\n        print(name, e.extra)\n"
    ) % (str(tiny_text_classifier), str(tmp_path / "out"), str(tiny_text_classifier))
    proc = subprocess.run([core.python, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["export train", "load_artifact train"]
    assert not (tmp_path / "out").exists()


def test_onnx_runtime_load_errors_explain_without_onnx(core, tmp_path):
    """Explaining why ONNX Runtime refused a model reads the graph with onnx when it is there; in
    the core (no onnx) the error is still one line naming the op, not an ImportError."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"], name="add0")], "g", [x], [y])
    path = tmp_path / "bf16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    code = ("from edgeopt.runtime.onnxruntime import open_session\nfrom edgeopt.errors import InputError\n"
            f"try:\n    open_session({str(path)!r})\nexcept InputError as e:\n    print(e)\n")
    proc = subprocess.run([core.python, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cannot load the model" in proc.stdout and "Add" in proc.stdout


def test_serving_a_pytorch_artifact_without_train_names_the_extra(serve_env, tmp_path, tiny_text_classifier):
    proc = serve_env.run("serve", str(tiny_text_classifier), "--port", str(_free_port()), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'edgeopt[train]'" in proc.stderr and "serving" not in proc.stderr


def test_serve_layer_is_small_and_has_no_torch(serve_env):
    assert _importable(serve_env, ("torch", "transformers", "matplotlib", "sklearn", "onnx")) == []
    assert _size_mb(serve_env.site_packages()) <= 300
    code = ("import sys, edgeopt.serve, edgeopt.serve.app, edgeopt.cli.main\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')])")
    out = subprocess.run([serve_env.python, "-c", code], capture_output=True, text=True, check=True,
                         cwd=serve_env.root).stdout  # not the checkout: its edgeopt/ would shadow the install
    assert out.strip() == "[]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(venv: Venv, artifact: Path, cwd: Path):
    import httpx

    port = _free_port()
    proc = subprocess.Popen([venv.edgeopt, "serve", str(artifact), "--port", str(port), "--threads", "1"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("server never became ready")


def _stop(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_serve_layer_answers_like_the_full_install(serve_env, tmp_path, cls_int8_dynamic):
    """Predictions of the int8 model served from the [serve] venv equal a reference computed the
    way the full install did it: transformers' tokenizer and an ONNX Runtime session."""
    import httpx
    import onnxruntime as ort
    from transformers import AutoTokenizer

    art = cls_int8_dynamic
    tok = AutoTokenizer.from_pretrained(art.path / art.manifest.io.preprocessing.tokenizer)
    sess = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    proc, url = _serve(serve_env, art.path, tmp_path)
    try:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "torch/lib" not in maps
        for text in SENTENCES_FOR_SERVE:
            enc = tok([text], padding="longest", truncation=True, max_length=art.manifest.io.preprocessing.max_length,
                      return_tensors="np")
            (logits,) = sess.run(["logits"], {n: enc[n].astype(np.int64) for n in names})
            z = np.exp(logits[0] - logits[0].max())
            p = z / z.sum()
            r = httpx.post(f"{url}/v1/predict", json={"inputs": [text], "top_k": 3}, timeout=30)
            assert r.status_code == 200, r.text
            pred = r.json()["predictions"][0]
            assert pred["label"] == art.manifest.labels[int(p.argmax())]
            got = {t["label"]: t["score"] for t in pred["top"]}
            for i, label in enumerate(art.manifest.labels):
                assert got[label] == pytest.approx(float(p[i]), abs=1e-5)
        batch = httpx.post(f"{url}/v1/predict", json={"inputs": SENTENCES_FOR_SERVE}, timeout=30).json()
        assert [x["label"] for x in batch["predictions"]] == [
            httpx.post(f"{url}/v1/predict", json={"inputs": [t]}, timeout=30).json()["predictions"][0]["label"]
            for t in SENTENCES_FOR_SERVE]
        assert "edgeopt_requests" in httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        _stop(proc)
    assert list(tmp_path.iterdir()) == []


def test_serve_layer_serves_an_image_model(serve_env, tmp_path, digits_onnx):
    """Image decoding and preprocessing without torch: PNG digits through the [serve] venv agree
    with the same pixels run through ONNX Runtime here."""
    import httpx
    import onnxruntime as ort
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images[:6].astype(np.float32)
    art = digits_onnx
    pre = art.manifest.io.preprocessing
    sess = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
    payload = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").save(buf, format="PNG")
        payload.append(base64.b64encode(buf.getvalue()).decode())
    proc, url = _serve(serve_env, art.path, tmp_path)
    try:
        r = httpx.post(f"{url}/v1/predict", json={"images": payload}, timeout=30)
        assert r.status_code == 200, r.text
        labels = [p["label"] for p in r.json()["predictions"]]
    finally:
        _stop(proc)
    x = []
    for b in payload:  # the server's own decoding path, replayed: PIL decode + resize, then normalise
        img = Image.open(io.BytesIO(base64.b64decode(b))).convert("L").resize((pre.size[1], pre.size[0]))
        x.append(np.asarray(img, dtype=np.float32))
    x = (np.stack(x)[:, None] * pre.scale - np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)) \
        / np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})
    assert labels == [art.manifest.labels[i] for i in logits.argmax(-1)]


def test_recipe_validation_in_the_core_reads_every_stage_config(core, tmp_path, text_jsonl):
    """`run --validate` in the core still reports every problem at once (the registry loads each
    stage's config class without torch)."""
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": "a"}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n"
                      "  - {name: a, kind: finetune, train_data: d.jsonl, epochs: 0}\n"
                      "  - {name: b, kind: export, opset: 99}\n"
                      "  - {name: c, kind: nope}\n")
    proc = core.run("run", "--validate", str(recipe), "--json", cwd=tmp_path)
    assert proc.returncode == 2
    for where in ("stages[0] (a).epochs", "stages[1] (b).opset", "stages[2] (c).kind"):
        assert where in proc.stderr, proc.stderr
    assert p.is_file()
