"""FastAPI app factory: task-aware predict, model info, health, readiness, Prometheus metrics,
micro-batching, and the limits that keep a server up under bad input.

What is task-specific (which request field, decoding, preprocessing, the response) lives in one
codec per task (``edgeopt.serve.codecs``); this module wires codecs, the micro-batcher and HTTP.
Importing it loads neither fastapi nor the model's libraries: ``create_app`` imports the web
stack, the loader thread the runtime.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    create_model,
)

from ..artifact import Artifact, Manifest, TextPreprocessing, load_artifact
from ..errors import ConfigError
from .codecs import Codec, Options, RequestError, TensorsCodec, codec_for
from ..runtime.onnxruntime import OrtRuntime
from .workers import WorkerBoard

log = logging.getLogger("edgeopt.serve")
OPEN_ROUTES = {"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
JSON_ROUTES = {"/v1/predict"}
FORM_ROUTES = {"/v1/predict/images"}
FIELDS = ("inputs", "images", "tensors")  # PredictRequest's input fields, in the order messages name them

ENV_PREFIX = "EDGEOPT_"  # ServeSettings.from_env: EDGEOPT_<FIELD>, e.g. EDGEOPT_MAX_BATCH
SETTINGS_ENV = "EDGEOPT_SERVE_SETTINGS"  # all settings as one JSON object (what `serve --workers N` passes on)
BODY_MB_ENV = "EDGEOPT_MAX_BODY_MB"  # also read: `edgeopt serve --max-body-mb` takes megabytes
# Set by serve() for its worker processes: the artifact path the parent already sha256-verified.
VERIFIED_ENV = "EDGEOPT_SERVE_VERIFIED"
# Set by serve() for its worker processes: the folder they share (readiness, metrics), removed at exit.
SHARED_ENV = "EDGEOPT_SERVE_SHARED"
CLIENT_GONE = 499  # nginx's "client closed request": logged and counted, never seen by the client
WATCH_AFTER_S = 0.5  # a prediction that takes longer has its client watched for a disconnect
RELEASE_ABOVE_TOKENS = 512  # after a batch bigger than this, ONNX Runtime returns its arena's unused memory


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str
    max_batch: int = Field(16, ge=1, le=1024)
    # a batch's padded tokens (items x longest): bounds one model call's work, so a heavy request
    # is split into batches that alternate with others instead of holding the model for seconds
    max_batch_tokens: int = Field(2048, ge=1)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    threads: int | None = Field(None, ge=1)
    target: str | None = None
    api_key_env: str | None = None
    max_items: int = Field(64, ge=1, le=4096)  # inputs per request
    max_text_chars: int = Field(4096, ge=1)  # per text; tokens beyond the model's max_length are truncated
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    timeout_s: float = Field(30.0, gt=0)
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # checked from the header, before decoding
    workers: int = Field(1, ge=1, le=256)  # server processes; /readyz is 200 only when all are ready
    access_log: bool = True
    log_format: Literal["text", "json"] = "text"
    # language models (task text-generation: OpenAI's /v1/completions and /v1/chat/completions, edgeopt.serve.llm)
    max_new_tokens: int = Field(512, ge=1)  # a request's max_tokens (422 beyond); the default, capped by the context
    max_prompt_tokens: int | None = Field(None, ge=1)  # 422 beyond; None: the model's context
    max_generations: int = Field(4, ge=1, le=256)  # generations running at once; more wait, up to timeout_s (504)

    @classmethod
    def env_vars(cls) -> dict[str, str]:
        """field -> its environment variable (EDGEOPT_<FIELD>), for from_env and the CLI's options."""
        return {name: ENV_PREFIX + name.upper() for name in cls.model_fields}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServeSettings":
        """Settings from the environment: EDGEOPT_SERVE_SETTINGS (JSON, all of them) when set, else one
        EDGEOPT_<FIELD> variable per setting (unset or empty: the default). Bad values: a ConfigError
        naming the variable."""
        env = os.environ if environ is None else environ
        if env.get(SETTINGS_ENV):
            try:
                return cls.model_validate_json(env[SETTINGS_ENV])
            except ValidationError as e:
                raise ConfigError(f"{SETTINGS_ENV}: {_first_error(e)}") from e
        names = cls.env_vars()
        # strings as pydantic's lax mode takes them ("16" -> 16); the field constraints still apply
        values = {f: env[v].strip() for f, v in names.items() if env.get(v, "").strip()}
        if "max_body_bytes" not in values and env.get(BODY_MB_ENV, "").strip():  # the name `edgeopt serve` reads
            try:
                values["max_body_bytes"] = str(int(float(env[BODY_MB_ENV]) * 1024 * 1024))
            except ValueError:
                raise ConfigError(f"{BODY_MB_ENV}={env[BODY_MB_ENV]!r}: give a number of megabytes, e.g. 8") from None
        try:
            return cls(**values)
        except ValidationError as e:
            parts = []
            for err in e.errors():
                field = str(err["loc"][0]) if err["loc"] else ""
                var = names.get(field, SETTINGS_ENV)
                if err["type"] == "missing":
                    parts.append(f"{var}: unset; export it with the artifact directory to serve")
                else:
                    parts.append(f"{var}={values.get(field)!r}: {err['msg'].removeprefix('Value error, ')}")
            raise ConfigError("; ".join(parts)) from e


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


