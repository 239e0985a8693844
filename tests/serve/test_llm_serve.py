"""`edgeopt serve` of language models (task text-generation): OpenAI's /v1/completions and
/v1/chat/completions, whole or streamed as server-sent events, against a real uvicorn on 127.0.0.1,
with the tiny random llama (PyTorch) and its `edgeopt export` (ONNX Runtime GenAI)."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Iterator

import httpx
import pytest

from _support import LM_PROMPT as PROMPT
from serve_helpers import live_server, metric_value, start_cli_server

pytest.importorskip("torch")
pytest.importorskip("transformers")

MAX_NEW = 64  # the servers' --max-new-tokens


@pytest.fixture(scope="module")
def lm_art(tiny_lms):
    from edgeopt.artifact import load_artifact

    return load_artifact(tiny_lms["llama"])


@pytest.fixture(scope="module")
def lm_gen(lm_art):
    from edgeopt.llm.generate import load_generator

    return load_generator(lm_art, threads=1)


@pytest.fixture(scope="module")
def lm_server(lm_art):
    with live_server(lm_art, max_new_tokens=MAX_NEW, max_generations=2) as s:
        yield s


def assert_error_body(r: httpx.Response, status: int) -> str:
    """OpenAI's error shape, one line, no traceback; returns the message."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers.get("content-type")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    msg = body["error"]["message"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in r.text, body
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error"), body
    assert int(r.headers["content-length"]) == len(r.content)
    return msg


def _greedy(gen, prompt: str, n: int, chat: bool = False):
    from edgeopt.llm.generate import GenerateConfig

    return gen.generate(prompt, GenerateConfig(max_new_tokens=n, chat=chat))


def _finish(res) -> str:
    return "length" if res.stop_reason == "max_new_tokens" else "stop"


def sse(url: str, body: dict) -> tuple[httpx.Response, list]:
    """POST with stream: the response and its events (JSON chunks, then the string "[DONE]")."""
    events = []
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return r, events


# ---------------------------------------------------------------------------------------------
# completions and chat, whole and streamed
# ---------------------------------------------------------------------------------------------

