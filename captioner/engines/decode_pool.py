"""Worker processes that prepare clips (decode, keyframes, keyframe images) under a time limit.

decord can hang or crash on a bad file; in a worker process that costs the file only. Each worker
takes one clip at a time. A worker that runs past ``timeout_s`` on a clip is killed and the clip
fails; a worker that dies is replaced and its clip is tried once more on a fresh worker (an
out-of-memory kill should not cost a good clip) before it fails as the file's fault.

No worker can wedge another: each worker has its own pair of pipes (tasks in, results out) and a
reader thread in the parent that turns its result pipe into events. A worker that dies in the
middle of writing a result breaks only its own pipe, which the parent then sees as closed; there is
no lock shared between workers. Every wait is bounded: a worker has ``start_timeout_s`` to become
ready, a clip has ``timeout_s`` from the moment it is handed to a worker, and liveness is checked on
every poll.

Workers exit when the parent dies (a kill -9 of the run leaves none behind): the kernel's
parent-death signal where available, a watchdog thread, and the task pipe's end-of-file.

``workers=0`` prepares clips in the calling thread instead (no isolation, no time limit; for
debugging and for engines that isolate work themselves).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

from captioner.manifest import Clip
from densecap.errors import CaptionerError

log = logging.getLogger(__name__)

_TICK_S = 0.1  # how often poll() re-checks worker liveness and deadlines while it waits
_DEATH_GRACE_S = 2.0  # a dead worker whose pipe has not closed by then is handled anyway


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
    """A ClipPreparer for the config, or what ``factory`` ("module:callable", called with the config
    as a plain dict) builds: a seam for custom frame work and for tests."""
    if factory is None:
        from captioner.caption import CaptionConfig, ClipPreparer

        return ClipPreparer(CaptionConfig.model_validate(config_data))
    import importlib

    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)(config_data)


# ----------------------------------------------------------------------------------------------
# The worker side


def _die_with_parent(parent_pid: int, use_pdeathsig: bool) -> None:
    """Make this worker exit when the process that started it dies."""
    if use_pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(
    uid: int,
    config_data: dict,
    task_conn,
    result_conn,
    threads: int,
    min_duration: float | None,
    factory: str | None,
    parent_pid: int,
    use_pdeathsig: bool,
) -> None:  # runs in the child
    _die_with_parent(parent_pid, use_pdeathsig)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(max(1, threads))
    try:
        preparer = _make_preparer(config_data, factory)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(max(1, threads))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        result_conn.send(("init_error", _describe_error(exc) + "\n" + traceback.format_exc()))
        return
    result_conn.send(("ready",))
    while True:
        try:
            task = task_conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        task_id, clip = task
        t0 = time.perf_counter()
        try:
            prepared, error = preparer.prepare(clip.path, clip.start, clip.end, min_duration=min_duration), None
        except BaseException as exc:  # noqa: BLE001 - any failure is this clip's failure
            prepared, error = None, _describe_error(exc)
        seconds = time.perf_counter() - t0
        try:
            result_conn.send(("done", task_id, prepared, error, seconds))
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - the result could not be pickled: the clip fails
            result_conn.send(("done", task_id, None, f"{clip.path}: result could not be sent: {_describe_error(exc)}", seconds))


# ----------------------------------------------------------------------------------------------
# The parent side


class _Worker:
    """One worker process, its two pipes and the thread that reads its results into ``events``."""

    def __init__(self, uid: int, ctx, pool: "DecodePool", events: queue.Queue):
        self.uid = uid
        task_r, self.task_conn = ctx.Pipe(duplex=False)
        self.result_conn, result_w = ctx.Pipe(duplex=False)
        use_pdeathsig = threading.current_thread() is threading.main_thread()
        self.process = ctx.Process(
            target=_worker_main,
            args=(uid, pool.config_data, task_r, result_w, pool.threads, pool.min_duration, pool.factory,
                  os.getpid(), use_pdeathsig),
            daemon=True,
            name=f"decode-worker-{uid}",
        )
        self.process.start()
        # The child holds its own copies now; closing ours lets a dead child show as end-of-file.
        task_r.close()
        result_w.close()
        self.spawned = time.monotonic()
        self.ready = False
        self.closed = False  # its result pipe reached end-of-file
        self.dead_since: float | None = None
        self.task: tuple[int, Clip] | None = None
        self.started = 0.0
        self._reader = threading.Thread(target=self._read, args=(events,), name=f"decode-reader-{uid}", daemon=True)
        self._reader.start()

    def _read(self, events: queue.Queue) -> None:
        while True:
            try:
                message = self.result_conn.recv()
            except (EOFError, OSError):
                events.put((self.uid, ("eof",)))
                return
            except Exception as exc:  # noqa: BLE001 - a whole message arrived but would not unpickle
                message = ("garbled", _describe_error(exc))
            events.put((self.uid, message))

    def send(self, task) -> bool:
        try:
            self.task_conn.send(task)
            return True
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        for conn in (self.task_conn, self.result_conn):
            try:
                conn.close()
            except OSError:
                pass


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
        start_timeout_s: float = 300.0,
        retries_on_death: int = 1,
    ):
        self.config_data = config_data
        self.factory = preparer_factory
        self.min_duration = min_duration
        self.n_workers = workers
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.retries_on_death = retries_on_death
        self.threads = threads_per_worker
        self._pending: deque[tuple[int, Clip]] = deque()
        self._inline = None
        self._workers: dict[int, _Worker] = {}
        self._by_id: dict[int, Clip] = {}
        self._deaths: dict[int, int] = {}  # task id -> workers that died holding it
        self._next_uid = 0
        self._startup_failures = 0
        self.restarts = 0  # workers replaced (died, killed or never started)
        self.retried = 0  # clips handed to a new worker after theirs died
        if workers <= 0:
            self._inline = _make_preparer(config_data, preparer_factory)
            return
        self._ctx = mp.get_context("spawn")  # fork after torch/threads start is unsafe
        self._events: queue.Queue = queue.Queue()
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        self._next_uid += 1
        self._workers[self._next_uid] = _Worker(self._next_uid, self._ctx, self, self._events)

    @property
    def outstanding(self) -> int:
        """Clips submitted and not yet returned by :meth:`poll`."""
        return len(self._by_id)

    def worker_states(self) -> dict[int, str]:
        """Process id -> ``starting``, ``idle`` or ``busy`` for the current workers (for monitoring
        and tests; safe to call from another thread)."""
        return {
            w.process.pid: "starting" if not w.ready else "busy" if w.task is not None else "idle"
            for w in list(self._workers.values())
            if w.process.pid is not None
        }

    def submit(self, task_id: int, clip: Clip) -> None:
        self._by_id[task_id] = clip
        self._pending.append((task_id, clip))

    def _assign(self) -> None:
        for w in list(self._workers.values()):
            if not self._pending:
                return
            if w.ready and w.task is None and not w.closed and w.dead_since is None:
                task = self._pending.popleft()
                if w.send(task):
                    w.task, w.started = task, time.monotonic()
                else:  # the worker is gone: the task never reached it
                    self._pending.appendleft(task)
                    w.dead_since = w.dead_since or time.monotonic()

    def poll(self, timeout: float = 0.0) -> list[PrepResult]:
        """Finished clips since the last call; waits up to ``timeout`` seconds for the first one."""
        if self._inline is not None:
            return self._poll_inline()
        out: list[PrepResult] = []
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._assign()
            wait = 0.0 if out else min(_TICK_S, max(0.0, deadline - time.monotonic()))
            try:
                uid, message = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
            except queue.Empty:
                out.extend(self._supervise())
                if out or time.monotonic() >= deadline:
                    break
                continue
            self._handle(uid, message, out)
        self._assign()
        return out

    def _poll_inline(self) -> list[PrepResult]:
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

    def _handle(self, uid: int, message: tuple, out: list[PrepResult]) -> None:
        w = self._workers.get(uid)
        if w is None:
            return  # from a worker already given up on
        kind = message[0]
        if kind == "ready":
            w.ready = True
            self._startup_failures = 0  # "keep failing to start" means one after another
        elif kind == "eof":
            w.closed = True
        elif kind == "init_error":
            self.close()
            raise CaptionerError(f"decode worker could not start: {message[1]}")
        elif kind == "garbled" and w.task is not None:
            task_id, clip = w.task
            w.task = None
            if self._by_id.pop(task_id, None) is not None:
                out.append(PrepResult(task_id, clip, error=f"{clip.path}: unreadable result from the decode worker: {message[1]}"))
        elif kind == "done":
            _, task_id, prepared, error, seconds = message
            if w.task is None or w.task[0] != task_id:
                return
            w.task = None
            clip = self._by_id.pop(task_id, None)
            if clip is not None:
                self._deaths.pop(task_id, None)
                out.append(PrepResult(task_id, clip, prepared, error, seconds=seconds))

    def _supervise(self) -> list[PrepResult]:
        """Fail or retry the clips of workers that died or ran past a deadline; replace the workers."""
        failed: list[PrepResult] = []
        now = time.monotonic()
        for uid, w in list(self._workers.items()):
            if w.dead_since is None and not w.process.is_alive():
                w.dead_since = now
            gone = w.closed or (w.dead_since is not None and now - w.dead_since > _DEATH_GRACE_S)
            late = w.task is not None and now - w.started > self.timeout_s
            stuck = not w.ready and now - w.spawned > self.start_timeout_s
            if not (gone or late or stuck):
                continue
            del self._workers[uid]
            w.kill()
            code = w.process.exitcode
            if w.task is not None:
                task_id, clip = w.task
                if late and not gone:
                    failed.extend(self._fail(task_id, f"{clip.path}: decoding took longer than {self.timeout_s:g}s (worker killed)", now - w.started))
                else:
                    self._deaths[task_id] = self._deaths.get(task_id, 0) + 1
                    if self._deaths[task_id] > self.retries_on_death:
                        failed.extend(self._fail(task_id, f"{clip.path}: decode worker died (exit code {code}) on this file", now - w.started))
                    else:
                        log.warning("%s: decode worker died (exit code %s); trying the clip again on a new worker", clip.path, code)
                        self._pending.appendleft(w.task)
                        self.retried += 1
            elif not w.ready:
                self._startup_failures += 1
                why = f"did not start within {self.start_timeout_s:g}s" if stuck and not gone else f"exited during start-up (exit code {code})"
                if self._startup_failures > 3 * max(1, self.n_workers):
                    self.close()
                    raise CaptionerError(f"decode workers keep failing to start: the last one {why}")
                log.warning("a decode worker %s; starting another", why)
            self.restarts += 1
            self._spawn()
        return failed

    def _fail(self, task_id: int, reason: str, seconds: float) -> list[PrepResult]:
        self._deaths.pop(task_id, None)
        clip = self._by_id.pop(task_id, None)
        if clip is None:
            return []
        log.warning(reason)
        return [PrepResult(task_id, clip, error=reason, stage="decode", seconds=seconds)]

    def close(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for w in workers:
            w.send(None)
        deadline = time.monotonic() + 2.0
        for w in workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            w.kill()
        self._inline = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
