"""Send model requests of many clips to one backend, keeping it busy.

- Batching backends (``hf``): one thread takes every request waiting in the queue, groups them by
  token budget and sends each group as one batched ``generate`` call; requests that arrive during a
  call form the next batch.
- Server backends (``openai``): each request is its own call on a pool of ``max_in_flight``
  threads, so a finished request frees its slot at once (no batch barrier), and the backend's own
  bound on in-flight requests holds.

Answers come back through the ``on_done(request, text, error, seconds)`` callback, called from the
dispatcher's threads; the corpus engine turns them into events for its single-threaded loop.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from captioner.backends.base import ChatBackend

OnDone = Callable[[Any, "str | None", "BaseException | None", float], None]


class Dispatcher:
    def __init__(self, backend: ChatBackend, on_done: OnDone, max_batch: int = 64):
        self.backend = backend
        self.on_done = on_done
        self.max_batch = max(1, max_batch)
        cfg = getattr(backend, "cfg", None)
        self.concurrent = backend.name == "openai"
        self._closed = False
        if self.concurrent:
            width = int(getattr(cfg, "max_in_flight", 8) or 8)
            self._pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"dispatch-{backend.name}")
        else:
            self._queue: queue.Queue = queue.Queue()
            self._thread = threading.Thread(target=self._batch_loop, name=f"dispatch-{backend.name}", daemon=True)
            self._thread.start()

    def submit(self, request: Any) -> None:
        if self._closed:
            raise RuntimeError("dispatcher is closed")
        if self.concurrent:
            self._pool.submit(self._one, request)
        else:
            self._queue.put(request)

    def _one(self, request: Any) -> None:
        t0 = time.perf_counter()
        try:
            (text,) = self.backend.generate([request.conversation], max_new_tokens=request.max_new_tokens)
            self.on_done(request, text, None, time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - the request's failure, reported to the engine
            self.on_done(request, None, exc, time.perf_counter() - t0)

    def _batch_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            groups: dict[int, list[Any]] = {}
            for r in batch:
                groups.setdefault(r.max_new_tokens, []).append(r)
            for max_new, reqs in groups.items():
                t0 = time.perf_counter()
                try:
                    texts = self.backend.generate([r.conversation for r in reqs], max_new_tokens=max_new)
                    error = None
                except BaseException as exc:  # noqa: BLE001
                    texts, error = [None] * len(reqs), exc
                share = (time.perf_counter() - t0) / len(reqs)
                for r, text in zip(reqs, texts):
                    self.on_done(r, text, error, share)
            if stop:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.concurrent:
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:
            self._queue.put(None)
            self._thread.join(timeout=60)
