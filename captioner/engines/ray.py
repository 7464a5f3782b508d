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

from captioner.errors import CaptionerError

if TYPE_CHECKING:
    from captioner.corpus import RunConfig, RunOutput, RunStats, WorkItem

log = logging.getLogger(__name__)


class CaptionActor:
    """Runs batches of clips through one LocalPipeline (one model replica) inside a Ray actor."""

    def __init__(self, cfg_data: dict, env: dict[str, str]):
        os.environ.update(env)  # e.g. DENSECAP_TINY_DIR, HF_HOME: the driver's model locations
        from captioner.corpus import RunConfig
        from captioner.engines.local import LocalPipeline

        self.cfg = RunConfig.model_validate(cfg_data)
        self.pipeline = LocalPipeline(self.cfg)

    def caption(self, items: list["WorkItem"]) -> dict[str, Any]:
        from captioner.corpus import RunStats

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


def run_ray(items: list["WorkItem"], cfg: "RunConfig", out: "RunOutput", stats: "RunStats", progress: bool = True) -> None:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise CaptionerError("the ray engine needs Ray: pip install 'densecap-t2v[ray]'") from None
    from captioner.record import CaptionRecord

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
        remote_cls = ray.remote(num_cpus=1, num_gpus=per_actor)(CaptionActor)
        cfg_data = cfg.model_dump(mode="json")
        actors = [remote_cls.remote(cfg_data, env) for _ in range(n_actors)]
        log.info("ray engine: %d captioning actor(s), %.2f GPU each", n_actors, per_actor)
        pool = ActorPool(actors)
        batches = [items[i : i + run.ray_batch_clips] for i in range(0, len(items), run.ray_batch_clips)]
        bar = tqdm(total=len(items), unit="clip", desc="captioning (ray)", disable=not progress, dynamic_ncols=True)
        last_summary = time.monotonic()
        usage: dict[str, int] = {}
        try:
            for result in pool.map_unordered(lambda actor, batch: actor.caption.remote(batch), batches):
                for kind, item, payload in result["results"]:
                    if kind == "record":
                        record = CaptionRecord.model_validate(payload)
                        record.config_key = out.key
                        out.write_record(record)
                        stats.captioned += 1
                    else:
                        stage, message = payload
                        out.write_error(item.clip, item.key, stage, message)
                        stats.failed += 1
                    bar.update(1)
                for k, v in result["stage_seconds"].items():
                    stats.stage_seconds[k] = stats.stage_seconds.get(k, 0.0) + v
                for k, v in result["failed_by_stage"].items():
                    stats.failed_by_stage[k] = stats.failed_by_stage.get(k, 0) + v
                stats.model_calls += result["model_calls"]
                for k, v in result["usage"].items():
                    usage[k] = usage.get(k, 0) + v
                stats.usage = dict(usage)
                bar.set_postfix(failed=stats.failed, refresh=False)
                if time.monotonic() - last_summary > run.summary_every_s:
                    out.write_summary(stats, "ray")
                    last_summary = time.monotonic()
        finally:
            bar.close()
            for a in actors:
                try:
                    ray.get(a.close.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass
                ray.kill(a)
    finally:
        if started_here:
            ray.shutdown()