def test_completion_is_generates_greedy_output(lm_server, lm_gen, lm_art):
    want = _greedy(lm_gen, PROMPT, 12)
    r = httpx.post(lm_server.url + "/v1/completions", json={"model": "anything", "prompt": PROMPT, "max_tokens": 12,
                                                            "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == lm_art.name
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["text"] == want.text and choice["finish_reason"] == _finish(want)
    assert body["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": len(want.tokens),
                             "total_tokens": want.prompt_tokens + len(want.tokens)}
    # a list of one string, and the same prompt as token ids
    for prompt in ([PROMPT], lm_gen.prompt_ids(PROMPT, False)[1]):
        r = httpx.post(lm_server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0},
                       timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want.text, r.text


def test_streamed_deltas_make_the_same_text(lm_server, lm_gen):
    want = _greedy(lm_gen, PROMPT, 20)
    _, events = sse(lm_server.url + "/v1/completions", {"prompt": PROMPT, "max_tokens": 20, "temperature": 0,
                                                        "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    usage = chunks.pop()  # include_usage: a last chunk without choices
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(want.tokens)
    *deltas, last = chunks
    assert len(deltas) > 1 and all(c["choices"][0]["finish_reason"] is None for c in deltas)
    assert "".join(c["choices"][0]["text"] for c in deltas) + last["choices"][0]["text"] == want.text
    assert last["choices"][0]["finish_reason"] == _finish(want)


def test_chat_goes_through_the_chat_template(lm_server, lm_gen, lm_art):
    msgs = [{"role": "user", "content": "Organic green tea"}]
    want = _greedy(lm_gen, "Organic green tea", 10, chat=True)
    assert want.prompt.startswith("<user>Organic green tea") and want.prompt.endswith("<assistant>")  # the template
    r = httpx.post(lm_server.url + "/v1/chat/completions", json={"model": lm_art.name, "messages": msgs, "max_tokens": 10,
                                                                 "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": want.text}
    assert choice["finish_reason"] == _finish(want) and body["usage"]["prompt_tokens"] == want.prompt_tokens
    # streamed: the role first, then content deltas, then the finish reason; max_completion_tokens wins
    _, events = sse(lm_server.url + "/v1/chat/completions", {"messages": msgs, "max_tokens": 3, "temperature": 0,
                                                             "max_completion_tokens": 10})
    assert events[-1] == "[DONE]" and all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    first, *deltas, last = events[:-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(d["choices"][0]["delta"]["content"] for d in deltas) == want.text
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == _finish(want)
    # every message goes through the template, text parts too
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    text = lm_gen.tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                          tokenize=False, add_generation_prompt=True)
    r = httpx.post(lm_server.url + "/v1/chat/completions", json={"messages": conv, "max_tokens": 5, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(lm_gen.tok(text, add_special_tokens=False)["input_ids"])


def test_sampling_is_seeded(lm_server):
    def text(seed):
        r = httpx.post(lm_server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 10, "seed": seed,
                                                                "temperature": 1.5, "top_p": 0.95, "top_k": 50}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    assert text(7) == text(7) != text(8)


# ---------------------------------------------------------------------------------------------
# bad input: one line each
# ---------------------------------------------------------------------------------------------

def test_limits_and_bad_requests_are_one_line(lm_server):
    url = lm_server.url + "/v1/completions"

    def error(body, status=422, path=url):
        return assert_error_body(httpx.post(path, json=body, timeout=60), status)

    assert "context of 128 tokens" in error({"prompt": "tea " * 200})
    assert "context of 128 tokens" in error({"prompt": "tea " * 200, "max_tokens": 4})
    msg = error({"prompt": "tea " * 60, "max_tokens": MAX_NEW})  # fits the limit, not the context
    assert "max_tokens 64" in msg and "context of 128 tokens" in msg
    r = httpx.post(url, json={"prompt": "x", "max_tokens": MAX_NEW + 1})
    msg = assert_error_body(r, 422)
    assert f"limit of {MAX_NEW}" in msg and "--max-new-tokens" in msg and r.json()["error"]["param"] == "max_tokens"
    assert "max_completion_tokens" in error({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 999},
                                            path=lm_server.url + "/v1/chat/completions")
    assert "max_tokens" in error({"prompt": "x", "max_tokens": 0})
    assert "n: 2" in error({"prompt": "x", "n": 2})
    assert "logprobs" in error({"prompt": "x", "logprobs": 2})
    assert "empty" in error({"prompt": ""})
    assert "prompt" in error({"prompt": ["a", "b"]})
    assert "prompt" in error({"max_tokens": 3})
    assert "temperature" in error({"prompt": "x", "temperature": -1})
    assert "messages" in error({"messages": []}, path=lm_server.url + "/v1/chat/completions")
    assert "image_url" in error({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
                                path=lm_server.url + "/v1/chat/completions")
    # the guard's limits hold for the new routes: JSON only
    r = httpx.post(url, content=b"prompt=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert "application/json" in assert_error_body(r, 415)
    # a streamed request is checked before the stream starts: an error, not an event
    r = httpx.post(url, json={"prompt": "tea " * 200, "stream": True}, timeout=60)
    assert "context of 128 tokens" in assert_error_body(r, 422)
    # max_prompt_tokens
    settings = lm_server.app.state.settings
    settings.max_prompt_tokens = 4
    try:
        assert "limit of 4 prompt tokens" in error({"prompt": PROMPT})
    finally:
        settings.max_prompt_tokens = None
    # the server is fine afterwards
    assert httpx.post(url, json={"prompt": "x", "max_tokens": 2}, timeout=60).status_code == 200


def test_a_model_without_a_chat_template_answers_400(lm_server):
    tok = lm_server.app.state.predictor.state["gen"].tok
    template, tok.chat_template = tok.chat_template, None
    try:
        r = httpx.post(lm_server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                       timeout=60)
        assert "no chat template" in assert_error_body(r, 400)
    finally:
        tok.chat_template = template


# ---------------------------------------------------------------------------------------------
# concurrency, disconnects, metrics
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def slow_steps(server, seconds: float = 0.02) -> Iterator[list]:
    """Each decode step of the server's generator takes ``seconds`` longer; yields the steps' count (a list)."""
    gen = server.app.state.predictor.state["gen"]
    steps: list = []
    step = type(gen).step

    def slow(state, token):
        steps.append(token)
        time.sleep(seconds)
        return step(gen, state, token)

    gen.step = slow
    try:
        yield steps
    finally:
        del gen.step


def _open_stream(server, body: dict) -> tuple[socket.socket, bytes]:
    """A raw HTTP/1.1 streaming request; returns the socket and what was read up to the 2nd content event."""
    data = json.dumps({**body, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    got = b""
    while got.count(b"data: {") < 2:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return s, got


def _wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_client_that_goes_away_stops_its_generation(lm_server, lm_gen):
    m0 = lm_server.metrics()
    with slow_steps(lm_server) as steps:
        s, got = _open_stream(lm_server, {"prompt": "Hello", "max_tokens": MAX_NEW, "temperature": 0})
        assert b" 200 OK" in got.split(b"\r\n", 1)[0]
        s.close()  # mid-stream

        def stopped():
            m = lm_server.metrics()
            return (metric_value(m, "edgeopt_generations_total", {"finish_reason": "cancelled"})
                    > metric_value(m0, "edgeopt_generations_total", {"finish_reason": "cancelled"})
                    and metric_value(m, "edgeopt_generations_running") == 0)

        _wait_for(stopped)
        n = len(steps)
        time.sleep(0.3)
        assert len(steps) == n < MAX_NEW - 10  # no step ran after it was cancelled, long before max_tokens
    m = lm_server.metrics()
    assert (metric_value(m, "edgeopt_cancelled_requests_total", {"reason": "disconnect"})
            == metric_value(m0, "edgeopt_cancelled_requests_total", {"reason": "disconnect"}) + 1)
    generated = metric_value(m, "edgeopt_generated_tokens_total") - metric_value(m0, "edgeopt_generated_tokens_total")
    assert 1 <= generated < MAX_NEW - 10
    assert lm_server.app.state.predictor.running == 0 and lm_server.app.state.predictor.waiting == 0
    # a whole (not streamed) answer is dropped the same way when its client leaves
    with slow_steps(lm_server) as steps:
        data = json.dumps({"prompt": "Hello", "max_tokens": MAX_NEW, "temperature": 0}).encode()
        s = socket.create_connection(("127.0.0.1", lm_server.port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        _wait_for(lambda: len(steps) >= 3)
        s.close()
        _wait_for(lambda: metric_value(lm_server.metrics(), "edgeopt_generations_total", {"finish_reason": "cancelled"})
                  == metric_value(m, "edgeopt_generations_total", {"finish_reason": "cancelled"}) + 1)
        n = len(steps)
        time.sleep(0.3)
        assert len(steps) == n < MAX_NEW - 10
    # the server goes on
    r = httpx.post(lm_server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 5, "temperature": 0}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == _greedy(lm_gen, PROMPT, 5).text


def test_generations_run_side_by_side_and_wait_for_a_slot(lm_server, lm_gen):
    prompts = [PROMPT, "Organic green tea", "Hello", "How do I reset my password?"]
    want = {p: _greedy(lm_gen, p, 16).text for p in prompts}
    got: dict = {}

    def one(p):
        _, events = sse(lm_server.url + "/v1/completions", {"prompt": p, "max_tokens": 16, "temperature": 0})
        got[p] = "".join(e["choices"][0]["text"] for e in events[:-1])

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]  # 4 requests, 2 slots
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want
    # slots busy for longer than the timeout: 504, one line
    settings = lm_server.app.state.settings
    with slow_steps(lm_server, 0.05):
        socks = [_open_stream(lm_server, {"prompt": "Hello", "max_tokens": MAX_NEW, "temperature": 0})[0] for _ in range(2)]
        timeout, settings.timeout_s = settings.timeout_s, 0.3
        try:
            r = httpx.post(lm_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
            assert "generation slots" in assert_error_body(r, 504)
        finally:
            settings.timeout_s = timeout
            for s in socks:
                s.close()
        _wait_for(lambda: lm_server.app.state.predictor.running == 0)


def test_metrics_count_tokens_and_time_to_first_token(lm_server):
    m0 = lm_server.metrics()
    r = httpx.post(lm_server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0}, timeout=60)
    usage = r.json()["usage"]
    m = lm_server.metrics()

    def delta(name, labels=None):
        return metric_value(m, name, labels) - metric_value(m0, name, labels)

    assert delta("edgeopt_generated_tokens_total") == usage["completion_tokens"]
    assert delta("edgeopt_prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("edgeopt_time_to_first_token_seconds_count") == 1
    assert 0 < delta("edgeopt_time_to_first_token_seconds_sum") < 10
    finish = r.json()["choices"][0]["finish_reason"]
    assert delta("edgeopt_generations_total", {"finish_reason": finish}) == 1
    if usage["completion_tokens"] > 1:
        assert delta("edgeopt_decode_tokens_per_second_count") == 1
    assert delta("edgeopt_requests_total", {"route": "/v1/completions", "status": "200"}) == 1
    info = httpx.get(lm_server.url + "/v1/model").json()
    assert info["task"] == "text-generation" and info["limits"]["context"] == 128
    assert info["limits"]["max_new_tokens"] == MAX_NEW and info["chat_template"] is True
    models = httpx.get(lm_server.url + "/v1/models").json()
    assert models["object"] == "list" and [d["id"] for d in models["data"]] == [info["name"]]
    assert httpx.post(lm_server.url + "/v1/predict", json={"inputs": ["x"]}).status_code == 404


# ---------------------------------------------------------------------------------------------
# the OpenAI client, the CLI, and an ONNX Runtime GenAI export
# ---------------------------------------------------------------------------------------------

def test_the_openai_client_works_against_it(lm_server, lm_gen):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=lm_server.url + "/v1", api_key="unused", max_retries=0)
    want = _greedy(lm_gen, PROMPT, 10)
    res = client.completions.create(model="llama", prompt=PROMPT, max_tokens=10, temperature=0)
    assert res.choices[0].text == want.text and res.usage.completion_tokens == len(want.tokens)
    chat = _greedy(lm_gen, "Hi", 8, chat=True)
    res = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                         temperature=0)
    assert res.choices[0].message.content == chat.text and res.choices[0].finish_reason == _finish(chat)
    stream = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                            temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == chat.text
    with pytest.raises(openai.UnprocessableEntityError, match="context of 128 tokens") as e:
        client.completions.create(model="llama", prompt="tea " * 200)
    assert e.value.param == "prompt" and e.value.type == "invalid_request_error"
    assert [m.id for m in client.models.list()] == ["llama"]


def test_edgeopt_serve_serves_a_language_model(lm_art):
    from test_cli import assert_clean_failure, cli

    assert "--max-new-tokens" in assert_clean_failure(cli("serve", lm_art.path, "--max-new-tokens", "0"), codes=(2,))
    srv = start_cli_server(lm_art, "--max-new-tokens", "8", "--max-generations", "1")
    try:
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 9}, timeout=60)
        assert "limit of 8" in assert_error_body(r, 422)
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": PROMPT}, timeout=60)  # the default: the limit
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 8
    finally:
        assert srv.stop() == 0


@pytest.fixture(scope="module")
def genai_art(tiny_lms, tmp_path_factory):
    pytest.importorskip("onnxruntime_genai")
    from edgeopt.stages.export import export

    return export(tiny_lms["llama"], tmp_path_factory.mktemp("lm-genai") / "llama-genai")


def test_an_onnx_runtime_genai_export_is_served_alike(genai_art, lm_gen):
    assert genai_art.manifest.format == "genai"
    want = _greedy(lm_gen, PROMPT, 12)  # PyTorch's tokens: the export's check says they are the same
    with live_server(genai_art, max_new_tokens=MAX_NEW) as srv:
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want.text, r.text
        _, events = sse(srv.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                                                           "temperature": 0})
        chat = _greedy(lm_gen, "Hi", 8, chat=True)
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == chat.text
        assert "context of 128 tokens" in assert_error_body(
            httpx.post(srv.url + "/v1/completions", json={"prompt": "tea " * 200}, timeout=60), 422)
        with slow_steps(srv) as steps:
            s, _ = _open_stream(srv, {"prompt": "Hello", "max_tokens": MAX_NEW, "temperature": 0})
            s.close()
            _wait_for(lambda: metric_value(srv.metrics(), "edgeopt_generations_total", {"finish_reason": "cancelled"}) == 1)
            assert len(steps) < MAX_NEW - 10
