"""The Ray engine: the local pipeline, replicated over a Ray cluster.

Each captioning actor owns one model replica (``ray_gpus_per_actor`` GPUs each; by default one
actor per GPU in the cluster, or a single CPU actor) and runs a :class:`LocalPipeline` with its own
decode worker processes on the batches of clips the driver hands it. The driver keeps every actor
busy (an actor pool), and is the only writer of records, errors and the summary, so the output
format and the resume semantics are exactly those of the local engine: a rerun skips what any
earlier run, local or Ray, recorded.

Starts a local Ray (``ray_num_cpus`` CPUs) unless ``ray_address`` names an existing cluster
(e.g. ``auto`` or ``ray://head:10001``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from densecap.errors import CaptionerError, FatalBackendError

if TYPE_CHECKING:
    from captioner.runfolder import RunConfig, RunOutput, RunStats, WorkItem

log = logging.getLogger(__name__)


class CaptionActor:
    """Runs batches of clips through one LocalPipeline (one model replica) inside a Ray actor."""

    def __init__(self, cfg_data: dict, env: dict[str, str]):
        os.environ.update(env)  # e.g. DENSECAP_TINY_DIR, HF_HOME: the driver's model locations
        from captioner.runfolder import RunConfig
        from captioner.engines.local import LocalPipeline

        self.cfg = RunConfig.model_validate(cfg_data)
        self.pipeline = LocalPipeline(self.cfg)

    def caption(self, items: list["WorkItem"]) -> dict[str, Any]:
        from captioner.runfolder import RunStats

        stats = RunStats()
        before = self.pipeline.usage()
        out: list[tuple[str, Any, Any]] = []

        def on_record(item, record):
            out.append(("record", item, record.model_dump(mode="json")))

        def on_error(item, stage, message):
            out.append(("error", item, (stage, message)))

        self.pipeline.run(items, on_record, on_error, stats)
        after = self.pipeline.usage()
        return {
            "results": out,
            "stage_seconds": stats.stage_seconds,
            "model_calls": stats.model_calls,
            "failed_by_stage": stats.failed_by_stage,
            "usage": {k: after.get(k, 0) - before.get(k, 0) for k in after},
        }

    def close(self) -> None:
        self.pipeline.close()


# Environment variables that tell a worker where models live; passed to actors explicitly so a
# local Ray's workers resolve model references like the driver does.
_ENV_KEYS = ("DENSECAP_TINY_DIR", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OPENAI_API_KEY")


def _batch_deadline_s(run, batch: list) -> float:
    return run.ray_batch_timeout_s or len(batch) * run.clip_timeout_s + 600.0


def run_ray(items: list["WorkItem"], cfg: "RunConfig", out: "RunOutput", stats: "RunStats", progress: bool = True) -> None:
    """Caption ``items`` on Ray actors. No actor can stop or wedge the run: a batch whose actor dies
    or passes its deadline is handed to a fresh actor once; if it fails again it is split in two (so
    one clip that kills actors is found in log2(batch) steps) and a single clip that fails twice is
    recorded as failed (stage ``actor``)."""
    try:
        import ray
    except ImportError:
        raise CaptionerError("the ray engine needs Ray: pip install 'densecap-t2v[ray]'") from None

    run = cfg.run
    started_here = not ray.is_initialized()
    if started_here:
        if run.ray_address:
            ray.init(address=run.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=run.ray_num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_actor = run.ray_gpus_per_actor
        if run.ray_actors:
            n_actors = run.ray_actors
        elif per_actor > 0 and gpus > 0:
            n_actors = max(1, int(gpus // per_actor))
        else:
            n_actors = 1
        env = {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}
        api_env = getattr(cfg.captioner, "api_key_env", None)
        if api_env and api_env in os.environ:
            env[api_env] = os.environ[api_env]
        remote_cls = ray.remote(num_cpus=1, num_gpus=per_actor, max_restarts=0)(CaptionActor)
        cfg_data = cfg.model_dump(mode="json")
        log.info("ray engine: %d captioning actor(s), %.2f GPU each", n_actors, per_actor)
        bar = tqdm(total=len(items), unit="clip", desc="captioning (ray)", disable=not progress, dynamic_ncols=True)
        driver = _RayDriver(ray, lambda: remote_cls.remote(cfg_data, env), n_actors, run, out, stats, bar)
        try:
            driver.run([items[i : i + run.ray_batch_clips] for i in range(0, len(items), run.ray_batch_clips)])
        finally:
            bar.close()
            driver.close()
    finally:
        if started_here:
            ray.shutdown()


class _RayDriver:
    """Keeps every actor busy with one batch, waits with a deadline, replaces actors that die."""

    def __init__(self, ray, new_actor, n_actors: int, run, out: "RunOutput", stats: "RunStats", bar):
        self.ray, self.new_actor, self.run_cfg, self.out, self.stats, self.bar = ray, new_actor, run, out, stats, bar
        self.idle = [new_actor() for _ in range(n_actors)]
        self.in_flight: dict[Any, tuple[Any, list, int, float]] = {}  # ref -> (actor, batch, attempt, deadline)
        self.usage: dict[str, int] = {}
        self.actor_failures = 0

    def run(self, batches: list[list]) -> None:
        from collections import deque

        pending = deque((b, 0) for b in batches)
        last_summary = time.monotonic()
        while pending or self.in_flight:
            while self.idle and pending:
                batch, attempt = pending.popleft()
                actor = self.idle.pop()
                ref = actor.caption.remote(batch)
                self.in_flight[ref] = (actor, batch, attempt, time.monotonic() + _batch_deadline_s(self.run_cfg, batch))
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                actor, batch, attempt, _ = self.in_flight.pop(ref)
                try:
                    result = self.ray.get(ref, timeout=60)
                except Exception as exc:  # noqa: BLE001 - actor died, or raised: the batch is retried
                    cause = getattr(exc, "cause", None)  # a RayTaskError carries the actor's exception
                    if isinstance(cause, FatalBackendError):  # every batch would fail the same way
                        raise cause from None
                    if isinstance(exc, FatalBackendError):
                        raise FatalBackendError(str(exc).strip().splitlines()[-1]) from None
                    pending.extendleft(reversed(self._retry(actor, batch, attempt, f"captioning actor failed: {_one_line(exc)}")))
                    continue
                self.idle.append(actor)
                self._write(result)
            now = time.monotonic()
            for ref, (actor, batch, attempt, deadline) in list(self.in_flight.items()):
                if now > deadline:
                    del self.in_flight[ref]
                    why = f"batch of {len(batch)} clip(s) not done within {_batch_deadline_s(self.run_cfg, batch):g}s (actor killed)"
                    pending.extendleft(reversed(self._retry(actor, batch, attempt, why)))
            if time.monotonic() - last_summary > self.run_cfg.summary_every_s:
                self.out.write_summary(self.stats, "ray")
                last_summary = time.monotonic()

    def _retry(self, actor, batch: list, attempt: int, why: str) -> list[tuple[list, int]]:
        """Replace ``actor``; return the batches to try again (the failed clips are recorded)."""
        self.actor_failures += 1
        try:
            self.ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.idle.append(self.new_actor())
        if attempt == 0:
            log.warning("%s; trying its %d clip(s) again on a new actor", why, len(batch))
            return [(batch, 1)]
        if len(batch) > 1:
            half = len(batch) // 2
            log.warning("%s again; splitting its %d clips to find the cause", why, len(batch))
            return [(batch[:half], 1), (batch[half:], 1)]
        (item,) = batch
        message = f"{item.clip.path}: {why} twice on this clip"
        log.warning(message)
        self.out.write_error(item.clip, item.key, "actor", message)
        self.stats.failed += 1
        self.stats.failed_by_stage["actor"] = self.stats.failed_by_stage.get("actor", 0) + 1
        self.bar.update(1)
        return []

    def _write(self, result: dict[str, Any]) -> None:
        from captioner.record import CaptionRecord

        stats = self.stats
        for kind, item, payload in result["results"]:
            if kind == "record":
                record = CaptionRecord.model_validate(payload)
                record.config_key = self.out.key
                self.out.write_record(record)
                stats.captioned += 1
            else:
                stage, message = payload
                self.out.write_error(item.clip, item.key, stage, message)
                stats.failed += 1
            self.bar.update(1)
        for k, v in result["stage_seconds"].items():
            stats.stage_seconds[k] = stats.stage_seconds.get(k, 0.0) + v
        for k, v in result["failed_by_stage"].items():
            stats.failed_by_stage[k] = stats.failed_by_stage.get(k, 0) + v
        stats.model_calls += result["model_calls"]
        for k, v in result["usage"].items():
            self.usage[k] = self.usage.get(k, 0) + v
        stats.usage = dict(self.usage)
        self.bar.set_postfix(failed=stats.failed, refresh=False)

    def close(self) -> None:
        actors = self.idle + [a for a, *_ in self.in_flight.values()]
        closing = [a.close.remote() for a in actors]
        if closing:
            self.ray.wait(closing, num_returns=len(closing), timeout=60)
        for a in actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]
