"""FastAPI app factory: task-aware predict, model info, health, readiness, Prometheus metrics,
micro-batching, and the limits that keep a server up under bad input."""

import asyncio
import base64
import binascii
import hmac
import io
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from ..artifact import ImagePreprocessing, TextPreprocessing, load_artifact
from ..errors import ConfigError

log = logging.getLogger("edgeopt.serve")
OPEN_ROUTES = {"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str
    max_batch: int = Field(16, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    threads: Optional[int] = Field(None, ge=1)
    target: Optional[str] = None
    api_key_env: Optional[str] = None
    max_items: int = Field(64, ge=1, le=4096)  # inputs per request
    max_text_chars: int = Field(4096, ge=1)  # per text; tokens beyond the model's max_length are truncated
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    timeout_s: float = Field(30.0, gt=0)
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # checked from the header, before decoding


class _Error(BaseModel):
    error: str


def _http_error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: ServeSettings):
    from fastapi import FastAPI, File, HTTPException, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .batcher import MicroBatcher
    from .metrics import ServeMetrics

    art = load_artifact(settings.artifact)
    m = art.manifest
    pre_spec = m.io.preprocessing
    kind = pre_spec.kind if pre_spec is not None else None
    classify = m.task.endswith("classification") and bool(m.labels)
    api_key = None
    if settings.api_key_env:
        api_key = os.environ.get(settings.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {settings.api_key_env}: that environment variable is empty or unset; export it with the key")
    metrics = ServeMetrics()
    metrics.model_info.info({"name": art.name, "task": m.task, "format": m.format,
                             "precision": str(m.model.get("precision", "fp32")), "target": str(settings.target or "host")})
    state: dict[str, Any] = {"ready": False, "error": None}
    max_len = pre_spec.max_length if isinstance(pre_spec, TextPreprocessing) else None

    def load_model() -> None:
        try:
            from ..metrics import sample_dataset
            from ..models.preprocess import Preprocessor
            from ..runtime import load_runtime

            rt = load_runtime(art, threads=settings.threads, target=settings.target)
            pre = Preprocessor(art) if pre_spec is not None else None
            state.update(rt=rt, pre=pre)
            if pre is not None:  # warm up: first runs allocate and pick kernels
                warm = sample_dataset(art, 4)
                for n in (1, min(4, settings.max_batch)):
                    rt.run(pre(warm.samples[:n]))
            state["ready"] = True
        except Exception as e:  # surfaced by /readyz and predict
            log.exception("model failed to load")
            state["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__

    def infer(items):
        t = time.perf_counter()
        feeds = state["pre"](items) if kind == "text" else {state["rt"].input_names[0]: state["pre"].image(np.stack(items))}
        out = state["rt"].run(feeds)
        metrics.inference.observe(time.perf_counter() - t)
        return out

    from concurrent.futures import ThreadPoolExecutor

    decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgeopt-decode")
    in_flight = {"n": 0}
    batcher = MicroBatcher(infer, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                           on_batch=metrics.batch_size.observe, concurrency=lambda: in_flight["n"])

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        loader = threading.Thread(target=load_model, name="edgeopt-load", daemon=True)
        loader.start()
        yield
        await batcher.stop()
        decoder.shutdown(wait=False)

    app = FastAPI(title="edgeopt serve", version=m.edgeopt_version, lifespan=lifespan,
                  description=f"Serving {art.name}: {m.task}, {m.format} {m.model.get('precision', 'fp32')}.")

    # ---- request / response schemas (limits are part of the OpenAPI document) ----
    text_field = Field(None, min_length=1, max_length=settings.max_items,
                       description=f"Texts to classify/embed: 1..{settings.max_items} per request, each at most "
                                   f"{settings.max_text_chars} characters; tokens beyond {max_len} are truncated.")
    PredictRequest = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        inputs=(Optional[list[Annotated[str, StringConstraints(max_length=settings.max_text_chars)]]], text_field),
        images=(Optional[list[str]], Field(None, min_length=1, max_length=settings.max_items,
                                           description=f"Base64-encoded images (PNG/JPEG...), 1..{settings.max_items} per request.")),
        tensors=(Optional[dict[str, list]], Field(None, description="Raw input tensors by the model's IO spec (name -> nested lists).")),
        top_k=(int, Field(1, ge=1, le=max(1, len(m.labels or [1])), description="Labels to return per input (classifiers).")),
    )

    class Label(BaseModel):
        label: str
        score: float

    class Prediction(BaseModel):
        label: str
        score: float
        top: Optional[list[Label]] = None

    class PredictResponse(BaseModel):
        model: str
        predictions: Optional[list[Prediction]] = None
        embeddings: Optional[list[list[float]]] = None
        outputs: Optional[dict[str, list]] = None

    # ---- middleware: body limit, auth, metrics ----
    @app.middleware("http")
    async def guard(request: Request, call_next):
        route = request.url.path
        t0 = time.perf_counter()
        metrics.in_flight.inc()
        in_flight["n"] += 1
        status = 500
        try:
            cl = request.headers.get("content-length")
            if cl is not None and (not cl.isdigit() or int(cl) > settings.max_body_bytes):
                status = 413
                return _http_error(413, f"request body over the {settings.max_body_bytes} byte limit")
            if api_key is not None and route not in OPEN_ROUTES:
                given = request.headers.get("x-api-key") or ""
                auth = request.headers.get("authorization") or ""
                if auth.lower().startswith("bearer "):
                    given = auth[7:]
                if not hmac.compare_digest(given.encode(), api_key.encode()):
                    status = 401
                    return _http_error(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
            if request.method in ("POST", "PUT") and cl is None:
                body = b""
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > settings.max_body_bytes:
                        status = 413
                        return _http_error(413, f"request body over the {settings.max_body_bytes} byte limit")
                request._body = body  # starlette reads the cached body
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.in_flight.dec()
            in_flight["n"] -= 1
            known = route if route in {r.path for r in app.routes} else "other"
            metrics.requests.labels(known, request.method, str(status)).inc()
            metrics.latency.labels(known).observe(time.perf_counter() - t0)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _http_error(422, f"body: not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        return _http_error(422, f"{loc}: {first.get('msg')}{more}")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request, exc: StarletteHTTPException):
        return _http_error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_error(request, exc: Exception):  # never leak a stack trace
        log.exception("unhandled error")
        return _http_error(500, "internal error; see the server log")

    # ---- routes ----
    errors = {401: {"model": _Error}, 413: {"model": _Error}, 422: {"model": _Error}, 503: {"model": _Error}, 504: {"model": _Error}}

    def require_ready():
        if not state["ready"]:
            raise HTTPException(503, f"model failed to load: {state['error']}" if state["error"] else "model is loading; retry shortly")

    def render(outputs: list[np.ndarray], top_k: int) -> dict:
        out = outputs[0]
        if classify:
            z = out - out.max(axis=-1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
            preds = []
            for row in p:
                order = np.argsort(-row)[:top_k]
                top = [{"label": m.labels[i], "score": float(row[i])} for i in order]
                preds.append({**top[0], "top": top if top_k > 1 else None})
            return {"model": art.name, "predictions": preds}
        if m.task == "feature-extraction":
            return {"model": art.name, "embeddings": out.astype(float).tolist()}
        return {"model": art.name, "outputs": {n: o.tolist() for n, o in zip(state["rt"].output_names, outputs)}}

    async def run_items(items: list) -> list[np.ndarray]:
        try:
            return await asyncio.wait_for(batcher.submit(items), settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"prediction took longer than {settings.timeout_s:g} s") from None

    def decode_image(data: bytes, where: str) -> np.ndarray:
        from PIL import Image

        assert isinstance(pre_spec, ImagePreprocessing)
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
            if img.width * img.height > settings.max_image_pixels:
                raise HTTPException(422, f"{where}: {img.width}x{img.height} pixels is over the limit of "
                                         f"{settings.max_image_pixels}; downscale it first")
            img = img.convert("L" if pre_spec.channels == 1 else "RGB")
            h, w = pre_spec.size
            img = img.resize((w, h))
        except HTTPException:
            raise
        except Exception as e:  # Pillow raises many types for malformed files (incl. NotImplementedError)
            raise HTTPException(422, f"{where}: not a decodable image ({type(e).__name__})") from None
        return np.asarray(img, dtype=np.float32)

    async def decode_images(raws: list[tuple[bytes, str]]) -> list[np.ndarray]:
        """Decode off the event loop (big images must not stall other requests), under the timeout."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(decoder, lambda: [decode_image(b, where) for b, where in raws]), settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"decoding images took longer than {settings.timeout_s:g} s") from None

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=errors)
    async def predict(req: PredictRequest):  # type: ignore[valid-type]
        """Predict. Text models take `inputs`, image models `images` (base64); any model takes raw `tensors`."""
        require_ready()
        given = [k for k in ("inputs", "images", "tensors") if getattr(req, k) is not None]
        if len(given) != 1:
            raise HTTPException(422, "give exactly one of 'inputs' (texts), 'images' (base64) or 'tensors'")
        field = given[0]
        if field == "tensors":
            return await predict_tensors(req.tensors)
        if field == "inputs" and kind != "text":
            raise HTTPException(422, f"this model takes {kind or 'raw tensor'} input; send 'images' or 'tensors', not 'inputs'")
        if field == "images" and kind != "image":
            raise HTTPException(422, f"this model takes {kind or 'raw tensor'} input; send 'inputs' or 'tensors', not 'images'")
        if field == "inputs":
            items = req.inputs
        else:
            raws = []
            for i, b in enumerate(req.images):
                try:
                    raws.append((base64.b64decode(b, validate=True), f"images.{i}"))
                except (binascii.Error, ValueError):
                    raise HTTPException(422, f"images.{i}: not valid base64") from None
            items = await decode_images(raws)
        outputs = await run_items(items)
        metrics.items.inc(len(items))
        return render(outputs, req.top_k)

    @app.post("/v1/predict/images", response_model=PredictResponse, response_model_exclude_none=True, responses=errors)
    async def predict_images(files: list[UploadFile] = File(..., description="Image files (multipart/form-data).")):
        """Predict on uploaded image files (multipart), for image models."""
        require_ready()
        if kind != "image":
            raise HTTPException(422, "this model does not take images; use POST /v1/predict with 'inputs' or 'tensors'")
        if not files or len(files) > settings.max_items:
            raise HTTPException(422, f"files: send 1..{settings.max_items} images per request")
        items = await decode_images([(await f.read(), f"files.{i}") for i, f in enumerate(files)])
        outputs = await run_items(items)
        metrics.items.inc(len(items))
        return render(outputs, 1)

    async def predict_tensors(tensors: dict):
        spec = {t.name: t for t in m.io.inputs}
        missing = sorted(set(spec) - set(tensors))
        extra = sorted(set(tensors) - set(spec))
        if missing or extra:
            raise HTTPException(422, f"tensors: need exactly {sorted(spec)} (missing {missing}, unexpected {extra})")
        feeds = {}
        for name, t in spec.items():
            try:
                arr = np.asarray(tensors[name], dtype=np.dtype(t.dtype))
            except (ValueError, TypeError, OverflowError):
                raise HTTPException(422, f"tensors.{name}: not a rectangular {t.dtype} array") from None
            if arr.ndim != len(t.shape) or any(isinstance(d, int) and d != s for d, s in zip(t.shape, arr.shape)) or arr.size == 0:
                raise HTTPException(422, f"tensors.{name}: shape {list(arr.shape)} does not match {t.shape}")
            if arr.shape[0] > settings.max_items:
                raise HTTPException(422, f"tensors.{name}: batch {arr.shape[0]} over the limit of {settings.max_items}")
            feeds[name] = arr
        rt = state["rt"]
        loop = asyncio.get_running_loop()
        try:
            outputs = await asyncio.wait_for(loop.run_in_executor(batcher._executor, rt.run, feeds), settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"prediction took longer than {settings.timeout_s:g} s") from None
        except Exception as e:
            raise HTTPException(422, f"tensors: the model rejected them ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        return {"model": art.name, "outputs": {n: o.tolist() for n, o in zip(rt.output_names, outputs)}}

    @app.get("/v1/model")
    async def model_info():
        """Manifest summary: task, labels, precision, IO, lineage, target."""
        return {
            "name": art.name, "task": m.task, "format": m.format, "precision": m.model.get("precision", "fp32"),
            "labels": m.labels, "target": settings.target or "host",
            "inputs": [t.model_dump() for t in m.io.inputs], "outputs": [t.model_dump() for t in m.io.outputs],
            "preprocessing": m.io.preprocessing.model_dump() if m.io.preprocessing else None,
            "lineage": [{"stage": e.stage, "parent_hash": e.parent_hash} for e in m.lineage],
            "metrics": {k: v for k, v in m.metrics.items() if k in ("eval", "numeric_check", "size_bytes", "test_accuracy")},
            "limits": {"max_items": settings.max_items, "max_text_chars": settings.max_text_chars,
                       "max_tokens": max_len, "max_body_bytes": settings.max_body_bytes, "timeout_s": settings.timeout_s},
            "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
        }

    @app.get("/healthz")
    async def healthz():
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": _Error}})
    async def readyz():
        """The model is loaded and warmed up."""
        require_ready()
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prom():
        """Prometheus metrics."""
        metrics.queue_depth.set(batcher.queued_items)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.settings = settings
    app.state.serve_state = state
    app.state.metrics = metrics
    return app


def app_from_env():
    """Factory for `uvicorn --factory` / multi-worker serving: settings from EDGEOPT_SERVE_SETTINGS (JSON)."""
    return create_app(ServeSettings.model_validate_json(os.environ["EDGEOPT_SERVE_SETTINGS"]))


def check_bind(host: str, port: int) -> None:
    """Refuse a port outside 1-65535, an unknown host or a port already in use, in one line each
    (uvicorn would otherwise die in its event loop, or abort the process with native threads alive)."""
    import errno
    import socket

    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: choose a TCP port from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address of this machine ({e.strerror}); use 127.0.0.1 or 0.0.0.0") from e
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use; stop the other server or choose another --port") from e
            if e.errno == errno.EACCES:
                raise ConfigError(f"port {port} on {host}: permission denied (ports below 1024 need root); "
                                  "choose a port above 1024") from e
            raise ConfigError(f"--host {host} --port {port}: cannot bind ({e.strerror}); check the address") from e


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info") -> None:
    import signal

    import uvicorn

    load_artifact(settings.artifact)  # fail fast on a bad path, before binding the port
    check_bind(host, port)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler that was
    # there before it; a no-op one makes a graceful stop exit 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if workers > 1:
        os.environ["EDGEOPT_SERVE_SETTINGS"] = settings.model_dump_json()
        uvicorn.run("edgeopt.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, timeout_graceful_shutdown=settings.timeout_s)
    else:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level,
                    timeout_graceful_shutdown=settings.timeout_s)
