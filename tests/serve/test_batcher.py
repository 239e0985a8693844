"""Micro-batching: over HTTP (concurrent requests coalesce, each caller gets its own results)
and the MicroBatcher itself (splitting, reassembly, failure isolation)."""
from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from edgeopt.serve.batcher import MicroBatcher
from serve_helpers import LONG_TEXT, check_prediction, distinct_texts, live_server, metric_value

CLS_LABELS = ["a", "b", "c"]


async def _concurrent_posts(url: str, payloads: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(payloads), max_keepalive_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        # open the connections first so the requests really arrive together
        await asyncio.gather(*(c.get("/healthz") for _ in payloads))
        return await asyncio.gather(*(c.post("/v1/predict", json=p) for p in payloads))


# ---------------------------------------------------------------------------------------------
# over HTTP
# ---------------------------------------------------------------------------------------------

def test_concurrent_requests_coalesce_and_get_their_own_results(serve_cls_onnx, cls_ref):
    """Requests that queue while the model is busy share model calls. A long request keeps the model
    busy (256 long texts, two per call: the batch is bounded at 256 tokens), and 32 one-text
    requests sent meanwhile take turns with it, several per call."""
    texts = distinct_texts(32)

    async def main(url):
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            await asyncio.gather(*(c.get("/healthz") for _ in range(33)))
            big = asyncio.ensure_future(c.post("/v1/predict", json={"inputs": [LONG_TEXT] * 256}))
            await asyncio.sleep(0.05)
            small = await asyncio.gather(*(c.post("/v1/predict", json={"inputs": [t]}) for t in texts))
            return await big, small

    with live_server(serve_cls_onnx, max_batch=16, max_wait_ms=20, max_batch_tokens=256, max_items=256) as srv:
        before = srv.metrics()
        big, responses = asyncio.run(main(srv.url))
        after = srv.metrics()
    assert big.status_code == 200 and len(big.json()["predictions"]) == 256
    for text, r in zip(texts, responses):
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
        check_prediction(pred, cls_ref.one(text), CLS_LABELS)
    batches = metric_value(after, "edgeopt_batch_size_count") - metric_value(before, "edgeopt_batch_size_count")
    items = metric_value(after, "edgeopt_batch_size_sum") - metric_value(before, "edgeopt_batch_size_sum")
    assert items == 256 + 32
    small_batches = batches - 128  # the long texts went two per call, never with a short one
    assert 1 <= small_batches < 32, f"{small_batches} model calls for 32 queued single-item requests: no coalescing"
    # no batch bigger than max_batch: everything sits at or below the le=16 bucket
    assert metric_value(after, "edgeopt_batch_size_bucket", {"le": "16.0"}) == metric_value(after, "edgeopt_batch_size_count")
    # and none over the token bound but a lone item
    tokens = metric_value(after, "edgeopt_batch_tokens_bucket", {"le": "256.0"})
    assert tokens == metric_value(after, "edgeopt_batch_tokens_count")


def test_batching_off_runs_every_item_alone(serve_cls_onnx, cls_ref):
    texts = distinct_texts(40, offset=100)
    sizes = [1, 2, 3, 1, 1, 2, 1, 3, 1, 1, 2, 1, 1, 3, 1, 2, 1, 1, 3, 1, 2, 1, 1, 3, 1]  # 40 items in 25 requests
    payloads, k = [], 0
    for n in sizes:
        payloads.append({"inputs": texts[k : k + n]})
        k += n
    assert k == len(texts)
    with live_server(serve_cls_onnx, max_batch=1, max_wait_ms=0) as srv:
        before = srv.metrics()
        responses = asyncio.run(_concurrent_posts(srv.url, payloads))
        after = srv.metrics()
    for p, r in zip(payloads, responses):
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == len(p["inputs"])
        for text, pred in zip(p["inputs"], preds):
            check_prediction(pred, cls_ref.one(text), CLS_LABELS)
    batches = metric_value(after, "edgeopt_batch_size_count") - metric_value(before, "edgeopt_batch_size_count")
    assert batches == len(texts)
    assert metric_value(after, "edgeopt_batch_size_bucket", {"le": "1.0"}) == metric_value(after, "edgeopt_batch_size_count")


def test_request_bigger_than_max_batch_is_split_and_reassembled(serve_cls_onnx, cls_ref):
    texts = distinct_texts(37, offset=300)
    with live_server(serve_cls_onnx, max_batch=8, max_wait_ms=2) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        before = srv.metrics()
        r = c.post("/v1/predict", json={"inputs": texts, "top_k": 3})
        after = srv.metrics()
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 37
    for text, pred in zip(texts, preds):
        check_prediction(pred, cls_ref.one(text), CLS_LABELS)
    assert metric_value(after, "edgeopt_batch_size_count") - metric_value(before, "edgeopt_batch_size_count") == 5


# ---------------------------------------------------------------------------------------------
# MicroBatcher itself
# ---------------------------------------------------------------------------------------------

class Recorder:
    """infer(items) -> [2 * x, x as a column]; records each batch; raises on items equal to POISON."""

    POISON = -1

    def __init__(self):
        self.batches: list[list] = []
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.batches.append(list(items))
        if self.POISON in items:
            raise ValueError(f"poisoned batch of {len(items)}")
        x = np.asarray(items, dtype=np.float64)
        return [2 * x, x[:, None]]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_batcher_splits_big_requests_and_reassembles_in_order():
    async def main():
        rec = Recorder()
        sizes = []
        b = MicroBatcher(rec, max_batch=8, max_wait_ms=1, on_batch=lambda n, cost: sizes.append(n))
        await b.start()
        try:
            out = await b.submit(list(range(37)))
        finally:
            await b.stop()
        return rec, sizes, out, b

    rec, sizes, out, b = run(main())
    assert [len(x) for x in rec.batches] == [8, 8, 8, 8, 5] == sizes
    assert [x for batch in rec.batches for x in batch] == list(range(37))
    np.testing.assert_array_equal(out[0], 2 * np.arange(37))
    np.testing.assert_array_equal(out[1], np.arange(37)[:, None])
    assert b.queued_items == 0


def test_batcher_concurrent_callers_each_get_their_own_slice():
    async def main():
        rec = Recorder()
        b = MicroBatcher(rec, max_batch=16, max_wait_ms=20)
        await b.start()
        try:
            reqs = [list(range(100 * i, 100 * i + 1 + i % 5)) for i in range(30)]  # 1..5 items each
            outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        finally:
            await b.stop()
        return rec, reqs, outs, b

    rec, reqs, outs, b = run(main())
    for r, o in zip(reqs, outs):
        np.testing.assert_array_equal(o[0], 2 * np.asarray(r))
        np.testing.assert_array_equal(o[1][:, 0], np.asarray(r))
    assert len(rec.batches) < len(reqs)  # coalesced
    assert all(len(x) <= 16 for x in rec.batches)  # never over max_batch
    assert sorted(x for batch in rec.batches for x in batch) == sorted(x for r in reqs for x in r)
    # a request that fits is never split across model calls
    for r in reqs:
        assert any(all(x in batch for x in r) for batch in rec.batches)
    assert b.queued_items == 0


def test_batcher_failure_fails_only_that_batch_and_keeps_working():
    async def main():
        rec = Recorder()
        b = MicroBatcher(rec, max_batch=4, max_wait_ms=50)
        await b.start()
        try:
            # A and B fill one batch of 4 (B is poisoned); C does not fit and goes to the next batch
            res = await asyncio.gather(b.submit([1, 2]), b.submit([3, Recorder.POISON]), b.submit([5, 6, 7]),
                                       return_exceptions=True)
            after = await b.submit([8, 9])
            # a request split over several batches, one of them poisoned, fails as a whole (and does not hang)
            with pytest.raises(ValueError, match="poisoned"):
                await b.submit([10, 11, 12, 13, Recorder.POISON, 15, 16, 17, 18])
            last = await b.submit([19])
        finally:
            await b.stop()
        return rec, res, after, last

    rec, res, after, last = run(main())
    assert rec.batches[0] == [1, 2, 3, Recorder.POISON]
    assert isinstance(res[0], ValueError) and isinstance(res[1], ValueError)
    np.testing.assert_array_equal(res[2][0], [10, 12, 14])
    np.testing.assert_array_equal(after[0], [16, 18])
    np.testing.assert_array_equal(last[0], [38])


def test_batcher_abandoned_caller_does_not_break_it():
    """A caller that gives up (the server's timeout) leaves the batcher working for everyone else."""
    import time

    def slow(items):
        time.sleep(0.05)
        return [np.asarray(items, dtype=np.float64)]

    async def main():
        b = MicroBatcher(slow, max_batch=2, max_wait_ms=0)
        await b.start()
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b.submit(list(range(10))), 0.01)
            outs = await asyncio.gather(*(b.submit([i]) for i in range(5)))
        finally:
            await b.stop()
        return outs, b

    outs, b = run(main())
    assert [float(o[0][0]) for o in outs] == [0, 1, 2, 3, 4]
    assert b.queued_items == 0


