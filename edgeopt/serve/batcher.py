"""Micro-batching with bounded work per model call.

Concurrent requests are coalesced into one model call, and every caller gets exactly the rows of
the outputs that belong to its own inputs. What one call may cost is bounded:

- at most ``max_batch`` items, and at most ``max_tokens`` when items have a cost (a text's token
  count): a batch costs its item count times its longest item, which is what the model computes
  once the batch is padded;
- items of similar cost only (the longest at most twice the shortest, or both short), so a short
  text is never padded to a long one's length;
- requests take turns: each batch starts with the request whose turn it is, then takes from the
  others, and a large request is split over batches that alternate with other requests' batches.
  A 64-text request of 512 tokens each cannot hold a one-text request back for more than one batch.

A caller that stops waiting (its future is cancelled: a timeout, or its client went away) has its
queued items dropped: they are never run.

Model calls run on one inference thread, except a lone request whose call is known to take under
``INLINE_S`` (from the recent calls' time per token): it runs on the event loop, which saves a lone
client the two thread hops (a quarter of a millisecond or more on a busy machine).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

SHORT = 64  # items this cheap batch together whatever their lengths: padding them costs little
INLINE_S = 0.003  # a lone request expected to take less runs on the event loop, not the inference thread


class _Job:
    __slots__ = ("items", "costs", "future", "next", "finished", "parts")

    def __init__(self, items: Sequence[Any], costs: Sequence[int] | None, future: asyncio.Future):
        self.items = items
        self.costs = costs
        self.future = future
        self.next = 0  # the first item not yet taken into a batch
        self.finished = 0  # items whose outputs came back
        self.parts: list[tuple[int, list[np.ndarray]]] = []  # (first item, outputs for a run of items)

    @property
    def waiting(self) -> int:
        return len(self.items) - self.next


class MicroBatcher:
    """``infer(items) -> list[np.ndarray]`` runs on one worker thread; outputs are split per caller.

    ``coming()``: requests admitted for prediction that have not reached ``submit`` yet (decoding);
    the batcher waits up to ``max_wait_ms`` for company only when some are coming, or when the last
    batch served several requests. A lone caller is served at once.
    ``on_batch(items, cost)`` is told each batch's size; ``on_drop(items)`` the items of cancelled
    callers that were never run."""

    def __init__(self, infer: Callable[[Sequence[Any]], list[np.ndarray]], max_batch: int = 16,
                 max_wait_ms: float = 5.0, max_tokens: int | None = None,
                 on_batch: Callable[[int, int], None] | None = None, on_drop: Callable[[int], None] | None = None,
                 coming: Callable[[], int] | None = None):
        self.infer = infer
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_tokens = int(max_tokens) if max_tokens else None
        self.on_batch = on_batch
        self.on_drop = on_drop
        self.coming = coming
        self._jobs: deque[_Job] = deque()  # jobs with items not yet taken, in turn order
        self._arrival: asyncio.Event | None = None
        self._full: asyncio.Future | None = None  # while waiting for company: set once a batch is full
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeopt-infer")
        self._last_requests = 0
        self._resting: _Job | None = None  # the request whose turn the running batch is
        self._per_cost: float | None = None  # seconds per unit of cost of recent model calls (a moving average)

    @property
    def queued_items(self) -> int:
        jobs = [*self._jobs, self._resting] if self._resting is not None else self._jobs
        return sum(j.waiting for j in jobs if not j.future.done())

    async def start(self) -> None:
        self._arrival = self._arrival or asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="edgeopt-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def run_alone(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the inference thread between batches, outside any batch (a caller
        that made its own batch); sharing the thread keeps one model call at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, items: Sequence[Any], costs: Sequence[int] | None = None) -> asyncio.Future:
        """Queue ``items`` (``costs``: one per item, e.g. token counts; None: no token bound).
        The future resolves to the outputs for exactly these items, in order; cancelling it drops
        the items not yet run."""
        if not items:
            raise ValueError("submit needs at least one item")
        if costs is not None and len(costs) != len(items):
            raise ValueError("submit: one cost per item")
        job = _Job(items, costs, asyncio.get_running_loop().create_future())
        job.future.add_done_callback(lambda f, job=job: self._on_done(job, f))
        self._jobs.append(job)
        if self._arrival is None:  # queued before start(): the loop finds it when it starts
            self._arrival = asyncio.Event()
        self._arrival.set()
        if self._full is not None and not self._full.done() and self.queued_items >= self.max_batch:
            self._full.set_result(None)
        return job.future

    def _on_done(self, job: _Job, future: asyncio.Future) -> None:
        if future.cancelled() and job.waiting and self.on_drop:
            self.on_drop(job.waiting)
        if future.cancelled() and job in self._jobs:
            self._jobs.remove(job)
        if future.cancelled() and job is self._resting:
            self._resting = None

    def _cost(self, job: _Job, i: int) -> int:
        return job.costs[i] if job.costs is not None else 1

    def take(self) -> list[tuple[_Job, int, int]]:
        """The next batch as (job, first, stop) runs of items; advances the jobs and the turn."""
        while self._jobs and self._jobs[0].future.done():
            self._jobs.popleft()
        if not self._jobs:
            return []
        parts: list[tuple[_Job, int, int]] = []
        n = longest = 0
        shortest = None
        bounded = self.max_tokens is not None
        for k, job in enumerate(self._jobs):
            if job.future.done():
                continue
            start = i = job.next
            m, hi, lo = n, longest, shortest
            while i < len(job.items) and m < self.max_batch:
                c = self._cost(job, i)
                h = max(hi, c)
                low = c if lo is None else min(lo, c)
                if m and job.costs is not None:
                    if bounded and (m + 1) * h > self.max_tokens:
                        break
                    if h > max(2 * low, SHORT):
                        break
                hi, lo = h, low
                m += 1
                i += 1
            # the request whose turn it is takes what fits; the others join only whole (one model
            # call for them is better than two), else they wait for the next batch or their turn
            if i > start and (k == 0 or i == len(job.items)):
                parts.append((job, start, i))
                job.next = i
                n, longest, shortest = m, hi, lo
            if n >= self.max_batch:
                break
        first = self._jobs[0]
        self._jobs = deque(j for j in self._jobs if j is not first and j.waiting and not j.future.done())
        # the request whose turn it was rests until this batch is done, then queues behind every
        # request that arrived meanwhile: they had waited for this batch already
        self._resting = first if first.waiting else None
        return parts

    def _company_coming(self) -> bool:
        return self._last_requests > 1 or (self.coming is not None and self.coming() > 0)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            if self.max_wait > 0 and self._company_coming() and self.queued_items < self.max_batch:
                # one future and one timer per batch: wakes when the batch is full or the wait is over
                self._full = full = loop.create_future()
                timer = loop.call_later(self.max_wait, lambda: full.done() or full.set_result(None))
                try:
                    await full
                finally:
                    timer.cancel()
                    self._full = None
            parts = self.take()
            if not parts:
                continue
            items = [x for job, a, b in parts for x in job.items[a:b]]
            cost = len(items) * max(self._cost(job, i) for job, a, b in parts for i in range(a, b))
            # A lone request whose model call is known to be short runs right here: the hop to the
            # inference thread and back costs a lone client more than the call itself. Never when
            # others are queued, coming or were just served: they would wait for the event loop.
            inline = (len(parts) == 1 and not self._jobs and self._resting is None and self._last_requests <= 1
                      and not (self.coming is not None and self.coming()) and self._per_cost is not None
                      and cost * self._per_cost <= INLINE_S)
            self._last_requests = len(parts)
            if self.on_batch:
                self.on_batch(len(items), cost)
            t = time.perf_counter()
            try:
                if inline:
                    outputs = self.infer(items)
                else:
                    outputs = await loop.run_in_executor(self._executor, self.infer, items)
                took = time.perf_counter() - t
                self._per_cost = took / cost if self._per_cost is None else 0.8 * self._per_cost + 0.2 * took / cost
            except Exception as e:  # noqa: BLE001  one bad batch fails its callers, not the server
                for job, _, _ in parts:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            finally:
                if self._resting is not None and not self._resting.future.done():
                    self._jobs.append(self._resting)
                self._resting = None
            offset = 0
            for job, a, b in parts:
                n = b - a
                if not job.future.done():
                    job.parts.append((a, [o[offset : offset + n] for o in outputs]))
                    job.finished += n
                    if job.finished == len(job.items):
                        job.parts.sort(key=lambda p: p[0])
                        rows = [p[1] for p in job.parts]
                        job.future.set_result(rows[0] if len(rows) == 1 else
                                              [np.concatenate([r[k] for r in rows], axis=0) for k in range(len(rows[0]))])
                offset += n
