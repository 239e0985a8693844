"""Serving language models (task text-generation) the way OpenAI's API does: ``POST /v1/completions``
and ``POST /v1/chat/completions``, answered whole or, with ``"stream": true``, as server-sent events
(``data: {chunk}`` per text delta, a last chunk with ``finish_reason``, then ``data: [DONE]``), plus
``GET /v1/models``. The OpenAI client libraries work against it (``base_url=http://HOST:PORT/v1``).

- ``model``: any name is accepted (the server has one model); answers name the artifact.
- Sampling as OpenAI's API: ``temperature`` 1 unless given (0: greedy, the same tokens as
  ``edgeopt generate``), ``top_p``, ``seed``, ``stop`` (a string or a list); ``top_k`` besides.
  Options this server cannot honour (``n`` > 1, ``logprobs``, ``echo``, penalties, ``tools``...)
  are refused in one line rather than ignored; other unknown fields are ignored.
- Limits: ``max_tokens`` (chat: also ``max_completion_tokens``) up to ``max_new_tokens`` (422
  beyond), and by default as many as fit in the context, up to that limit; prompts up to
  ``max_prompt_tokens`` (default: the context); prompt + ``max_tokens`` over the context: 422.
- Errors on these routes take OpenAI's shape, ``{"error": {"message": "one line", "type":
  "invalid_request_error", "param": ..., "code": null}}``, so OpenAI's clients show the message
  (the server's other routes keep ``{"error": "one line"}``).

At most ``max_generations`` generations run at once, each stepping in a worker thread with its own
KV cache; more wait for a slot, up to ``timeout_s`` (504). A client that goes away, mid-stream or
while waiting, stops its generation at the next token: its slot and state are released at once.
"""
import asyncio
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..errors import ConfigError
from .app import ClientGone, Readiness, _disconnected, _model_info, release_heap
from .codecs import RequestError

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact
    from ..llm.generate import Generation
    from .app import ServeSettings
    from .workers import WorkerBoard

log = logging.getLogger("edgeopt.serve")
LLM_JSON_ROUTES = {"/v1/completions", "/v1/chat/completions"}
OPENAI_ROUTES = LLM_JSON_ROUTES | {"/v1/models"}  # errors in OpenAI's shape (OpenAIErrors)
MAX_STOPS = 16
WARMUP_PROMPT = "Hello"


# ---------------------------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields of their own (user, metadata...)
    model: Optional[str] = Field(None, description="Any name: this server has one model (answers name the artifact).")
    max_tokens: Optional[int] = Field(None, ge=1, description="Tokens to generate at most; the server's max_new_tokens "
                                      "limits it. Default: what fits in the context, up to that limit.")
    temperature: Optional[float] = Field(None, ge=0, description="0: greedy. Default 1, as OpenAI's API.")
    top_p: Optional[float] = Field(None, ge=0, le=1, description="Nucleus sampling; 1: off.")
    top_k: Optional[int] = Field(None, ge=0, description="Extension: sample from the k likeliest tokens; 0: off.")
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = Field(None, description=f"Up to {MAX_STOPS} strings that end the text "
                                                  "(not included).")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    # OpenAI options this server does not implement: refused when given a value that matters
    logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]] = Field(
        ..., description="The text to continue: a string (a list of one string, or of token ids, also do).")
    echo: Any = None
    suffix: Any = None
    best_of: Any = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Optional[str] = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(..., min_length=1)
    content: Optional[Union[str, list[ContentPart]]] = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(..., min_length=1, description="The conversation, in the model's chat template.")
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="As max_tokens (wins when both are given).")
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None


_UNSET = (None, False, 0, 0.0, "", [], {}, "none", "auto")


def _refuse_unsupported(req: _Sampling) -> None:
    if req.n != 1:
        raise RequestError(f"n: {req.n} choices asked for; this server gives one per request (n=1)")
    fields = ["logprobs", "presence_penalty", "frequency_penalty", "logit_bias"]
    fields += (["echo", "suffix"] if isinstance(req, CompletionRequest) else
               ["top_logprobs", "tools", "tool_choice", "functions", "function_call"])
    for name in fields:
        value = getattr(req, name)
        if not any(value is u or (type(value) is type(u) and value == u) for u in _UNSET):
            raise RequestError(f"{name}: not supported by this server; leave it out")
    if isinstance(req, CompletionRequest) and req.best_of not in (None, 1):
        raise RequestError("best_of: not supported by this server (one choice per request); leave it out")
    if isinstance(req, ChatRequest) and req.response_format not in (None, {}, {"type": "text"}):
        raise RequestError("response_format: only {\"type\": \"text\"} is supported; leave it out")