def test_batcher_without_waiting_runs_each_request_alone():
    async def main():
        rec = Recorder()
        b = MicroBatcher(rec, max_batch=1, max_wait_ms=0)
        await b.start()
        try:
            outs = await asyncio.gather(*(b.submit([i, i + 1]) for i in range(0, 10, 2)))
        finally:
            await b.stop()
        return rec, outs

    rec, outs = run(main())
    assert all(len(x) == 1 for x in rec.batches) and len(rec.batches) == 10
    for i, o in zip(range(0, 10, 2), outs):
        np.testing.assert_array_equal(o[0], [2 * i, 2 * i + 2])


# ---------------------------------------------------------------------------------------------
# bounded work per batch, turns, dropped work (issue #11)
# ---------------------------------------------------------------------------------------------

class Costed:
    """Items are (name, tokens); records each batch's names and sleeps in proportion to its padded size."""

    def __init__(self, seconds_per_token: float = 0.0):
        self.batches: list[list[str]] = []
        self.spt = seconds_per_token

    def __call__(self, items):
        import time

        self.batches.append([name for name, _ in items])
        time.sleep(self.spt * len(items) * max(c for _, c in items))
        return [np.arange(len(items), dtype=np.float64)]


def submit_costed(b: MicroBatcher, items):
    return b.submit(items, [c for _, c in items])


