"""A corpus run's shared state: its config (:class:`RunConfig`, with the engine settings that do not
shape captions), its folder (:class:`RunOutput`: lock, config check, resume scan, durable record and
error writing, ``summary.json``), its counters (:class:`RunStats`) and the unit of work
(:class:`WorkItem`).

:mod:`captioner.corpus` plans a run and hands these to an engine (:mod:`captioner.engines.local`,
:mod:`captioner.engines.ray`); the engines import this module, never :mod:`captioner.corpus`, so the
planner and the engines do not import each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from captioner.caption import CaptionConfig
from captioner.manifest import Clip
from captioner.record import CaptionRecord
from captioner.shards import ERRORS_FILE, RECORDS_DIR, record_files
from densecap.config import StrictModel
from densecap.errors import CaptionerError, ConfigError
from densecap.files import lock_output, write_json_atomic
from densecap.jsonl import JsonlAppender, iter_jsonl, repair_partial_tail
from densecap.paths import write_failure

__all__ = ["RUN_FILE", "SUMMARY_FILE", "EngineConfig", "RunConfig", "RunOutput", "RunStats", "WorkItem", "config_key"]

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


class EngineConfig(StrictModel):
    """How a corpus run is executed. None of these change the captions, so they are not part of
    the config key: a run can be resumed with more workers or another engine."""

    engine: Literal["local", "ray"] = "local"
    workers: int = Field(2, ge=0, description="decode worker processes (0 = decode in the main process, no time limit)")
    clip_timeout_s: float = Field(300.0, gt=0, description="a clip whose decoding takes longer fails (worker killed)")
    worker_start_timeout_s: float = Field(
        300.0, gt=0, description="a decode worker not ready by then is replaced; the run stops if they keep failing"
    )
    min_clip_seconds: float | None = Field(
        None, ge=0, description="shorter clips fail as too short; null = no minimum: every clip with a decodable "
        "frame is captioned (one shorter than the keyframe interval gets its first and last frames)"
    )
    prefetch: int = Field(8, ge=1, description="clips decoded ahead of the models")
    max_active_clips: int = Field(32, ge=1, description="clips whose DiffSW is in progress at once (batching width)")
    max_batch: int = Field(64, ge=1, description="most requests in one batched hf generate call")
    records_per_shard: int = Field(10000, ge=1)
    fsync: bool = Field(True, description="fsync every record line (safe against power loss; slower on slow disks)")
    retry_failed: bool = Field(True, description="on resume, try clips that failed before again")
    summary_every_s: float = Field(30.0, gt=0, description="rewrite summary.json this often during a run")
    ray_address: str | None = Field(None, description="address of an existing Ray cluster; null = start a local one")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started by the command")
    ray_actors: int | None = Field(None, ge=1, description="captioning actors (model replicas); null = one per GPU, else 1")
    ray_gpus_per_actor: float = Field(0.0, ge=0)
    ray_batch_clips: int = Field(16, ge=1, description="clips handed to an actor at a time")
    ray_batch_timeout_s: float | None = Field(
        None, gt=0, description="a batch not done by then: its actor is replaced and the batch retried; "
        "null = clip_timeout_s per clip + 600 s"
    )


class RunConfig(CaptionConfig):
    """Config of ``captioner run`` (configs/run/*.yaml): the caption config plus filtering and engine."""

    filter: dict[str, Any] | None = Field(None, description="semantic filtering stage (see `captioner filter`); null = off")
    run: EngineConfig = Field(default_factory=EngineConfig)

    def caption_config(self) -> CaptionConfig:
        data = self.model_dump(mode="json", exclude={"filter", "run"})
        return CaptionConfig.model_validate(data)

    @model_validator(mode="after")
    def _check_filter(self) -> "RunConfig":
        if self.filter is not None:
            from captioner.filter import FilterConfig

            FilterConfig.model_validate(self.filter)
        return self


def config_key(cfg: CaptionConfig) -> str:
    """Key of everything that shapes a caption (models, prompts, keyframe and DiffSW settings)."""
    data = cfg.model_dump(mode="json")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "<root>"]


@dataclass
class RunStats:
    input_clips: int = 0
    filtered_out: int = 0
    already_done: int = 0
    to_caption: int = 0
    captioned: int = 0
    failed: int = 0
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "first": 0.0, "diff": 0.0, "summary": 0.0})
    model_calls: int = 0
    started: float = field(default_factory=time.time)
    wall_seconds: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)

    def as_dict(self, engine: str) -> dict[str, Any]:
        wall = self.wall_seconds or (time.time() - self.started)
        done = max(1, self.captioned)
        return {
            "engine": engine,
            "input_clips": self.input_clips,
            "filtered_out": self.filtered_out,
            "already_done": self.already_done,
            "to_caption": self.to_caption,
            "captioned": self.captioned,
            "failed": self.failed,
            "failed_by_stage": dict(self.failed_by_stage),
            "wall_seconds": round(wall, 3),
            "clips_per_second": round(self.captioned / wall, 4) if wall > 0 else None,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "model_calls": self.model_calls,
            "model_calls_per_clip": round(self.model_calls / done, 3) if self.captioned else None,
            "prompt_tokens": self.usage.get("prompt_tokens", 0),
            "generated_tokens": self.usage.get("completion_tokens", 0),
            "generated_tokens_per_clip": round(self.usage.get("completion_tokens", 0) / done, 2) if self.captioned else None,
        }


class RunOutput:
    """The run folder: exclusive lock, config check, what is done, and durable writing of records and
    errors. One run at a time: the folder is locked (``DIR/.lock``) until :meth:`close`, and a second
    run on it stops with an error naming the holder's pid."""

    def __init__(self, out_dir: str | Path, cfg: RunConfig, fsync: bool = True):
        self.dir = Path(out_dir)
        self._made_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._records: JsonlAppender | None = None
        self._errors: JsonlAppender | None = None
        self._lock = lock_output(self.dir, "captioner run")  # before anything is read or written here
        try:
            self.cfg = cfg
            self.caption_cfg = cfg.caption_config()
            self.key = config_key(self.caption_cfg)
            self.fsync = fsync
            self.new = not (self.dir / RUN_FILE).exists()  # this run starts the folder (it writes run.json)
            self._check_config()
            self.done_keys = self._scan_records()
            self.failed_keys = self._scan_errors()
            self._records_in_shard = 0
            self._shard_no = 0
            self._token = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            self._errors = JsonlAppender(self.dir / ERRORS_FILE, fsync=fsync)
        except BaseException:
            self._lock.release()
            raise

    def _check_config(self) -> None:
        path = self.dir / RUN_FILE
        wanted = self.caption_cfg.model_dump(mode="json")
        if path.exists():
            try:
                prev = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise CaptionerError(f"{path}: not valid JSON ({exc.msg}); is this a captioner run folder?") from None
            if prev.get("config_key") != self.key:
                changed = _diff_keys(prev.get("caption_config", {}), wanted)
                raise ConfigError(
                    f"{self.dir} holds a run made with a different config (changed: {', '.join(changed) or 'unknown'}); "
                    "resuming would mix captions made two ways. Use a new --out folder, or the original config."
                )
            return
        try:
            write_json_atomic(
                path,
                json.dumps({"config_key": self.key, "caption_config": wanted, "created": time.time()}, indent=2) + "\n",
            )
        except OSError as exc:
            raise CaptionerError(write_failure(path, exc)) from None

    def _scan_records(self) -> set[str]:
        """Keys of the clips already recorded; a torn last line (a killed writer) is cut off first."""
        done: set[str] = set()
        for f in record_files(self.dir):
            repair_partial_tail(f)
            for obj in iter_jsonl(f):
                key = obj.get("clip_key")
                if key:
                    done.add(key)
        return done

    def _scan_errors(self) -> set[str]:
        path = self.dir / ERRORS_FILE
        if not path.exists():
            return set()
        return {obj.get("clip_key") for obj in iter_jsonl(path) if obj.get("clip_key")}

    def write_record(self, record: CaptionRecord) -> None:
        if self._records is None or self._records_in_shard >= self.cfg.run.records_per_shard:
            if self._records is not None:
                self._records.close()
            self._shard_no += 1
            name = f"part-{self._token}-{self._shard_no:04d}.jsonl"
            self._records = JsonlAppender(self.dir / RECORDS_DIR / name, fsync=self.fsync)
            self._records_in_shard = 0
        self._records.append(record.model_dump(mode="json"))
        self._records_in_shard += 1
        if record.clip_key:
            self.done_keys.add(record.clip_key)

    def write_error(self, clip: Clip, key: str, stage: str, message: str) -> None:
        self._errors.append(
            {
                "path": clip.path,
                "start": clip.start,
                "end": clip.end,
                "clip_key": key,
                "stage": stage,
                "error": message,
                "time": round(time.time(), 3),
            }
        )

    def write_summary(self, stats: RunStats, engine: str, final: bool = False) -> None:
        data = stats.as_dict(engine)
        data["finished"] = final
        data["config_key"] = self.key
        path = self.dir / SUMMARY_FILE
        try:
            write_json_atomic(path, json.dumps(data, indent=2) + "\n")
        except OSError as exc:
            raise CaptionerError(
                f"{write_failure(path, exc)}; the records written so far are kept in {self.dir / RECORDS_DIR}: "
                "run the same command again to resume"
            ) from None

    def close(self) -> None:
        """Close the files and release the run folder's lock (idempotent)."""
        try:
            if self._records is not None:
                self._records.close()
            if self._errors is not None:
                self._errors.close()
        finally:
            self._lock.release()

    def discard_if_unused(self) -> None:
        """Remove what this run created in a folder it started, when no clip was recorded or failed."""
        errors = self.dir / ERRORS_FILE
        shards = record_files(self.dir)
        if not self.new or any(f.stat().st_size for f in shards) or (errors.exists() and errors.stat().st_size):
            return
        for f in (*shards, errors, self.dir / RUN_FILE, self.dir / SUMMARY_FILE):
            f.unlink(missing_ok=True)
        self.close()  # also removes the lock file, so a folder this run made can be removed
        for d in (self.dir / RECORDS_DIR, self.dir) if self._made_dir else (self.dir / RECORDS_DIR,):
            with contextlib.suppress(OSError):  # only if empty
                d.rmdir()


@dataclass
class WorkItem:
    """A clip to caption, with its precomputed key."""

    clip: Clip
    key: str