def _stops(stop: Union[str, list[str], None]) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise RequestError(f"stop: {len(stops)} strings; give at most {MAX_STOPS}")
    return [s for s in stops if s]


def _messages(req: ChatRequest) -> list[dict]:
    out = []
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise RequestError(f"messages.{i}.content.{j}: a {part.type!r} part; this model reads text parts only")
                texts.append(part.text)
            content = "".join(texts)
        out.append({"role": m.role, "content": content or ""})
    return out


# ---------------------------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------------------------

FINISH = {"max_new_tokens": "length", "eos": "stop", "stop": "stop"}


ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def openai_error(status: int, message: str) -> dict:
    """``{"error": {message, type, param, code}}`` as OpenAI's API answers; ``param``: the request field
    the message begins with ("max_tokens: ..."), if any."""
    head = message.split(":", 1)[0] if ":" in message else ""
    param = head if head and all(part.isidentifier() or part.isdigit() for part in head.split(".")) else None
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class OpenAIErrors:
    """ASGI middleware, outside the Guard: on OPENAI_ROUTES, an error answer ``{"error": "message"}``
    (from the app's handlers or the Guard's refusals) is re-shaped as OpenAI's ``openai_error``."""

    def __init__(self, app, paths: set[str]):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        start: Optional[dict] = None
        chunks: list[bytes] = []

        async def reshape(message):
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the whole body is here
                return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            try:
                error = json.loads(body)["error"]
                if isinstance(error, str):
                    body = json.dumps(openai_error(start["status"], error), ensure_ascii=False).encode()
            except (ValueError, KeyError, TypeError):
                pass
            headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, reshape)