def test_batches_stay_under_the_token_bound_and_hold_similar_lengths():
    async def main():
        rec = Costed()
        b = MicroBatcher(rec, max_batch=16, max_wait_ms=0, max_tokens=1024)
        long = [(f"L{i}", 512) for i in range(5)]
        short = [(f"s{i}", 10) for i in range(6)]
        mid = [(f"m{i}", 100) for i in range(3)]
        huge = [("H", 5000)]  # over the bound alone: runs alone, never refused
        # queued before the loop starts, so the first batch sees all of them
        futs = [submit_costed(b, long), submit_costed(b, short), submit_costed(b, mid), submit_costed(b, huge)]
        await b.start()
        try:
            outs = await asyncio.gather(*futs)
        finally:
            await b.stop()
        return rec, outs

    rec, outs = run(main())
    cost = {**{f"L{i}": 512 for i in range(5)}, **{f"s{i}": 10 for i in range(6)}, **{f"m{i}": 100 for i in range(3)}, "H": 5000}
    for batch in rec.batches:
        costs = [cost[n] for n in batch]
        assert len(batch) == 1 or len(batch) * max(costs) <= 1024, batch  # the token bound
        assert len(batch) == 1 or max(costs) <= max(2 * min(costs), 64), batch  # no short text padded to a long one
    assert ["H"] in rec.batches
    assert sorted(n for batch in rec.batches for n in batch) == sorted(cost)
    assert [len(o[0]) for o in outs] == [5, 6, 3, 1]


