"""The app factory around the codecs: settings from environment variables, the artifact verified
once (create_app / serve / app_from_env take a loaded one), and a serving process that never
imports torch or transformers for an ONNX image model."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from edgeopt.errors import ConfigError
from edgeopt.serve import app as serve_app
from edgeopt.serve.app import SETTINGS_ENV, SHARED_ENV, VERIFIED_ENV, ServeSettings

ENV_NAMES = ["EDGEOPT_ARTIFACT", "EDGEOPT_MAX_BATCH", "EDGEOPT_MAX_BATCH_TOKENS", "EDGEOPT_MAX_WAIT_MS", "EDGEOPT_THREADS",
             "EDGEOPT_TARGET", "EDGEOPT_API_KEY_ENV", "EDGEOPT_MAX_ITEMS", "EDGEOPT_MAX_TEXT_CHARS", "EDGEOPT_MAX_BODY_BYTES",
             "EDGEOPT_TIMEOUT_S", "EDGEOPT_MAX_IMAGE_PIXELS", "EDGEOPT_WORKERS", "EDGEOPT_ACCESS_LOG", "EDGEOPT_LOG_FORMAT",
             "EDGEOPT_MAX_NEW_TOKENS", "EDGEOPT_MAX_PROMPT_TOKENS", "EDGEOPT_MAX_GENERATIONS"]


@pytest.fixture
def clean_env(monkeypatch):
    """No serve variables from the outside; whatever a test (or serve()) sets is undone afterwards."""
    for name in [*ENV_NAMES, SETTINGS_ENV, VERIFIED_ENV, SHARED_ENV, "PROMETHEUS_MULTIPROC_DIR"]:
        monkeypatch.setenv(name, "")  # registered with monkeypatch, so restored even when serve() overwrites it
        monkeypatch.delenv(name)
    return monkeypatch


# ---------------------------------------------------------------------------------------------
# settings from the environment
# ---------------------------------------------------------------------------------------------

def test_every_setting_has_an_env_var():
    assert list(ServeSettings.env_vars().values()) == ENV_NAMES
    assert list(ServeSettings.env_vars()) == list(ServeSettings.model_fields)


def test_settings_from_env_vars():
    env = {"EDGEOPT_ARTIFACT": "/models/m", "EDGEOPT_MAX_BATCH": "8", "EDGEOPT_MAX_WAIT_MS": "2.5", "EDGEOPT_THREADS": "2",
           "EDGEOPT_TARGET": "rpi", "EDGEOPT_API_KEY_ENV": "MY_KEY", "EDGEOPT_MAX_ITEMS": "10", "EDGEOPT_MAX_TEXT_CHARS": "100",
           "EDGEOPT_MAX_BODY_BYTES": "4096", "EDGEOPT_TIMEOUT_S": "1.5", "EDGEOPT_MAX_IMAGE_PIXELS": "1000",
           "EDGEOPT_QUIET": "1"}  # other EDGEOPT_ variables are not settings and are ignored
    s = ServeSettings.from_env(env)
    assert s == ServeSettings(artifact="/models/m", max_batch=8, max_wait_ms=2.5, threads=2, target="rpi",
                              api_key_env="MY_KEY", max_items=10, max_text_chars=100, max_body_bytes=4096,
                              timeout_s=1.5, max_image_pixels=1000)
    # unset or empty: the default
    assert ServeSettings.from_env({"EDGEOPT_ARTIFACT": "a", "EDGEOPT_THREADS": " "}) == ServeSettings(artifact="a")


def test_settings_json_wins_over_env_vars():
    env = {SETTINGS_ENV: ServeSettings(artifact="from-json", max_batch=3).model_dump_json(),
           "EDGEOPT_ARTIFACT": "from-var", "EDGEOPT_MAX_BATCH": "7"}
    assert ServeSettings.from_env(env) == ServeSettings(artifact="from-json", max_batch=3)


def test_bad_env_settings_name_the_variable():
    with pytest.raises(ConfigError, match="^EDGEOPT_ARTIFACT: unset"):
        ServeSettings.from_env({"EDGEOPT_MAX_BATCH": "4"})
    with pytest.raises(ConfigError) as e:
        ServeSettings.from_env({"EDGEOPT_ARTIFACT": "a", "EDGEOPT_MAX_BATCH": "many", "EDGEOPT_TIMEOUT_S": "0"})
    assert "EDGEOPT_MAX_BATCH='many'" in str(e.value) and "EDGEOPT_TIMEOUT_S='0'" in str(e.value)
    with pytest.raises(ConfigError, match=f"^{SETTINGS_ENV}: max_batch"):
        ServeSettings.from_env({SETTINGS_ENV: json.dumps({"artifact": "a", "max_batch": 0})})


# ---------------------------------------------------------------------------------------------
# the artifact is verified once
# ---------------------------------------------------------------------------------------------

def _no_loading(*args, **kwargs):
    raise AssertionError("load_artifact called although the artifact was given")


def test_create_app_uses_the_given_artifact(serve_digits_onnx, monkeypatch):
    monkeypatch.setattr(serve_app, "load_artifact", _no_loading)
    app = serve_app.create_app(ServeSettings(artifact=str(serve_digits_onnx.path)), serve_digits_onnx)
    assert app.state.predictor.art is serve_digits_onnx


def test_app_from_env_verifies_unless_the_parent_did(serve_digits_onnx, clean_env):
    from edgeopt.artifact import load_artifact

    calls = []

    def spy(path, verify=True):
        calls.append(verify)
        return load_artifact(path, verify=verify)

    clean_env.setattr(serve_app, "load_artifact", spy)
    path = str(serve_digits_onnx.path)
    clean_env.setenv("EDGEOPT_ARTIFACT", path)
    clean_env.setenv("EDGEOPT_MAX_BATCH", "4")
    app = serve_app.app_from_env()
    assert app.state.settings.max_batch == 4 and app.state.settings.artifact == path
    clean_env.setenv(VERIFIED_ENV, "/some/other/artifact")
    serve_app.app_from_env()
    clean_env.setenv(VERIFIED_ENV, path)
    serve_app.app_from_env()
    assert calls == [True, True, False]


@pytest.mark.parametrize("workers", [1, 3])
def test_serve_loads_once_and_tells_workers(serve_digits_onnx, clean_env, workers):
    import uvicorn

    runs = []
    clean_env.setattr(uvicorn, "run", lambda app, **kw: runs.append((app, kw)))
    clean_env.setattr(serve_app, "check_bind", lambda host, port: None)
    clean_env.setattr(serve_app, "load_artifact", _no_loading)
    settings = ServeSettings(artifact=str(serve_digits_onnx.path), max_batch=5)
    before = signal.getsignal(signal.SIGTERM)
    try:
        serve_app.serve(settings.model_copy(update={"workers": workers}), port=8123, artifact=serve_digits_onnx)
    finally:
        signal.signal(signal.SIGTERM, before)
    ((app, kw),) = runs
    assert kw["port"] == 8123
    if workers == 1:
        assert app.state.predictor.art is serve_digits_onnx
    else:
        import os

        assert app == "edgeopt.serve.app:app_from_env" and kw["factory"] and kw["workers"] == 3
        assert ServeSettings.from_env() == settings.model_copy(update={"workers": 3})  # what every worker reads
        assert os.environ[VERIFIED_ENV] == settings.artifact
        # the workers' shared folder (readiness, multiprocess metrics) is gone once the server stops
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"].startswith(os.environ[SHARED_ENV])
        assert not os.path.exists(os.environ[SHARED_ENV])
    assert kw["access_log"] is False  # edgeopt logs requests itself, with their X-Request-ID


# ---------------------------------------------------------------------------------------------
# no torch / transformers in a serving process
# ---------------------------------------------------------------------------------------------

HEAVY = ("torch", "transformers")

_PROBE = r"""
import base64, io, json, sys, time
HEAVY = {heavy!r}

