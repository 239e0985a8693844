"""`edgeopt serve` over real HTTP: predictions equal the in-process results, metrics move,
health/readiness/model info, and the limits that keep the server up under bad input."""
from __future__ import annotations

import base64
import io
import signal
import struct
import threading
import time

import httpx
import numpy as np
import pytest

from serve_helpers import (LONG_TEXT, TEXTS, assert_error_body, check_prediction, digit_images, live_server,
                           metric_value, png_bytes, start_cli_server)

CLS_LABELS = ["a", "b", "c"]


def client(server, **kw) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, **kw)


# ---------------------------------------------------------------------------------------------
# health, readiness, model info, OpenAPI
# ---------------------------------------------------------------------------------------------

def test_health_ready_and_model_info(cls_server):
    with client(cls_server) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        info = c.get("/v1/model").json()
    assert info["task"] == "text-classification"
    assert info["format"] == "onnx"
    assert info["labels"] == CLS_LABELS
    assert info["precision"] == "fp32"
    assert info["limits"] == {"max_items": 64, "max_text_chars": 4096, "max_tokens": 128,
                              "max_body_bytes": 8 * 1024 * 1024, "timeout_s": 30.0}
    assert info["batching"] == {"max_batch": 16, "max_batch_tokens": 2048, "max_wait_ms": 5.0}
    assert info["preprocessing"]["kind"] == "text"
    assert [t["name"] for t in info["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [e["stage"] for e in info["lineage"]][-1] == "export"


def test_openapi_document(cls_server):
    with client(cls_server) as c:
        doc = c.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/images", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    req = doc["components"]["schemas"]["PredictRequest"]
    assert req.get("additionalProperties") is False
    # the limits are part of the document
    inputs = req["properties"]["inputs"]["anyOf"][0]
    assert inputs["maxItems"] == 64 and inputs["minItems"] == 1
    assert inputs["items"]["maxLength"] == 4096
    assert req["properties"]["top_k"]["maximum"] == 3
    assert {"401", "413", "422", "503", "504"} <= set(doc["paths"]["/v1/predict"]["post"]["responses"])


def test_readyz_and_predict_are_503_while_loading(cls_server):
    """Until the loader thread has finished (or when it failed), predict and /readyz answer 503, /healthz 200."""
    state = cls_server.app.state.serve_state
    try:
        state["ready"] = False  # as while loading
        with client(cls_server) as c:
            assert c.get("/healthz").status_code == 200
            assert "loading" in assert_error_body(c.get("/readyz"), 503)
            assert_error_body(c.post("/v1/predict", json={"inputs": ["x"]}), 503)
            state["error"] = "model.onnx: boom"  # as after a failed load
            assert "boom" in assert_error_body(c.get("/readyz"), 503)
            assert "boom" in assert_error_body(c.post("/v1/predict", json={"inputs": ["x"]}), 503)
    finally:
        state.update(ready=True, error=None)
    with client(cls_server) as c:
        assert c.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------------------------
# predictions equal in-process results
# ---------------------------------------------------------------------------------------------

def test_text_predictions_match_in_process(cls_server, cls_ref):
    with client(cls_server) as c:
        for text in TEXTS:
            r = c.post("/v1/predict", json={"inputs": [text]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "bert-cls-onnx"
            (pred,) = body["predictions"]
            assert "top" not in pred  # top_k 1: no list
            check_prediction(pred, cls_ref.one(text), CLS_LABELS)


def test_text_batch_request_and_top_k(cls_server, cls_ref):
    with client(cls_server) as c:
        r = c.post("/v1/predict", json={"inputs": TEXTS, "top_k": 3})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == len(TEXTS)
    for text, pred in zip(TEXTS, preds):
        probs = cls_ref.one(text)
        check_prediction(pred, probs, CLS_LABELS)
        top = pred["top"]
        assert [t["label"] for t in top] == [CLS_LABELS[i] for i in np.argsort(-probs)]
        assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
        for t in top:
            assert abs(t["score"] - float(probs[CLS_LABELS.index(t["label"])])) <= 1e-5
        assert abs(sum(t["score"] for t in top) - 1) <= 1e-5


def test_top_k_2_returns_two(cls_server):
    with client(cls_server) as c:
        pred = c.post("/v1/predict", json={"inputs": ["Organic green tea"], "top_k": 2}).json()["predictions"][0]
    assert len(pred["top"]) == 2 and pred["top"][0]["label"] == pred["label"]


def test_text_tensors_match_runtime(cls_server, cls_ref):
    feeds = cls_ref.pre(TEXTS[:3])
    with client(cls_server) as c:
        r = c.post("/v1/predict", json={"tensors": {k: v.tolist() for k, v in feeds.items()}})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"]["logits"], dtype=np.float32)
    np.testing.assert_allclose(got, cls_ref.rt.run(feeds)[0], atol=1e-5)


def test_embeddings_match_in_process(emb_server, emb_ref):
    with client(emb_server) as c:
        info = c.get("/v1/model").json()
        r = c.post("/v1/predict", json={"inputs": TEXTS})
    assert info["task"] == "feature-extraction" and info["labels"] is None
    assert r.status_code == 200, r.text
    body = r.json()
    assert "predictions" not in body
    emb = np.asarray(body["embeddings"], dtype=np.float32)
    assert emb.shape == (len(TEXTS), 32)
    for text, vec in zip(TEXTS, emb):
        np.testing.assert_allclose(vec, emb_ref.one(text), atol=1e-5)


def test_image_base64_matches_in_process(digits_server, digits_ref):
    imgs = digit_images(6)
    payload = {"images": [base64.b64encode(png_bytes(im)).decode() for im in imgs], "top_k": 3}
    with client(digits_server) as c:
        r = c.post("/v1/predict", json=payload)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    labels = [str(i) for i in range(10)]
    for im, pred in zip(imgs, preds):
        probs = digits_ref.one(im)
        check_prediction(pred, probs, labels)
        assert [t["label"] for t in pred["top"]] == [labels[i] for i in np.argsort(-probs)[:3]]


def test_image_multipart_matches_in_process(digits_server, digits_ref):
    imgs = digit_images(3, seed=5)
    files = [("files", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(imgs)]
    with client(digits_server) as c:
        r = c.post("/v1/predict/images", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3
    for im, pred in zip(imgs, preds):
        check_prediction(pred, digits_ref.one(im), [str(i) for i in range(10)])


def test_image_tensors_match_runtime(digits_server, digits_ref):
    x = digits_ref.pre.image(np.stack(digit_images(4, seed=11)))
    with client(digits_server) as c:
        r = c.post("/v1/predict", json={"tensors": {"pixel_values": x.tolist()}})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"]["logits"], dtype=np.float32)
    np.testing.assert_allclose(got, digits_ref.rt.run({"pixel_values": x})[0], atol=1e-5)


def test_wrong_input_kind_is_422(cls_server, digits_server):
    png = base64.b64encode(png_bytes(digit_images(1)[0])).decode()
    with client(cls_server) as c:
        assert "inputs" in assert_error_body(c.post("/v1/predict", json={"images": [png]}), 422)
        assert_error_body(c.post("/v1/predict/images", files=[("files", ("a.png", b"x", "image/png"))]), 422)
        assert_error_body(c.post("/v1/predict", json={}), 422)
        assert_error_body(c.post("/v1/predict", json={"inputs": ["x"], "images": [png]}), 422)
    with client(digits_server) as c:
        assert "images" in assert_error_body(c.post("/v1/predict", json={"inputs": ["a text"]}), 422)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

def test_metrics_move(cls_server):
    ok = {"route": "/v1/predict", "method": "POST", "status": "200"}
    before = cls_server.metrics()
    n = 7
    with client(cls_server) as c:
        for i in range(n):
            assert c.post("/v1/predict", json={"inputs": TEXTS[i : i + 2]}).status_code == 200
        assert c.post("/v1/predict", json={"inputs": []}).status_code == 422
    after = cls_server.metrics()
    assert metric_value(after, "edgeopt_requests_total", ok) - metric_value(before, "edgeopt_requests_total", ok) == n
    bad = {**ok, "status": "422"}
    assert metric_value(after, "edgeopt_requests_total", bad) - metric_value(before, "edgeopt_requests_total", bad) == 1
    lat = {"route": "/v1/predict"}
    assert (metric_value(after, "edgeopt_request_latency_seconds_count", lat)
            - metric_value(before, "edgeopt_request_latency_seconds_count", lat)) == n + 1
    assert metric_value(after, "edgeopt_items_total") - metric_value(before, "edgeopt_items_total") == 2 * n
    assert metric_value(after, "edgeopt_batch_size_count") > metric_value(before, "edgeopt_batch_size_count")
    assert metric_value(after, "edgeopt_inference_seconds_count") > metric_value(before, "edgeopt_inference_seconds_count")
    assert metric_value(after, "edgeopt_model_info", {"name": "bert-cls-onnx", "task": "text-classification",
                                                      "format": "onnx", "precision": "fp32", "target": "host"}) == 1
    assert metric_value(after, "edgeopt_queue_depth") == 0


def test_unknown_routes_are_one_metrics_label(cls_server):
    with client(cls_server) as c:
        for i in range(3):
            assert_error_body(c.get(f"/no/such/route/{i}"), 404)
    text = cls_server.metrics()
    assert metric_value(text, "edgeopt_requests_total", {"route": "other", "status": "404"}) >= 3
    assert "/no/such/route" not in text


# ---------------------------------------------------------------------------------------------
# limits & security
# ---------------------------------------------------------------------------------------------

def test_bad_requests_get_json_errors_and_the_server_stays_up(cls_server, cls_ref):
    bad_json = {"content-type": "application/json"}
    with client(cls_server) as c:
        msg = assert_error_body(c.post("/v1/predict", content=b'{"inputs": ["x"', headers=bad_json), 422)
        assert "JSON" in msg
        assert "UTF-8" in assert_error_body(c.post("/v1/predict", content=b"\xff\xfe garbage", headers=bad_json), 400)
        assert "inputs" in assert_error_body(c.post("/v1/predict", json={"inputs": "not a list"}), 422)
        assert_error_body(c.post("/v1/predict", json={"inputs": [1, 2]}), 422)
        assert_error_body(c.post("/v1/predict", json={"inputs": ["x"], "top_k": "many"}), 422)
        assert_error_body(c.post("/v1/predict", json={"inputs": ["x"], "top_k": 0}), 422)
        assert_error_body(c.post("/v1/predict", json={"inputs": ["x"], "top_k": 4}), 422)
        assert_error_body(c.post("/v1/predict", json=["x"]), 422)
        assert_error_body(c.post("/v1/predict", json={"inputs": []}), 422)
        msg = assert_error_body(c.post("/v1/predict", json={"inputs": ["x"] * 10_000}), 422)
        assert "64" in msg and "inputs" in msg
        assert "4096" in assert_error_body(c.post("/v1/predict", json={"inputs": ["x" * 5000]}), 422)
        assert "unexpected" in assert_error_body(c.post("/v1/predict", json={"inputs": ["x"], "unexpected": 1}), 422)
        assert_error_body(c.post("/v1/predict", json={"tensors": {"input_ids": [[1, 2]]}}), 422)
        assert_error_body(c.post("/v1/predict", json={"tensors": {
            "input_ids": [[101, 10 ** 9]], "attention_mask": [[1, 1]], "token_type_ids": [[0, 0]]}}), 422)
        assert_error_body(c.post("/v1/predict", json={"tensors": {
            "input_ids": [[101, 102], [1]], "attention_mask": [[1, 1]], "token_type_ids": [[0, 0]]}}), 422)
        assert_error_body(c.post("/v1/predict", json={"tensors": {
            "input_ids": [[1.5, "a"]], "attention_mask": [[1, 1]], "token_type_ids": [[0, 0]]}}), 422)
        # a lone surrogate cannot reach the tokenizer (it would fail the whole micro-batch)
        assert_error_body(c.post("/v1/predict", content=b'{"inputs": ["a \\ud800 b"]}', headers=bad_json), 422)
        deep = b'{"tensors": {"input_ids": ' + b"[" * 100_000 + b"1" + b"]" * 100_000 + b"}}"
        r = c.post("/v1/predict", content=deep, headers=bad_json)  # nesting past the JSON parser's recursion limit
        assert r.status_code in (400, 422), r.status_code
        assert_error_body(r)
        assert_error_body(c.get("/v1/nothing-here"), 404)
        assert_error_body(c.delete("/v1/predict"), 405)
        # after all that, a good request still works and is right
        r = c.post("/v1/predict", json={"inputs": [TEXTS[0]]})
    assert r.status_code == 200
    check_prediction(r.json()["predictions"][0], cls_ref.one(TEXTS[0]), CLS_LABELS)


def test_body_over_the_limit_is_413(cls_server):
    with client(cls_server) as c:
        big = b'{"inputs": ["' + b"x" * (50 * 1024 * 1024) + b'"]}'
        msg = assert_error_body(c.post("/v1/predict", content=big, headers={"content-type": "application/json"}), 413)
        assert str(8 * 1024 * 1024) in msg

        def chunks():  # no Content-Length: chunked transfer encoding, counted while streaming
            yield b'{"inputs": ["'
            for _ in range(10):
                yield b"x" * (1024 * 1024)
            yield b'"]}'

        assert_error_body(c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"}), 413)

        def small():
            yield b'{"inputs": '
            yield b'["Organic green tea"]}'

        r = c.post("/v1/predict", content=small(), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert c.get("/healthz").status_code == 200


def test_undecodable_images_are_422(digits_server):
    with client(digits_server) as c:
        for payload in (["aGVsbG8gd29ybGQ="], ["not base64 at all!"], [""], ["é"]):
            assert "images.0" in assert_error_body(c.post("/v1/predict", json={"images": payload}), 422)
        truncated = png_bytes(digit_images(1)[0])[:40]
        assert_error_body(c.post("/v1/predict", json={"images": [base64.b64encode(truncated).decode()]}), 422)
        assert "files.0" in assert_error_body(
            c.post("/v1/predict/images", files=[("files", ("x.png", b"\x89PNG garbage", "image/png"))]), 422)
        assert_error_body(c.post("/v1/predict/images", files=[("files", ("x.png", truncated, "image/png"))]), 422)
        assert "multipart/form-data" in assert_error_body(c.post("/v1/predict/images", data={"files": "a plain field"}), 415)
        assert_error_body(c.post("/v1/predict/images", files=[("files", ("x.png", png_bytes(np.zeros((8, 8))), "image/png"))] * 65), 422)
        r = c.post("/v1/predict", json={"images": [base64.b64encode(png_bytes(digit_images(1)[0])).decode()]})
    assert r.status_code == 200, r.text


def _bad_dds() -> bytes:
    """A DDS file whose pixel-format flags Pillow does not know: Pillow raises NotImplementedError."""
    header = (struct.pack("<7I", 124, 0x1007, 8, 8, 0, 0, 0) + b"\0" * 44
              + struct.pack("<8I", 32, 0x80000000, 0, 0, 0, 0, 0, 0) + struct.pack("<5I", 0x1000, 0, 0, 0, 0))
    return b"DDS " + header + b"\0" * 256


def test_malformed_dds_image_is_422_not_500(digits_server):
    # a fresh connection for each: after an unhandled error uvicorn closes the keep-alive connection
    r1 = httpx.post(digits_server.url + "/v1/predict", json={"images": [base64.b64encode(_bad_dds()).decode()]})
    r2 = httpx.post(digits_server.url + "/v1/predict/images", files=[("files", ("x.dds", _bad_dds(), "image/x-dds"))])
    assert_error_body(r1)
    assert_error_body(r2)
    assert (r1.status_code, r2.status_code) == (422, 422)


def _huge_png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_over_the_pixel_limit_is_rejected_before_decoding(serve_digits_onnx):
    png = base64.b64encode(_huge_png(8000)).decode()  # 64 Mpixel, over the default 4096x4096
    with live_server(serve_digits_onnx) as srv, client(srv) as c:
        t0 = time.perf_counter()
        r = c.post("/v1/predict", json={"images": [png]})
        assert "over the limit" in assert_error_body(r, 422)
        assert time.perf_counter() - t0 < 1.0


def test_image_decoding_does_not_block_the_server(serve_digits_onnx):
    png = base64.b64encode(_huge_png(4000)).decode()  # 16 Mpixel: under the limit, slow to decode
    with live_server(serve_digits_onnx, timeout_s=0.5) as srv, client(srv) as c:
        t0 = time.perf_counter()
        c.post("/v1/predict", json={"images": [png]})
        one = time.perf_counter() - t0  # time to decode one such image here
        if one < 0.1:
            pytest.skip(f"this machine decodes a 16 Mpixel PNG in {one:.3f} s: too fast for the check to mean anything")
        result = {}

        def slow():
            t = time.perf_counter()
            result["r"] = httpx.post(srv.url + "/v1/predict", json={"images": [png] * 3}, timeout=120)
            result["s"] = time.perf_counter() - t

        th = threading.Thread(target=slow)
        th.start()
        time.sleep(0.1)
        t = time.perf_counter()
        health = c.get("/healthz")
        health_s = time.perf_counter() - t
        th.join()
    assert health.status_code == 200
    assert health_s < 0.5, f"/healthz took {health_s:.2f} s while a request decoded images"
    # under the pixel limit the images decode (200) or the timeout answers (504), never a stalled request
    assert result["r"].status_code in (200, 504) and result["s"] < 0.5 + one, (result["r"].status_code, result["s"])


def test_api_key(serve_cls_onnx, monkeypatch):
    monkeypatch.setenv("EDGEOPT_TEST_KEY", "s3cret-key")
    body = {"inputs": ["Organic green tea"]}
    with live_server(serve_cls_onnx, api_key_env="EDGEOPT_TEST_KEY") as srv, client(srv) as c:
        assert "API key" in assert_error_body(c.post("/v1/predict", json=body), 401)
        assert_error_body(c.post("/v1/predict", json=body, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error_body(c.post("/v1/predict", json=body, headers={"X-API-Key": "s3cret-ke"}), 401)
        assert_error_body(c.post("/v1/predict", json=body, headers={"Authorization": "s3cret-key"}), 401)
        assert_error_body(c.get("/v1/model"), 401)
        assert_error_body(c.get("/metrics"), 401)
        assert c.post("/v1/predict", json=body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.post("/v1/predict", json=body, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        # open routes
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        # 401s are counted
        text = srv.metrics(headers={"X-API-Key": "s3cret-key"})
    assert metric_value(text, "edgeopt_requests_total", {"route": "/v1/predict", "status": "401"}) == 4


def test_api_key_env_unset_refuses_to_start(serve_cls_onnx, monkeypatch):
    from edgeopt.errors import ConfigError
    from edgeopt.serve.app import ServeSettings, create_app

    monkeypatch.delenv("EDGEOPT_TEST_KEY_UNSET", raising=False)
    with pytest.raises(ConfigError, match="EDGEOPT_TEST_KEY_UNSET"):
        create_app(ServeSettings(artifact=str(serve_cls_onnx.path), api_key_env="EDGEOPT_TEST_KEY_UNSET"))


def test_request_timeout_is_504(serve_cls_onnx):
    with live_server(serve_cls_onnx, timeout_s=0.0005) as srv, client(srv) as c:
        msg = assert_error_body(c.post("/v1/predict", json={"inputs": [LONG_TEXT] * 64}), 504)
        assert "0.0005" in msg
        text = srv.metrics()
        assert metric_value(text, "edgeopt_requests_total", {"route": "/v1/predict", "status": "504"}) == 1
        assert c.get("/healthz").status_code == 200


# ---------------------------------------------------------------------------------------------
# the CLI: `edgeopt serve` as a process, graceful shutdown on SIGTERM
# ---------------------------------------------------------------------------------------------

def test_cli_serve_predict_and_graceful_sigterm(serve_cls_onnx, cls_ref):
    # 512 long texts one per model call (a batch is bounded at 64 tokens; each text has ~128): the
    # request takes about a second, so it is surely in flight when SIGTERM arrives
    srv = start_cli_server(serve_cls_onnx, "--threads", "1", "--max-batch", "20", "--max-wait-ms", "1000",
                           "--max-batch-tokens", "64", "--max-items", "512")
    proc, url = srv.proc, srv.url
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/v1/model").json()["batching"] == {"max_batch": 20, "max_batch_tokens": 64, "max_wait_ms": 1000.0}
            r = c.post("/v1/predict", json={"inputs": [TEXTS[2]] * 20})
            assert r.status_code == 200
            check_prediction(r.json()["predictions"][0], cls_ref.one(TEXTS[2]), CLS_LABELS)
        # a slow request in flight when SIGTERM arrives
        result = {}

        def slow():
            result["r"] = httpx.post(url + "/v1/predict", json={"inputs": [LONG_TEXT] * 512}, timeout=60)
            result["done"] = time.monotonic()

        th = threading.Thread(target=slow)
        th.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the server has it (a scrape does not count itself)
            if metric_value(httpx.get(url + "/metrics").text, "edgeopt_in_flight_requests") >= 1:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the slow request never showed up in edgeopt_in_flight_requests")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        th.join(60)
        rc = proc.wait(60)
    finally:
        srv.stop()
    err = srv.log()
    assert "r" in result, err
    assert result["done"] > sent  # it really was in flight when the signal arrived
    assert result["r"].status_code == 200, result["r"].text
    assert len(result["r"].json()["predictions"]) == 512
    assert rc == 0, err
    assert "Application shutdown complete" in err
    assert "Traceback" not in err and "error" not in err.lower()


def test_cli_serve_sigterm_exits_0(serve_cls_onnx):
    srv = start_cli_server(serve_cls_onnx, "--threads", "1")
    try:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(60)
    finally:
        srv.stop()
    err = srv.log()
    assert "Application shutdown complete" in err
    assert rc == 0, (rc, err)


def test_cli_serve_bad_artifact_is_one_error_line(tmp_path):
    import subprocess

    from serve_helpers import EDGEOPT_BIN

    p = subprocess.run([EDGEOPT_BIN, "serve", str(tmp_path / "missing"), "--port", "1"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert "error:" in p.stderr and "Traceback" not in p.stderr
