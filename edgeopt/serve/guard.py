"""The ASGI layer in front of the app: request ids, limits, auth, body checks, metrics, access log.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which costs a task and a stream
per request). Per request, in order:

1. a request id: the client's ``X-Request-ID`` when it is a sane token, else a new one; echoed in
   the response's ``X-Request-ID`` header and in the access log;
2. ``Content-Length`` over the body limit: 413, before anything is read;
3. the API key (``Authorization: Bearer`` or ``X-API-Key``): 401;
4. the media type of a body route (JSON or multipart): 415 naming the one to send;
5. the body, read up to the limit (413), un-gzipped when ``Content-Encoding: gzip`` (the limit
   holds for the decompressed size; other encodings: 415), and for JSON routes checked to be
   UTF-8 (400 naming the byte); the app then reads it from memory.

Every response counts in ``edgeopt_requests_total`` and the latency histogram, labelled by route
(one label for unknown paths); the in-flight gauge leaves out scrapes of /metrics.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import Callable

access_log = logging.getLogger("edgeopt.access")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
UNCOUNTED = {"/metrics"}  # not "in flight": a scrape must not count itself


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": message}).encode()


class Guard:
    def __init__(self, app, *, max_body_bytes: int, api_key: str | None, metrics, routes: Callable[[], set[str]],
                 open_routes: set[str], json_routes: set[str], form_routes: set[str], access: bool = True):
        self.app = app
        self.limit = max_body_bytes
        self.api_key = api_key.encode() if api_key else None
        self.metrics = metrics
        self._routes = routes
        self._known: set[str] | None = None
        self.open_routes = open_routes
        self.json_routes = json_routes
        self.form_routes = form_routes
        self.access = access

    def known(self, path: str) -> str:
        if self._known is None:
            self._known = self._routes()
        # one label for every unknown path: a scanner must not grow the metrics without bound
        return path if path in self._known else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        headers = {}
        for k, v in scope["headers"]:
            if k in (b"content-length", b"content-type", b"content-encoding", b"authorization", b"x-api-key",
                     b"x-request-id", b"transfer-encoding"):
                headers[k] = v.decode("latin-1")
        given = headers.get(b"x-request-id", "")
        rid = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        status = 500
        counted = path not in UNCOUNTED
        if counted:
            self.metrics.in_flight.inc()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            refusal = self.check(path, method, headers)
            if refusal is None and method in ("POST", "PUT", "PATCH"):
                body, refusal = await self.read_body(receive, path, headers)
                if refusal is None:
                    receive = _replay(body, receive)
            if refusal is not None:
                code, payload = refusal
                await send_with_id({"type": "http.response.start", "status": code,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(payload)).encode())]})
                await send_with_id({"type": "http.response.body", "body": payload})
                return
            await self.app(scope, receive, send_with_id)
        finally:
            took = time.perf_counter() - t0
            if counted:
                self.metrics.in_flight.dec()
            route = self.known(path)
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(took)
            if self.access and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                where = f"{client[0]}:{client[1]}" if client else "-"
                access_log.info('%s "%s %s" %d %.1f ms id=%s', where, method, path, status, took * 1000, rid,
                                extra={"request_id": rid, "method": method, "path": path, "status": status,
                                       "duration_ms": round(took * 1000, 3), "client": where})

    def check(self, path: str, method: str, headers: dict) -> tuple[int, bytes] | None:
        cl = headers.get(b"content-length")
        if cl is not None and (not cl.isdigit() or int(cl) > self.limit):
            return _error(413, f"request body over the {self.limit} byte limit")
        if self.api_key is not None and path not in self.open_routes:
            key = headers.get(b"x-api-key", "")
            auth = headers.get(b"authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:]
            if not hmac.compare_digest(key.encode(), self.api_key):
                return _error(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        if method == "POST" and (path in self.json_routes or path in self.form_routes):
            ctype = headers.get(b"content-type", "")
            media = ctype.split(";", 1)[0].strip().lower()
            if path in self.json_routes and media and not (media == "application/json" or media.endswith("+json")):
                return _error(415, f"Content-Type {media!r} is not accepted here: send the body as JSON with "
                                   "'Content-Type: application/json'")
            if path in self.form_routes and media != "multipart/form-data":
                return _error(415, f"Content-Type {media or 'missing'!r} is not accepted here: upload the files as "
                                   "'multipart/form-data' (curl -F files=@image.png)")
        return None

    async def read_body(self, receive, path: str, headers: dict) -> tuple[bytes, tuple[int, bytes] | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", _error(400, "the client went away while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return b"", _error(413, f"request body over the {self.limit} byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        encoding = headers.get(b"content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            body, refusal = self.decompress(body, encoding)
            if refusal is not None:
                return b"", refusal
        elif encoding not in ("", "identity"):
            return b"", _error(415, f"Content-Encoding {encoding!r} is not supported: send the body uncompressed, "
                                    "or gzip-compressed with 'Content-Encoding: gzip'")
        if path in self.json_routes:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as e:
                return b"", _error(400, f"body: not valid UTF-8 (byte {e.start}: {body[e.start:e.start + 1]!r}); "
                                        "send JSON encoded as UTF-8")
        return body, None

    def decompress(self, body: bytes, encoding: str) -> tuple[bytes, tuple[int, bytes] | None]:
        wbits = zlib.MAX_WBITS | 16 if encoding != "deflate" else zlib.MAX_WBITS
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, self.limit + 1)  # the limit holds for what the body inflates to
        except zlib.error as e:
            return b"", _error(400, f"body: Content-Encoding {encoding} but not valid {encoding} data ({e})")
        if len(out) > self.limit or d.unconsumed_tail:
            return b"", _error(413, f"request body over the {self.limit} byte limit once decompressed")
        if not d.eof:
            return b"", _error(400, f"body: Content-Encoding {encoding} but the compressed data is truncated")
        return out, None


def _replay(body: bytes, receive):
    """The app's receive: the body already read, once; then the connection's (a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