def test_a_request_queued_after_a_heavy_one_does_not_wait_for_all_of_it():
    """Turns: the heavy request's batches alternate with later requests' batches."""
    async def main():
        rec = Costed(seconds_per_token=2e-5)  # 20 ms per 1,000 padded tokens
        b = MicroBatcher(rec, max_batch=16, max_wait_ms=0, max_tokens=1024)
        await b.start()
        try:
            heavy = submit_costed(b, [(f"H{i}", 512) for i in range(40)])  # 20 batches of 2
            await asyncio.sleep(0.03)
            light = await submit_costed(b, [("x", 8)])
            light_done = heavy.done()
            await heavy
        finally:
            await b.stop()
        return rec, light_done, light

    rec, heavy_was_done, light = run(main())
    assert not heavy_was_done  # the light request was answered while the heavy one still had batches to go
    i = rec.batches.index(["x"])
    assert 1 <= i <= 4, rec.batches[: i + 1]  # at most a batch or two of the heavy request before it
    assert sum(len(x) for x in rec.batches) == 41


def test_cancelled_callers_work_is_dropped_not_run():
    async def main():
        rec = Costed(seconds_per_token=2e-5)
        dropped = []
        b = MicroBatcher(rec, max_batch=16, max_wait_ms=0, max_tokens=1024, on_drop=dropped.append)
        await b.start()
        try:
            fut = submit_costed(b, [(f"H{i}", 512) for i in range(40)])
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(fut, 0.05)  # a timeout cancels it
            after = await submit_costed(b, [("y", 8)])
        finally:
            await b.stop()
        return rec, dropped, after, b

    rec, dropped, after, b = run(main())
    ran = [n for batch in rec.batches for n in batch if n.startswith("H")]
    assert len(ran) < 40 and dropped == [40 - len(ran)]  # what had not started never ran
    assert rec.batches[-1] == ["y"] and len(after[0]) == 1
    assert b.queued_items == 0


def test_others_join_a_batch_only_whole():
    """The request whose turn it is fills the batch; others join only if all their items fit, so a
    small request is not split over two model calls."""
    async def main():
        rec = Costed()
        b = MicroBatcher(rec, max_batch=4, max_wait_ms=0)
        futs = [submit_costed(b, [("a1", 1), ("a2", 1), ("a3", 1)]), submit_costed(b, [("b1", 1), ("b2", 1)]),
                submit_costed(b, [("c1", 1)])]
        await b.start()
        try:
            await asyncio.gather(*futs)
        finally:
            await b.stop()
        return rec

    rec = run(main())
    assert rec.batches == [["a1", "a2", "a3", "c1"], ["b1", "b2"]]


def test_lone_short_call_runs_on_the_event_loop_others_on_the_inference_thread():
    import threading

    threads = []

    def infer(items):
        threads.append(threading.current_thread().name)
        return [np.asarray([c for _, c in items], dtype=np.float64)]

    async def main():
        coming = [0]
        b = MicroBatcher(infer, max_batch=16, max_wait_ms=0, max_tokens=1024, coming=lambda: coming[0])
        await b.start()
        try:
            await submit_costed(b, [("a", 8)])  # no estimate yet: the inference thread, which measures it
            await submit_costed(b, [("b", 8)])  # lone and short: right on the event loop
            coming[0] = 1  # another request is being decoded: keep the loop free for it
            await submit_costed(b, [("c", 8)])
            coming[0] = 0
            await asyncio.gather(submit_costed(b, [("d", 8)]), submit_costed(b, [("e", 8)]))  # two at once
        finally:
            await b.stop()
        return threading.current_thread().name

    loop_thread = run(main())
    assert threads[0].startswith("edgeopt-infer") and threads[1] == loop_thread
    assert threads[2].startswith("edgeopt-infer") and threads[3].startswith("edgeopt-infer")
