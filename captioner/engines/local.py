"""The local engine: decode worker processes feed DiffSW sessions whose model requests go to
batching/concurrent dispatchers; one thread owns all session state.

Pipelining: while the model answers the current requests, workers decode and select keyframes of
upcoming clips (up to ``prefetch`` ahead), and up to ``max_active_clips`` clips are in DiffSW at
once, so every model call carries the ready steps of many clips.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from captioner.caption import VideoCaptioner
from captioner.engines.decode_pool import DecodePool, PrepResult
from captioner.engines.dispatch import Dispatcher
from densecap.errors import BackendError, FatalBackendError

if TYPE_CHECKING:
    from captioner.runfolder import RunConfig, RunOutput, RunStats, WorkItem

log = logging.getLogger(__name__)


def _short(message: str, limit: int = 2000) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


class LocalPipeline:
    """Runs work items through decode → DiffSW → record with a given captioner; reusable by other
    engines (a Ray actor runs one on each batch it is given)."""

    def __init__(self, cfg: "RunConfig", captioner: VideoCaptioner | None = None):
        self.cfg = cfg
        self.caption_cfg = cfg.caption_config()
        self.vc = captioner or VideoCaptioner(self.caption_cfg, prepare=False)
        self._own_vc = captioner is None
        self.events: queue.Queue = queue.Queue()

        def on_done(request, text, error, seconds):
            self.events.put((request, text, error, seconds))

        self.dispatch = {"captioner": Dispatcher(self.vc.captioner, on_done, cfg.run.max_batch)}
        if self.vc.summarizer is self.vc.captioner:
            self.dispatch["summarizer"] = self.dispatch["captioner"]
        else:
            self.dispatch["summarizer"] = Dispatcher(self.vc.summarizer, on_done, cfg.run.max_batch)
        self.pool = DecodePool(
            self.caption_cfg.model_dump(mode="json"),
            workers=cfg.run.workers,
            timeout_s=cfg.run.clip_timeout_s,
            start_timeout_s=cfg.run.worker_start_timeout_s,
            min_duration=cfg.run.min_clip_seconds,
        )

    def close(self) -> None:
        for d in {id(d): d for d in self.dispatch.values()}.values():
            d.close()
        self.pool.close()
        if self._own_vc:
            self.vc.close()

    def usage(self) -> dict[str, int]:
        backends = {id(self.vc.captioner): self.vc.captioner, id(self.vc.summarizer): self.vc.summarizer}
        total: dict[str, int] = {}
        for b in backends.values():
            for k, v in b.usage().items():
                total[k] = total.get(k, 0) + v
        return total

    def run(self, items: list["WorkItem"], on_record, on_error, stats: "RunStats", on_progress=None) -> None:
        """Caption ``items``; ``on_record(item, record)`` / ``on_error(item, stage, message)`` are
        called from this thread as clips finish."""
        _Loop(self, items, on_record, on_error, stats, on_progress).run()


class _Loop:
    """One :meth:`LocalPipeline.run`: clips go to the decoders, decoded clips become DiffSW sessions,
    sessions' ready requests go to the dispatchers, answers come back as events."""

    def __init__(self, pipeline: LocalPipeline, items: list["WorkItem"], on_record, on_error, stats: "RunStats",
                 on_progress=None) -> None:
        self.p, self.stats = pipeline, stats
        self.on_record, self.on_error, self.on_progress = on_record, on_error, on_progress
        self.todo = deque(enumerate(items))
        self.waiting: deque[PrepResult] = deque()
        self.active: dict[int, dict[str, Any]] = {}  # id(session) -> state
        self.key_of: dict[int, "WorkItem"] = {}

    def fail(self, task_id: int, stage: str, message: str) -> None:
        item = self.key_of.pop(task_id)
        self.stats.failed += 1
        self.stats.failed_by_stage[stage] = self.stats.failed_by_stage.get(stage, 0) + 1
        self.on_error(item, stage, _short(message))
        if self.on_progress:
            self.on_progress()

    def issue(self, session) -> None:
        for req in session.ready_requests():
            self.p.dispatch[req.role].submit(req)
            self.stats.model_calls += 1

    def run(self) -> None:
        pool = self.p.pool
        while self.todo or self.waiting or self.active or pool.outstanding:
            self.feed_decoders()
            self.take_decoded()
            self.start_sessions()
            # model answers. A decode worker gets its next clip only when the pool is polled, so
            # while clips are being decoded do not sleep long here: a 50 ms wait for answers left
            # the workers idle for most of a clip's decode time and starved the model of clips.
            wait = (0.005 if pool.outstanding else 0.05) if self.active else 0.0001
            try:
                first = self.p.events.get(timeout=wait)
            except queue.Empty:
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self.p.events.get_nowait())
                except queue.Empty:
                    break
            for request, text, error, seconds in batch:
                self.answer(request, text, error, seconds)

    def feed_decoders(self) -> None:
        """Keep the decoders busy, bounded so memory stays flat."""
        pool = self.p.pool
        while self.todo and pool.outstanding + len(self.waiting) < self.p.cfg.run.prefetch:
            task_id, item = self.todo.popleft()
            self.key_of[task_id] = item
            pool.submit(task_id, item.clip)

    def take_decoded(self) -> None:
        for res in self.p.pool.poll(timeout=0.0 if self.active else 0.05):
            self.stats.stage_seconds["decode"] += res.seconds
            if res.error is not None:
                self.fail(res.task_id, res.stage, res.error)
            else:
                self.waiting.append(res)

    def start_sessions(self) -> None:
        while self.waiting and len(self.active) < self.p.cfg.run.max_active_clips:
            res = self.waiting.popleft()
            try:
                session = self.p.vc.session(res.prepared)
            except Exception as exc:  # noqa: BLE001
                self.fail(res.task_id, "diffsw", f"{res.clip.path}: {exc}")
                continue
            self.active[id(session)] = {"task": res.task_id, "prepared": res.prepared, "session": session}
            self.issue(session)

    def answer(self, request, text, error, seconds) -> None:
        """One model answer (or failure) for a session's request."""
        state = self.active.get(id(request.session))
        if state is None:
            return  # the clip already failed
        session, stats = state["session"], self.stats
        stats.stage_seconds[request.stage] = stats.stage_seconds.get(request.stage, 0.0) + seconds
        if isinstance(error, FatalBackendError):
            # refused credentials, a model that cannot take images: every clip would fail the same
            # way, so the run stops here with that one error (the clips in flight stay to do on resume)
            raise error
        if error is not None:
            del self.active[id(session)]
            what = str(error) if isinstance(error, BackendError) else f"{type(error).__name__}: {error}"
            self.fail(state["task"], request.stage, f"{state['prepared'].path}: {what}")
            return
        session.complete(request, text, seconds)
        if not session.done:
            self.issue(session)
            return
        del self.active[id(session)]
        item = self.key_of.pop(state["task"])
        record = self.p.vc.record(state["prepared"], session)
        record.clip_key = item.key
        self.on_record(item, record)
        stats.captioned += 1
        if self.on_progress:
            self.on_progress()


def run_local(items: list["WorkItem"], cfg: "RunConfig", out: "RunOutput", stats: "RunStats", progress: bool = True) -> None:
    pipeline = LocalPipeline(cfg)
    bar = tqdm(total=len(items), unit="clip", desc="captioning", disable=not progress, dynamic_ncols=True)
    last_summary = [time.monotonic()]

    def on_record(item, record):
        record.config_key = out.key
        out.write_record(record)

    def on_error(item, stage, message):
        out.write_error(item.clip, item.key, stage, message)

    def on_progress():
        bar.update(1)
        bar.set_postfix(failed=stats.failed, refresh=False)
        if time.monotonic() - last_summary[0] > cfg.run.summary_every_s:
            stats.usage = pipeline.usage()
            out.write_summary(stats, "local")
            last_summary[0] = time.monotonic()

    try:
        pipeline.run(items, on_record, on_error, stats, on_progress)
    finally:
        stats.usage = pipeline.usage()
        bar.close()
        pipeline.close()
