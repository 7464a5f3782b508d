"""Worker processes that prepare clips (decode, keyframes, keyframe images) under a time limit.

decord can hang or crash on a bad file; in a worker process that costs the file only. Each worker
takes one clip at a time; a worker that runs past ``timeout_s`` on a clip is killed, one that dies is
noticed, and either way the clip is reported as failed and a fresh worker takes its place.

``workers=0`` prepares clips in the calling thread instead (no isolation, no time limit; for
debugging and for engines that isolate work themselves).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

from captioner.errors import CaptionerError
from captioner.manifest import Clip

log = logging.getLogger(__name__)


@dataclass
class PrepResult:
    task_id: int
    clip: Clip
    prepared: Any = None  # captioner.caption.PreparedClip
    error: str | None = None
    stage: str = "decode"
    seconds: float = 0.0


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, CaptionerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _make_preparer(config_data: dict, factory: str | None):
    """A ClipPreparer for the config, or what ``factory`` ("module:callable", called with the
    CaptionConfig) builds: a seam for custom frame work and for tests."""
    from captioner.caption import CaptionConfig, ClipPreparer

    cfg = CaptionConfig.model_validate(config_data)
    if factory is None:
        return ClipPreparer(cfg)
    import importlib

    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)(cfg)


def _worker_main(
    uid: int, config_data: dict, task_q, result_q, threads: int, min_duration: float | None, factory: str | None
) -> None:  # runs in the child
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        preparer = _make_preparer(config_data, factory)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        result_q.put(("init_error", None, _describe_error(exc) + "\n" + traceback.format_exc()))
        return
    result_q.put(("ready", uid, None))
    while True:
        task = task_q.get()
        if task is None:
            return
        task_id, clip = task
        t0 = time.perf_counter()
        try:
            prepared = preparer.prepare(clip.path, clip.start, clip.end, min_duration=min_duration)
            result_q.put(("done", task_id, (prepared, None, time.perf_counter() - t0)))
        except BaseException as exc:  # noqa: BLE001 - any failure is this clip's failure
            result_q.put(("done", task_id, (None, _describe_error(exc), time.perf_counter() - t0)))


class _Worker:
    def __init__(self, uid: int, ctx, config_data: dict, result_q, threads: int, min_duration, factory):
        self.uid = uid
        self.task_q = ctx.Queue()
        self.process = ctx.Process(
            target=_worker_main, args=(uid, config_data, self.task_q, result_q, threads, min_duration, factory), daemon=True
        )
        self.process.start()
        self.ready = False
        self.task: tuple[int, Clip] | None = None
        self.started = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.task_q.close()


class DecodePool:
    """Prepares clips in ``workers`` processes; :meth:`poll` returns finished clips (or failures)."""

    def __init__(
        self,
        config_data: dict,
        workers: int = 2,
        timeout_s: float = 300.0,
        threads_per_worker: int = 1,
        min_duration: float | None = None,
        preparer_factory: str | None = None,
    ):
        self.config_data = config_data
        self.factory = preparer_factory
        self.min_duration = min_duration
        self.n_workers = workers
        self.timeout_s = timeout_s
        self.threads = threads_per_worker
        self._pending: deque[tuple[int, Clip]] = deque()
        self._inline = None
        self._workers: list[_Worker] = []
        self._by_id: dict[int, Clip] = {}
        self._next_uid = 0
        self._startup_deaths = 0
        if workers <= 0:
            self._inline = _make_preparer(config_data, preparer_factory)
            return
        self._ctx = mp.get_context("spawn")  # fork after torch/threads start is unsafe
        self._result_q = self._ctx.Queue()
        self._workers = [self._spawn() for _ in range(workers)]

    def _spawn(self) -> _Worker:
        self._next_uid += 1
        return _Worker(
            self._next_uid, self._ctx, self.config_data, self._result_q, self.threads, self.min_duration, self.factory
        )

    @property
    def outstanding(self) -> int:
        """Clips submitted and not yet returned by :meth:`poll`."""
        return len(self._by_id)

    def submit(self, task_id: int, clip: Clip) -> None:
        self._by_id[task_id] = clip
        self._pending.append((task_id, clip))

    def _assign(self) -> None:
        for w in self._workers:
            if not self._pending:
                return
            if w.ready and w.task is None and w.process.is_alive():
                w.task = self._pending.popleft()
                w.started = time.monotonic()
                w.task_q.put(w.task)

    def poll(self, timeout: float = 0.0) -> list[PrepResult]:
        """Finished clips since the last call; waits up to ``timeout`` seconds for the first one."""
        if self._inline is not None:
            if not self._pending:
                return []
            task_id, clip = self._pending.popleft()
            t0 = time.perf_counter()
            try:
                prepared = self._inline.prepare(clip.path, clip.start, clip.end, min_duration=self.min_duration)
                result = PrepResult(task_id, clip, prepared, seconds=time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                result = PrepResult(task_id, clip, error=_describe_error(exc), seconds=time.perf_counter() - t0)
            self._by_id.pop(task_id, None)
            return [result]

        self._assign()
        out: list[PrepResult] = []
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            wait = max(0.0, deadline - time.monotonic()) if not out else 0.0
            try:
                kind, task_id, payload = self._result_q.get(timeout=wait) if wait > 0 else self._result_q.get_nowait()
            except queue.Empty:
                break
            if kind == "init_error":
                self.close()
                raise CaptionerError(f"decode worker could not start: {payload}")
            if kind == "ready":
                for w in self._workers:
                    if w.uid == task_id:
                        w.ready = True
                self._assign()
                continue
            worker = next((w for w in self._workers if w.task is not None and w.task[0] == task_id), None)
            if worker is None or task_id not in self._by_id:
                continue  # a late answer from a worker already given up on
            prepared, error, seconds = payload
            clip = self._by_id.pop(task_id)
            out.append(PrepResult(task_id, clip, prepared, error, seconds=seconds))
            worker.task = None
            self._assign()
        out.extend(self._reap())
        self._assign()
        return out

    def _reap(self) -> list[PrepResult]:
        """Fail the clips of workers that died or ran past the time limit, and replace the workers."""
        failed: list[PrepResult] = []
        now = time.monotonic()
        for i, w in enumerate(self._workers):
            dead = not w.process.is_alive()
            late = w.task is not None and now - w.started > self.timeout_s
            if not (dead or late):
                continue
            if w.task is not None:
                task_id, clip = w.task
                if late and not dead:
                    reason = f"{clip.path}: decoding took longer than {self.timeout_s:g}s (worker killed)"
                else:
                    reason = f"{clip.path}: decode worker died (exit code {w.process.exitcode}) on this file"
                if task_id in self._by_id:
                    self._by_id.pop(task_id)
                    failed.append(PrepResult(task_id, clip, error=reason, stage="decode", seconds=now - w.started))
                log.warning(reason)
            elif dead and not w.ready:
                self._startup_deaths += 1
                if self._startup_deaths > 3 * max(1, self.n_workers):
                    code = w.process.exitcode
                    self.close()
                    raise CaptionerError(f"decode workers keep dying during start-up (exit code {code})")
                log.warning("a decode worker exited during start-up (exit code %s); restarting it", w.process.exitcode)
            w.kill()
            self._workers[i] = self._spawn()
        return failed

    def close(self) -> None:
        for w in self._workers:
            try:
                w.task_q.put(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.process.join(timeout=2)
            w.kill()
        self._workers = []
        if self._inline is not None:
            self._inline = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