def _sse(obj: Any) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class _Shape:
    """One response's id and OpenAI shapes: whole (``full``) or as stream chunks."""

    def __init__(self, chat: bool, model: str, include_usage: bool = False):
        self.chat, self.model, self.include_usage = chat, model, include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    @staticmethod
    def usage(n_prompt: int, n_out: int) -> dict:
        return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}

    def full(self, text: str, finish: str, n_prompt: int, n_out: int) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._base("chat.completion" if self.chat else "text_completion"), "choices": [choice],
                "usage": self.usage(n_prompt, n_out)}

    def chunk(self, text: Optional[str] = None, finish: Optional[str] = None, role: bool = False) -> dict:
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        out = {**self._base("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, n_prompt: int, n_out: int) -> dict:
        return {**self._base("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": self.usage(n_prompt, n_out)}


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

class GenerationMetrics:
    """The language-model series, in the server's registry (or its multiprocess files)."""

    def __init__(self, metrics, timeout_s: float):
        from prometheus_client import Counter, Gauge, Histogram

        from .metrics import LATENCY_BUCKETS, _buckets

        r = metrics.registry
        self.ttft = Histogram("edgeopt_time_to_first_token_seconds", "Prompt prefill to the first generated token, "
                              "per generation", registry=r,
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.decode_rate = Histogram("edgeopt_decode_tokens_per_second", "Tokens per second after the first, per "
                                     "generation", registry=r,
                                     buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000))
        self.generated = Counter("edgeopt_generated_tokens", "Tokens generated (those of cancelled generations too)",
                                 registry=r)
        self.prompt = Counter("edgeopt_prompt_tokens", "Prompt tokens of the generations run", registry=r)
        self.generations = Counter("edgeopt_generations", "Generations by how they ended: stop (end of sequence or "
                                   "a stop string), length (max_tokens), cancelled (the client went away), error",
                                   ["finish_reason"], registry=r)
        self.running = Gauge("edgeopt_generations_running", "Generations holding a slot", registry=r,
                             multiprocess_mode="livesum")
        self.wait = Histogram("edgeopt_generation_wait_seconds", "Wait for a generation slot", registry=r,
                              buckets=_buckets(LATENCY_BUCKETS, timeout_s))


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------

def _advance(run: "Generation") -> Optional[str]:
    """The next text delta (None: the generation is done); in a worker thread."""
    return next(run, None)


class LMServer(Readiness):
    """The language model behind the routes: loads (and warms up) the generator off the event loop,
    admits at most ``max_generations`` generations at once and steps each in a worker thread."""

    def __init__(self, art: "Artifact", settings: "ServeSettings", metrics, board: "WorkerBoard | None" = None):
        self.art, self.settings, self.metrics, self.board = art, settings, metrics, board
        self.lm = GenerationMetrics(metrics, settings.timeout_s)
        self.state: dict[str, Any] = {"ready": False, "error": None, "gen": None}
        self.slots = asyncio.Semaphore(settings.max_generations)
        self.waiting = 0  # requests waiting for a slot (the queue depth)
        self.running = 0  # generations holding a slot; a closed one holds it until its last step returns
        # one thread per slot: a generation has at most one step in flight, so steps never queue
        self.pool = ThreadPoolExecutor(max_workers=settings.max_generations, thread_name_prefix="edgeopt-generate")

    async def start(self) -> None:
        threading.Thread(target=self.load, name="edgeopt-load", daemon=True).start()

    async def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.board is not None:
            self.board.leave()
        self.metrics.worker_exit()

    def load(self) -> None:
        try:
            from ..llm.generate import GenerateConfig, load_generator

            gen = load_generator(self.art, self.settings.threads)
            try:  # warm up: the first steps allocate and pick kernels
                gen.generate(WARMUP_PROMPT, GenerateConfig(max_new_tokens=2))
            except ConfigError:
                pass
            self.state["gen"] = gen
            release_heap()
            self.state["ready"] = True
            if self.board is not None:
                self.board.ready()
        except Exception as e:  # surfaced by /readyz and the routes
            log.exception("model failed to load")
            self.state["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__

    def info(self) -> dict:
        out = _model_info(self.art, self.settings)
        out.pop("batching", None)
        gen = self.state["gen"]
        context = gen.context if gen is not None else getattr(self.art.manifest.model, "context", None)
        s = self.settings
        out["limits"] = {"context": context, "max_new_tokens": s.max_new_tokens,
                         "max_prompt_tokens": s.max_prompt_tokens or context, "max_generations": s.max_generations,
                         "max_body_bytes": s.max_body_bytes, "timeout_s": s.timeout_s}
        out["chat_template"] = bool(gen is not None and getattr(gen.tok, "chat_template", None))
        out["endpoints"] = ["/v1/completions", "/v1/chat/completions", "/v1/models"]
        return out

    # --- a request: prompt and limits, then a slot, then the steps ------------------------------

    def _tokenize(self, req: Union[CompletionRequest, ChatRequest]) -> tuple[str, list[int]]:
        gen = self.state["gen"]
        tok = gen.tok
        if isinstance(req, ChatRequest):
            if not getattr(tok, "chat_template", None):
                raise RequestError("this model's tokenizer has no chat template; use POST /v1/completions with "
                                   "the prompt as plain text", 400)
            try:
                text = tok.apply_chat_template(_messages(req), tokenize=False, add_generation_prompt=True)
            except RequestError:
                raise
            except Exception as e:  # the template's own checks (roles must alternate...)
                detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise RequestError(f"messages: the model's chat template refused them ({detail})") from e
            return text, [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1 and not (prompt and isinstance(prompt[0], int)):
                raise RequestError(f"prompt: {len(prompt)} prompts; give one per request (a string)")
            prompt = prompt[0] if not isinstance(prompt[0], int) else prompt
        if isinstance(prompt, list):  # token ids
            bad = [i for i in prompt if not 0 <= i < len(tok)]
            if bad:
                raise RequestError(f"prompt: token id {bad[0]} is outside the vocabulary (0..{len(tok) - 1})")
            return tok.decode(prompt), list(prompt)
        return gen.prompt_ids(prompt, False)

    async def prepare(self, req: Union[CompletionRequest, ChatRequest]) -> "Generation":
        """The request's generation, not started: its prompt tokenized and every limit checked (422)."""
        from starlette.concurrency import run_in_threadpool

        from ..llm.generate import GenerateConfig

        self.require_ready()
        _refuse_unsupported(req)
        s, gen = self.settings, self.state["gen"]
        chat = isinstance(req, ChatRequest)
        asked, name = req.max_tokens, "max_tokens"
        if chat and req.max_completion_tokens is not None:
            asked, name = req.max_completion_tokens, "max_completion_tokens"
        if asked is not None and asked > s.max_new_tokens:
            raise RequestError(f"{name}: {asked} is over this server's limit of {s.max_new_tokens} new tokens per "
                               "request (serve --max-new-tokens)")
        stops = _stops(req.stop)
        text, ids = await run_in_threadpool(self._tokenize, req)
        n, context = len(ids), gen.context
        if not n:
            raise RequestError("prompt: empty; give some text to continue")
        if s.max_prompt_tokens and n > s.max_prompt_tokens:
            raise RequestError(f"prompt: {n} tokens, over this server's limit of {s.max_prompt_tokens} prompt tokens "
                               "(serve --max-prompt-tokens); shorten it")
        if context and asked is not None and n + asked > context:
            raise RequestError(f"prompt: {n} tokens and {name} {asked}: more than the model's context of {context} "
                               f"tokens; shorten the prompt or lower {name}")
        if context and n >= context:
            raise RequestError(f"prompt: {n} tokens, which fills the model's context of {context} tokens and leaves "
                               "no room to generate; shorten it")
        max_new = asked if asked is not None else min(s.max_new_tokens, context - n if context else s.max_new_tokens)
        top_p = req.top_p if req.top_p is not None else 1.0
        cfg = GenerateConfig(max_new_tokens=max_new, temperature=1.0 if req.temperature is None else req.temperature,
                             top_k=1 if top_p == 0 else (req.top_k or 0), top_p=top_p or 1.0,
                             seed=None if req.seed is None else req.seed % 2**64, stop=stops)
        try:
            return gen.stream(text, cfg, ids=ids)
        except ConfigError as e:
            raise RequestError(str(e)) from e

    async def admit(self, watch: asyncio.Future) -> None:
        """A generation slot, waited for up to timeout_s (504) or until the client goes away (ClientGone)."""
        t0 = time.perf_counter()
        self.waiting += 1
        acquire = asyncio.ensure_future(self.slots.acquire())
        try:
            await asyncio.wait((acquire, watch), timeout=self.settings.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting -= 1
            acquire.cancel()  # a no-op when it got the slot
        got = acquire.done() and not acquire.cancelled()
        if got and not watch.done():
            self.lm.wait.observe(time.perf_counter() - t0)
            self.running += 1
            self.lm.running.inc()
            return
        if got:
            self.slots.release()
        if watch.done():
            self.metrics.cancelled.labels("disconnect").inc()
            raise ClientGone()
        self.metrics.cancelled.labels("timeout").inc()
        raise RequestError(f"all {self.settings.max_generations} generation slots stayed busy for "
                           f"{self.settings.timeout_s:g} s; retry later", 504)

    def _release(self) -> None:
        self.running -= 1
        self.lm.running.dec()
        self.slots.release()


class _Session:
    """One admitted generation: steps it in the pool while watching the client, and on the way out
    (done, failed or abandoned) closes it, counts it and frees its slot, once its last step returned."""

    def __init__(self, srv: "LMServer", run: "Generation", watch: asyncio.Future):
        self.srv, self.run, self.watch = srv, run, watch
        self.step: Optional[asyncio.Future] = None
        self.closed = False
        self.finish: Optional[str] = None  # "stop" | "length" once done

    async def next(self) -> Optional[str]:
        """The next text delta; None when the generation is done (then ``finish`` is set)."""
        loop = asyncio.get_running_loop()
        self.step = loop.run_in_executor(self.srv.pool, _advance, self.run)
        done, _ = await asyncio.wait((self.step, self.watch), return_when=asyncio.FIRST_COMPLETED)
        if self.step not in done:
            self.close("cancelled")
            raise ClientGone()
        try:
            piece = self.step.result()
        except Exception as e:
            log.error("generation failed: %s", e, exc_info=not isinstance(e, (ConfigError, RequestError)))
            self.close("error")
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise RequestError(f"generation failed: {detail}", 500) from e
        if piece is None:
            self.finish = FINISH[self.run.result.stop_reason]
            self.close(self.finish)
        return piece

    def close(self, outcome: str) -> None:
        if self.closed:
            return
        self.closed = True
        srv, run, step = self.srv, self.run, self.step
        if outcome == "cancelled":
            srv.metrics.cancelled.labels("disconnect").inc()

        def done(_=None) -> None:  # no step of this generation is running now
            if step is not None and step.done() and not step.cancelled():
                step.exception()  # retrieved: a failing last step of an abandoned generation is no news
            if run.result is None:
                run.close()  # no more steps: the KV cache goes with the generator
            lm = srv.lm
            lm.generations.labels(outcome).inc()
            lm.prompt.inc(len(run.ids))
            lm.generated.inc(len(run.tokens))
            if run.result is not None:
                lm.ttft.observe(run.result.time_to_first_token_ms / 1000)
                if run.result.decode_tokens_per_s:
                    lm.decode_rate.observe(run.result.decode_tokens_per_s)
            srv._release()

        if step is not None and not step.done():
            step.add_done_callback(done)
        else:
            done()


class EventStream(Response):
    """The streamed answer (``text/event-stream``), as an ASGI response: it waits for a slot before
    sending anything (so a 504 or a disconnect is still answered as usual), then sends one event per
    text delta while watching the connection; a client that goes away stops the generation."""

    media_type = "text/event-stream"

    def __init__(self, srv: LMServer, run: "Generation", shape: _Shape):
        self.srv, self.run, self.shape = srv, run, shape
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        srv, shape, run = self.srv, self.shape, self.run
        watch = asyncio.ensure_future(_disconnected(receive))
        session: Optional[_Session] = None
        try:
            await srv.admit(watch)  # its errors: before the response starts, the app's handlers answer them
            session = _Session(srv, run, watch)

            async def event(obj) -> None:
                await send({"type": "http.response.body", "body": _sse(obj), "more_body": True})

            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                if shape.chat:
                    await event(shape.chunk(role=True))
                while (piece := await session.next()) is not None:
                    await event(shape.chunk(piece))
                await event(shape.chunk(finish=session.finish))
                if shape.include_usage:
                    await event(shape.usage_chunk(len(run.ids), len(run.result.tokens)))
                await event("[DONE]")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except ClientGone:
                pass
            except OSError:  # the server's send found the connection gone
                if session is not None:
                    session.close("cancelled")
            except RequestError as e:  # the generation failed mid-stream: say so in the stream, then end it
                try:
                    await event(openai_error(e.status, e.message))
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:
                    pass
        finally:
            watch.cancel()
            if session is not None:
                session.close("cancelled")  # a no-op unless the stream ended early (server shutdown)


def add_llm_routes(app, srv: LMServer, settings: "ServeSettings", metrics) -> None:
    from fastapi import Request

    from .app import _add_common_routes, _Error, _json_response

    errors = {code: {"model": _Error} for code in (400, 401, 413, 415, 422, 503, 504)}

    async def answer(req: Union[CompletionRequest, ChatRequest], request: Request):
        run = await srv.prepare(req)
        shape = _Shape(isinstance(req, ChatRequest), srv.art.name,
                       include_usage=bool(req.stream_options and req.stream_options.include_usage))
        if req.stream:
            return EventStream(srv, run, shape)
        watch = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await srv.admit(watch)
            session = _Session(srv, run, watch)
            try:
                while await session.next() is not None:
                    pass
            finally:
                session.close("cancelled")  # a no-op once done
        finally:
            watch.cancel()
        res = run.result
        return _json_response(shape.full(res.text, session.finish, len(run.ids), len(res.tokens)))

    @app.post("/v1/completions", responses=errors)
    async def completions(req: CompletionRequest, request: Request):
        """OpenAI's completions: continue `prompt`. With `"stream": true`, server-sent events."""
        return await answer(req, request)

    @app.post("/v1/chat/completions", responses=errors)
    async def chat_completions(req: ChatRequest, request: Request):
        """OpenAI's chat completions: `messages` through the model's chat template; the assistant's reply.
        With `"stream": true`, server-sent events."""
        return await answer(req, request)

    @app.get("/v1/models")
    async def models():
        """OpenAI's model list: the one model served."""
        return {"object": "list", "data": [{"id": srv.art.name, "object": "model", "created": int(srv.art.path.stat().st_mtime),
                                            "owned_by": "edgeopt"}]}

    _add_common_routes(app, srv, metrics, info=srv.info, queued=lambda: srv.waiting)


__all__ = ["ChatRequest", "CompletionRequest", "EventStream", "GenerationMetrics", "LLM_JSON_ROUTES", "LMServer",
           "OPENAI_ROUTES", "OpenAIErrors", "add_llm_routes", "openai_error"]