def heavy():
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)

seen = {{}}
import edgeopt.serve.app as a
seen["import"] = heavy()
for name, path in {paths!r}.items():
    app = a.create_app(a.ServeSettings(artifact=path, threads=1))
    seen["create_app " + name] = heavy()
# the image model, started (load + warm-up) and predicting
from PIL import Image
from starlette.testclient import TestClient
buf = io.BytesIO()
Image.new("L", (8, 8), 3).save(buf, format="PNG")
app = a.create_app(a.ServeSettings(artifact={image!r}, threads=1))
with TestClient(app) as c:
    deadline = time.monotonic() + 60
    while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = c.post("/v1/predict", json={{"images": [base64.b64encode(buf.getvalue()).decode()]}})
    assert r.status_code == 200, r.text
    r = c.post("/v1/predict/images", files=[("files", ("a.png", buf.getvalue(), "image/png"))])
    assert r.status_code == 200, r.text
seen["serving image model"] = heavy()
print(json.dumps(seen))
"""


def test_serving_imports_neither_torch_nor_transformers(serve_cls_onnx, serve_emb_onnx, serve_digits_onnx):
    paths = {"text-classification": str(serve_cls_onnx.path), "feature-extraction": str(serve_emb_onnx.path),
             "image-classification": str(serve_digits_onnx.path)}
    code = _PROBE.format(heavy=HEAVY, paths=paths, image=str(serve_digits_onnx.path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {k: [] for k in seen}, seen
    assert len(seen) == 5