class _Error(BaseModel):
    error: str


class Label(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str
    score: float
    top: list[Label] | None = None


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction] | None = None
    embeddings: list[list[float]] | None = None
    outputs: dict[str, list] | None = None


def _predict_request_model(settings: ServeSettings, manifest: Manifest) -> type[BaseModel]:
    """The JSON request schema; its limits come from the settings, so they are in the OpenAPI document."""
    pre = manifest.io.preprocessing
    max_len = pre.max_length if isinstance(pre, TextPreprocessing) else None
    n = settings.max_items
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        inputs=(list[Annotated[str, StringConstraints(max_length=settings.max_text_chars)]] | None,
                Field(None, min_length=1, max_length=n,
                      description=f"Texts to classify/embed: 1..{n} per request, each at most "
                                  f"{settings.max_text_chars} characters; tokens beyond {max_len} are truncated.")),
        images=(list[str] | None, Field(None, min_length=1, max_length=n,
                                           description=f"Base64-encoded images (PNG/JPEG...), 1..{n} per request.")),
        tensors=(dict[str, list] | None, Field(None, description="Raw input tensors by the model's IO spec (name -> nested lists).")),
        top_k=(StrictInt, Field(1, ge=1, le=max(1, len(manifest.labels or [1])), description="Labels to return per input (classifiers).")),
    )


def _json_response(body: dict):
    """The response as JSON bytes, skipping FastAPI's re-validation against the response model (the
    codecs build it; the model stays declared for the OpenAPI document)."""
    import json

    from fastapi.responses import Response

    try:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise RequestError("the model's outputs are not finite numbers (NaN or infinity); "
                           "check the artifact against its source with `edgeopt compare`", 500) from None
    return Response(data, media_type="application/json")


