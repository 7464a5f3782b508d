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
    from captioner.corpus import RunConfig, RunOutput, RunStats, WorkItem

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
        run = self.cfg.run
        todo = deque(enumerate(items))
        waiting: deque[PrepResult] = deque()
        active: dict[int, dict[str, Any]] = {}  # id(session) -> state
        key_of: dict[int, "WorkItem"] = {}
        vc = self.vc

        def fail(task_id: int, stage: str, message: str) -> None:
            item = key_of.pop(task_id)
            stats.failed += 1
            stats.failed_by_stage[stage] = stats.failed_by_stage.get(stage, 0) + 1
            on_error(item, stage, _short(message))
            if on_progress:
                on_progress()

        def issue(session) -> None:
            for req in session.ready_requests():
                self.dispatch[req.role].submit(req)
                stats.model_calls += 1

        while todo or waiting or active or self.pool.outstanding:
            # keep the decoders busy, bounded so memory stays flat
            while todo and self.pool.outstanding + len(waiting) < run.prefetch:
                task_id, item = todo.popleft()
                key_of[task_id] = item
                self.pool.submit(task_id, item.clip)
            busy = bool(active)
            for res in self.pool.poll(timeout=0.0 if busy else 0.05):
                stats.stage_seconds["decode"] += res.seconds
                if res.error is not None:
                    fail(res.task_id, res.stage, res.error)
                else:
                    waiting.append(res)
            while waiting and len(active) < run.max_active_clips:
                res = waiting.popleft()
                try:
                    session = vc.session(res.prepared)
                except Exception as exc:  # noqa: BLE001
                    fail(res.task_id, "diffsw", f"{res.clip.path}: {exc}")
                    continue
                active[id(session)] = {"task": res.task_id, "prepared": res.prepared, "session": session}
                issue(session)
            # model answers. A decode worker gets its next clip only when the pool is polled, so
            # while clips are being decoded do not sleep long here: a 50 ms wait for answers left
            # the workers idle for most of a clip's decode time and starved the model of clips.
            wait = (0.005 if self.pool.outstanding else 0.05) if active else 0.0001
            try:
                request, text, error, seconds = self.events.get(timeout=wait)
            except queue.Empty:
                continue
            batch = [(request, text, error, seconds)]
            while True:
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            for request, text, error, seconds in batch:
                state = active.get(id(request.session))
                if state is None:
                    continue  # the clip already failed
                session = state["session"]
                stats.stage_seconds[request.stage] = stats.stage_seconds.get(request.stage, 0.0) + seconds
                if isinstance(error, FatalBackendError):
                    # refused credentials, a model that cannot take images: every clip would fail the same
                    # way, so the run stops here with that one error (the clips in flight stay to do on resume)
                    raise error
                if error is not None:
                    del active[id(session)]
                    what = str(error) if isinstance(error, BackendError) else f"{type(error).__name__}: {error}"
                    fail(state["task"], request.stage, f"{state['prepared'].path}: {what}")
                    continue
                session.complete(request, text, seconds)
                if session.done:
                    del active[id(session)]
                    item = key_of.pop(state["task"])
                    record = vc.record(state["prepared"], session)
                    record.clip_key = item.key
                    on_record(item, record)
                    stats.captioned += 1
                    if on_progress:
                        on_progress()
                else:
                    issue(session)


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
