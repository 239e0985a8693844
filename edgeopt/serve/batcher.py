"""Micro-batching: concurrent requests are coalesced into one model call.

Requests wait at most ``max_wait_ms`` for company, a batch never exceeds
``max_batch`` items (a larger request is split across batches), and every caller
gets exactly the slice of outputs that belongs to its own inputs.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future
    results: list = field(default_factory=list)  # list of per-chunk outputs, filled in order
    pending: int = 0


class MicroBatcher:
    """``infer(items) -> list[np.ndarray]`` runs on one worker thread; outputs are split per caller."""

    def __init__(self, infer: Callable[[Sequence[Any]], list[np.ndarray]], max_batch: int = 16,
                 max_wait_ms: float = 5.0, on_batch: Callable[[int], None] | None = None,
                 concurrency: Callable[[], int] | None = None):
        self.infer = infer
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self.concurrency = concurrency  # e.g. requests in flight at the HTTP layer
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeopt-infer")
        self.queued_items = 0
        self._last_requests = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
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

    async def submit(self, items: Sequence[Any]) -> list[np.ndarray]:
        """Queue ``items``; resolve to the outputs for exactly these items, in order."""
        loop = asyncio.get_running_loop()
        job = _Job(items=items, future=loop.create_future())
        chunks = [(i, items[i : i + self.max_batch]) for i in range(0, len(items), self.max_batch)]
        job.pending = len(chunks)
        job.results = [None] * len(chunks)
        for k, (_, chunk) in enumerate(chunks):
            self.queued_items += len(chunk)
            self._queue.put_nowait((job, k, chunk))
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch = [first]
            size = len(first[2])
            # Wait for company only when there is concurrency (other requests in flight, or the
            # last batch had several): a lone caller is served at once instead of paying max_wait_ms.
            busy = self._last_requests > 1 or (self.concurrency is not None and self.concurrency() > 1)
            wait = self.max_wait if busy else 0.0
            deadline = time.monotonic() + wait
            while size < self.max_batch:
                timeout = deadline - time.monotonic()
                try:
                    nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(nxt[2]) > self.max_batch:
                    carry = nxt  # starts the next batch; never split a chunk
                    break
                batch.append(nxt)
                size += len(nxt[2])
            items = [x for _, _, chunk in batch for x in chunk]
            self._last_requests = len(batch)
            self.queued_items -= len(items)
            if self.on_batch:
                self.on_batch(len(items))
            try:
                outputs = await loop.run_in_executor(self._executor, self.infer, items)
            except Exception as e:  # noqa: BLE001  one bad batch fails its callers, not the server
                for job, _, _ in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            start = 0
            for job, k, chunk in batch:
                n = len(chunk)
                job.results[k] = [o[start : start + n] for o in outputs]
                start += n
                job.pending -= 1
                if job.pending == 0 and not job.future.done():
                    parts = job.results
                    job.future.set_result([np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))])