def _http_error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def release_heap() -> None:
    """Give the heap's freed memory back to the system (glibc's malloc_trim); a no-op elsewhere.
    Loading a model and running a big batch leave megabytes freed but still counted in the RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ClientGone(Exception):
    """The client closed the connection before its prediction was done: the work was dropped."""


async def _disconnected(receive) -> None:
    """Returns when the client has gone away (the body was already read: the next message the
    server has for this request is its disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Readiness:
    """Readiness of a server's model: ``state`` (ready, error), ``board`` (with --workers) and ``settings``."""

    state: dict
    board: "WorkerBoard | None"
    settings: ServeSettings

    def require_ready(self) -> None:
        if not self.state["ready"]:
            err = self.state["error"]
            raise RequestError(f"model failed to load: {err}" if err else "model is loading; retry shortly", 503)

    def readiness(self) -> None:
        """RequestError(503) unless this worker, and with --workers every worker, is ready."""
        self.require_ready()
        if self.board is not None:
            n = self.board.count_ready()
            if n < self.settings.workers:
                raise RequestError(f"{n} of {self.settings.workers} workers ready; retry shortly", 503)


class Predictor(Readiness):
    """The model behind the routes: loads and warms it up off the event loop, and runs each
    request through its codec: decode -> (micro-batcher) preprocess + model call -> encode.

    One deadline per request (``timeout_s``) covers decoding, the queue and the model; when it
    passes, or the client disconnects, the request's queued work is dropped, never run."""

    def __init__(self, art: Artifact, settings: ServeSettings, metrics, board: WorkerBoard | None = None):
        from .batcher import MicroBatcher

        self.art = art
        self.settings = settings
        self.metrics = metrics
        self.board = board
        self.codec: Codec | None = codec_for(art, settings)  # None: the model takes raw tensors only
        self.tensors = TensorsCodec(art, settings)
        # exposed as app.state.serve_state; "ready"/"error" answer /readyz and guard predict
        self.state: dict[str, Any] = {"ready": False, "error": None, "rt": None}
        self.decoding = 0  # requests admitted for prediction, not yet queued: company worth waiting for
        self.batcher = MicroBatcher(self._infer, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                    max_tokens=settings.max_batch_tokens, on_batch=self._on_batch,
                                    on_drop=metrics.dropped.inc, coming=lambda: self.decoding)
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgeopt-decode")

    async def start(self) -> None:
        await self.batcher.start()
        # the server answers /healthz (and 503 on /readyz) while the model loads
        threading.Thread(target=self.load, name="edgeopt-load", daemon=True).start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._decoder.shutdown(wait=False)
        if self.board is not None:
            self.board.leave()
        self.metrics.worker_exit()

    def load(self) -> None:
        try:
            from ..metrics import sample_dataset
            from ..runtime import load_runtime

            rt = load_runtime(self.art, threads=self.settings.threads, target=self.settings.target)
            for codec in (self.codec, self.tensors):
                if codec is not None:
                    codec.setup(rt)
            self.state["rt"] = rt
            if self.codec is not None:  # warm up: first runs allocate and pick kernels
                warm = self.codec.from_samples(sample_dataset(self.art, 4).samples)
                for n in (1, min(4, self.settings.max_batch)):
                    rt.run(self.codec.preprocess(warm[:n]))
            release_heap()  # what loading freed: ~10 MB of an idle server's RSS
            self.state["ready"] = True
            if self.board is not None:
                self.board.ready()
        except Exception as e:  # surfaced by /readyz and predict
            log.exception("model failed to load")
            self.state["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__

    def _on_batch(self, items: int, tokens: int) -> None:
        self.metrics.batch_size.observe(items)
        if self.codec is not None and self.codec.kind == "text":
            self.metrics.batch_tokens.observe(tokens)
        self.metrics.queue_depth.set(self.batcher.queued_items)

    def _infer(self, items: list) -> list:
        """One micro-batch, in the inference thread (the time includes preprocessing, as clients see it)."""
        t = time.perf_counter()
        rt = self.state["rt"]
        feeds = self.codec.preprocess(items)
        costs = self.codec.costs(items)
        if costs and len(costs) * max(costs) > RELEASE_ABOVE_TOKENS and isinstance(rt, OrtRuntime):
            out = rt.run(feeds, release_memory=True)  # a rare big batch must not keep its memory
            release_heap()
        else:
            out = rt.run(feeds)
        self.metrics.inference.observe(time.perf_counter() - t)
        return out

    async def _bounded(self, work: Awaitable, deadline: float, receive, what: str):
        """``work``'s result, unless the deadline passes (504) or the client goes away (ClientGone)
        first; then ``work`` is cancelled, which drops whatever of it has not started. The client is
        watched only once the work has taken WATCH_AFTER_S: most requests are done sooner."""
        loop = asyncio.get_running_loop()
        fut = asyncio.ensure_future(work)
        watch = None
        try:
            done, _ = await asyncio.wait((fut,), timeout=max(0.0, min(WATCH_AFTER_S, deadline - loop.time())))
            if not done and receive is not None:
                watch = asyncio.ensure_future(_disconnected(receive))
            if not done:
                done, _ = await asyncio.wait((fut,) if watch is None else (fut, watch),
                                             timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            fut.cancel()
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if fut in done:
            return fut.result()
        fut.cancel()
        if watch is not None and watch in done:
            self.metrics.cancelled.labels("disconnect").inc()
            raise ClientGone()
        self.metrics.cancelled.labels("timeout").inc()
        raise RequestError(f"{what} took longer than {self.settings.timeout_s:g} s", 504)

    async def predict(self, decode: Callable[[Any], list], value: Any, options: Options, receive=None) -> dict:
        """``decode`` is the codec's decode or decode_files; ``receive``: the request's ASGI receive,
        to notice a client that went away."""
        codec = self.codec
        assert codec is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        self.decoding += 1
        try:
            if codec.heavy(value):
                items = await self._bounded(loop.run_in_executor(self._decoder, decode, value), deadline, receive,
                                            f"decoding {codec.field}")
            else:
                items = decode(value)
        finally:
            self.decoding -= 1
        outputs = await self._bounded(self.batcher.submit(items, codec.costs(items)), deadline, receive, "prediction")
        self.metrics.items.inc(len(items))
        return {"model": self.art.name, **codec.encode(outputs, options)}

    async def predict_tensors(self, value: dict, receive=None) -> dict:
        deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        feeds = self.tensors.decode(value)
        outputs = await self._bounded(self.batcher.run_alone(self.tensors.predict, self.state["rt"], feeds), deadline,
                                      receive, "prediction")
        return {"model": self.art.name, **self.tensors.encode(outputs, Options())}


def _api_key(settings: ServeSettings) -> str | None:
    if not settings.api_key_env:
        return None
    key = os.environ.get(settings.api_key_env)
    if not key:
        raise ConfigError(f"--api-key-env {settings.api_key_env}: that environment variable is empty or unset; export it with the key")
    return key


def _install_error_handlers(app) -> None:
    """Every error is {"error": "..."}: one line, never a stack trace."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _http_error(422, f"body: not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        return _http_error(422, f"{loc}: {first.get('msg')}{more}")

    @app.exception_handler(RequestError)
    async def on_request_error(request, exc: RequestError):
        return _http_error(exc.status, exc.message)

    @app.exception_handler(ClientGone)
    async def on_client_gone(request, exc: ClientGone):  # nobody reads it: for the log and the metrics
        return _http_error(CLIENT_GONE, "the client went away; its prediction was dropped")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request, exc: StarletteHTTPException):
        return _http_error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_error(request, exc: Exception):  # never leak a stack trace
        log.exception("unhandled error")
        return _http_error(500, "internal error; see the server log")


def _model_info(art: Artifact, settings: ServeSettings) -> dict:
    m = art.manifest
    pre = m.io.preprocessing
    return {
        "name": art.name, "task": m.task, "format": m.format, "precision": m.model.precision,
        "labels": m.labels, "target": settings.target or "host",
        "inputs": [t.model_dump() for t in m.io.inputs], "outputs": [t.model_dump() for t in m.io.outputs],
        "preprocessing": pre.model_dump() if pre else None,
        "lineage": [{"stage": e.stage, "parent_hash": e.parent_hash} for e in m.lineage],
        "metrics": {k: v for k, v in m.metrics.items() if k in ("eval", "numeric_check", "size_bytes", "test_accuracy")},
        "limits": {"max_items": settings.max_items, "max_text_chars": settings.max_text_chars,
                   "max_tokens": pre.max_length if isinstance(pre, TextPreprocessing) else None,
                   "max_body_bytes": settings.max_body_bytes, "timeout_s": settings.timeout_s},
        "batching": {"max_batch": settings.max_batch, "max_batch_tokens": settings.max_batch_tokens,
                     "max_wait_ms": settings.max_wait_ms},
        "workers": settings.workers,
    }


def _add_routes(app, p: Predictor, settings: ServeSettings, metrics) -> None:
    from fastapi import File, Request, UploadFile

    PredictRequest = _predict_request_model(settings, p.art.manifest)
    errors = {code: {"model": _Error} for code in (400, 401, 413, 415, 422, 503, 504)}

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=errors)
    async def predict(req: PredictRequest, request: Request):  # type: ignore[valid-type]
        """Predict. Text models take `inputs`, image models `images` (base64); any model takes raw `tensors`."""
        p.require_ready()
        given = [f for f in FIELDS if getattr(req, f) is not None]
        if len(given) != 1:
            raise RequestError("give exactly one of 'inputs' (texts), 'images' (base64) or 'tensors'")
        field = given[0]
        value = getattr(req, field)
        if field == p.tensors.field:
            return _json_response(await p.predict_tensors(value, request.receive))
        if p.codec is None or field != p.codec.field:
            kind = p.codec.kind if p.codec is not None else None
            others = " or ".join(f"'{f}'" for f in FIELDS if f != field)
            raise RequestError(f"this model takes {kind or 'raw tensor'} input; send {others}, not '{field}'")
        return _json_response(await p.predict(p.codec.decode, value, Options(top_k=req.top_k), request.receive))

    @app.post("/v1/predict/images", response_model=PredictResponse, response_model_exclude_none=True, responses=errors)
    async def predict_images(files: Annotated[list[UploadFile], File(description="Image files (multipart/form-data).")],
                             request: Request):
        """Predict on uploaded image files (multipart), for image models."""
        p.require_ready()
        if p.codec is None or not p.codec.accepts_files:
            raise RequestError("this model does not take images; use POST /v1/predict with 'inputs' or 'tensors'")
        if not files or len(files) > settings.max_items:
            raise RequestError(f"files: send 1..{settings.max_items} images per request")
        return _json_response(await p.predict(p.codec.decode_files, [await f.read() for f in files], Options(),
                                              request.receive))

    _add_common_routes(app, p, metrics, info=lambda: _model_info(p.art, settings),
                       queued=lambda: p.batcher.queued_items)


def _add_common_routes(app, p, metrics, info: Callable[[], dict], queued: Callable[[], int]) -> None:
    """/v1/model, /healthz, /readyz and /metrics, for any server (``p``: its readiness())."""
    from fastapi.responses import PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST

    @app.get("/v1/model")
    async def model_info():
        """Manifest summary: task, labels, precision, IO, lineage, target."""
        return info()

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        """The process is alive."""
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], responses={503: {"model": _Error}})
    async def readyz():
        """The model is loaded and warmed up (with --workers: in every worker)."""
        p.readiness()
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prom():
        """Prometheus metrics."""
        metrics.queue_depth.set(queued())
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: ServeSettings, artifact: Artifact | None = None):
    """The app for ``settings``. ``artifact``: the already loaded (verified) artifact; when None it is
    loaded from ``settings.artifact`` here, which sha256-verifies every file."""
    from .._optional import SERVER_MODULES, require

    require("serve", purpose="serving", modules=SERVER_MODULES)
    from fastapi import FastAPI

    from .guard import Guard
    from .metrics import ServeMetrics

    art = artifact if artifact is not None else load_artifact(settings.artifact)
    check_servable(art)  # before the server listens, not in the loader thread
    lm = art.manifest.task == "text-generation"  # a language model: OpenAI's completion routes (edgeopt.serve.llm)
    m = art.manifest
    api_key = _api_key(settings)
    # several workers share a folder serve() made: readiness and metrics are the whole server's
    shared = os.environ.get(SHARED_ENV) if settings.workers > 1 else None
    board = WorkerBoard(Path(shared)) if shared else None
    metrics = ServeMetrics(settings.timeout_s, multiprocess=board is not None)
    metrics.model_info.labels(art.name, m.task, m.format, m.model.precision, str(settings.target or "host")).set(1)
    if lm:
        from .llm import LLM_JSON_ROUTES, OPENAI_ROUTES, LMServer, OpenAIErrors, add_llm_routes

        predictor = LMServer(art, settings, metrics, board)
    else:
        predictor = Predictor(art, settings, metrics, board)

    @asynccontextmanager
    async def lifespan(app):
        await predictor.start()
        yield
        await predictor.stop()

    app = FastAPI(title="edgeopt serve", version=m.edgeopt_version, lifespan=lifespan,
                  description=f"Serving {art.name}: {m.task}, {m.format} {m.model.precision}.")
    _install_error_handlers(app)
    if lm:
        add_llm_routes(app, predictor, settings, metrics)
    else:
        _add_routes(app, predictor, settings, metrics)
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes, api_key=api_key, metrics=metrics,
                       routes=lambda: {r.path for r in app.routes}, open_routes=OPEN_ROUTES,
                       json_routes=JSON_ROUTES | LLM_JSON_ROUTES if lm else JSON_ROUTES,
                       form_routes=FORM_ROUTES, access=settings.access_log)
    if lm:  # outside the Guard: its refusals too take OpenAI's error shape on OpenAI's routes
        app.add_middleware(OpenAIErrors, paths=OPENAI_ROUTES)
    app.state.settings = settings
    app.state.serve_state = predictor.state
    app.state.metrics = metrics
    app.state.predictor = predictor
    return app


def check_servable(art: Artifact) -> None:
    """What serving ``art`` needs is installed (language models: what runs their generator); a
    ConfigError otherwise, before the server listens."""
    if art.manifest.task == "text-generation":
        from ..llm.generate import check_generator

        check_generator(art)
        return
    from ..formats import handler_for

    handler_for(art).check_runtime_installed(art)


def app_from_env():
    """Factory for `uvicorn --factory` / multi-worker serving: settings from the environment
    (``ServeSettings.from_env``). Verifies the artifact unless serve() in the parent already did."""
    settings = ServeSettings.from_env()
    verified = os.environ.get(VERIFIED_ENV) == settings.artifact
    return create_app(settings, load_artifact(settings.artifact, verify=not verified))


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


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          artifact: Artifact | None = None) -> None:
    """Run uvicorn with ``settings.workers`` processes. ``artifact``: the already loaded (verified)
    artifact; when None it is loaded (verified) here, before the port is bound, so a bad artifact
    fails fast. Logs go to stderr as text or JSON lines (``settings.log_format``) at ``log_level``."""
    import shutil
    import signal
    import tempfile

    from .._optional import SERVER_MODULES, require

    require("serve", purpose="serving", modules=SERVER_MODULES)
    import uvicorn

    from .logs import check_level, log_config
    from .metrics import MULTIPROC_ENV

    log_level = check_level(log_level)
    art = artifact if artifact is not None else load_artifact(settings.artifact)
    check_bind(host, port)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler that was
    # there before it; a no-op one makes a graceful stop exit 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    common = dict(host=host, port=port, log_level=log_level, log_config=log_config(log_level, settings.log_format),
                  access_log=False, timeout_graceful_shutdown=settings.timeout_s)  # the access log is Guard's
    if settings.workers == 1:
        uvicorn.run(create_app(settings, art), **common)
        return
    # each worker process builds its own app (app_from_env); hashing every file once per worker
    # would only repeat what was just done here, so tell them which path is verified
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    if Path(settings.artifact).expanduser().resolve() == art.path.resolve():
        os.environ[VERIFIED_ENV] = settings.artifact
    # the workers' shared folder: ready files and prometheus-client's multiprocess metrics; it is
    # set in the environment before any worker starts (and imports prometheus_client)
    shared = Path(tempfile.mkdtemp(prefix="edgeopt-serve-"))
    (shared / "metrics").mkdir()
    os.environ[SHARED_ENV] = str(shared)
    os.environ[MULTIPROC_ENV] = str(shared / "metrics")
    try:
        uvicorn.run("edgeopt.serve.app:app_from_env", factory=True, workers=settings.workers, **common)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
