"""Caption a whole corpus: resumable, sharded, one bad file never stops the run.

``run_corpus(input, config, out_dir)`` reads a folder or manifest, optionally drops near-duplicate
clips by their short captions (the paper's semantic filtering), skips every clip already recorded
in ``out_dir``, and captions the rest with the chosen engine, writing one record per clip into
sharded JSONL files (see :mod:`captioner.shards`), failures into ``errors.jsonl``, and counts,
throughput and per-stage time into ``summary.json``.

Records carry the clip's key (path + range + file size/mtime) and the config's key, so a rerun of
the same command resumes where the last one stopped, and a rerun with a different config is refused
instead of silently mixing captions made two ways.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from captioner.manifest import Clip, read_input
from captioner.runfolder import (  # noqa: F401 (re-exported: the run's config and folder lived here)
    RUN_FILE,
    SUMMARY_FILE,
    EngineConfig,
    RunConfig,
    RunOutput,
    RunStats,
    WorkItem,
    config_key,
)
from densecap.paths import check_input, check_output_dir

log = logging.getLogger(__name__)

def plan_run(clips: list[Clip], cfg: RunConfig, out: RunOutput, stats: RunStats) -> list[WorkItem]:
    """The clips this run must caption: the input's, minus filtered duplicates, minus clips already done."""
    stats.input_clips = len(clips)
    if cfg.filter is not None:
        clips = _filter_stage(clips, cfg, out.dir, stats)
    todo: list[WorkItem] = []
    seen: set[str] = set()
    for clip in clips:
        key = clip.key()
        if key in out.done_keys:
            stats.already_done += 1
            continue
        if key in seen:
            continue  # the same clip listed twice: caption it once
        if not cfg.run.retry_failed and key in out.failed_keys:
            continue
        seen.add(key)
        todo.append(WorkItem(clip, key))
    stats.to_caption = len(todo)
    return todo


def _filter_stage(clips: list[Clip], cfg: RunConfig, out_dir: Path, stats: RunStats) -> list[Clip]:
    from captioner.filter import FilterConfig, filter_clips, write_filter_outputs

    fcfg = FilterConfig.model_validate(cfg.filter)
    result = filter_clips(clips, fcfg)
    write_filter_outputs(result, out_dir / "filter", fcfg)
    stats.filtered_out = len(clips) - len(result.kept)
    log.info("semantic filtering kept %d of %d clips", len(result.kept), len(clips))
    return list(result.kept)


def run_corpus(input_path: str | Path, cfg: RunConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Caption every clip of ``input_path`` into ``out_dir``; returns the run summary.

    The input is read and ``out_dir`` checked before the run folder is touched; a run that fails before
    any clip is captioned or failed leaves no run.json or errors.jsonl of its own behind."""
    check_input(input_path, "input")
    clips = read_input(input_path)
    check_output_dir(out_dir)
    out = RunOutput(out_dir, cfg, fsync=cfg.run.fsync)
    stats = RunStats()
    try:
        todo = plan_run(clips, cfg, out, stats)
        log.info(
            "%d clips: %d already captioned, %d filtered out, %d to caption",
            stats.input_clips, stats.already_done, stats.filtered_out, stats.to_caption,
        )
        if todo:
            if cfg.run.engine == "ray":
                from captioner.engines.ray import run_ray

                run_ray(todo, cfg, out, stats, progress=progress)
            else:
                from captioner.engines.local import run_local

                run_local(todo, cfg, out, stats, progress=progress)
        stats.wall_seconds = time.time() - stats.started
        out.write_summary(stats, cfg.run.engine, final=True)
        return json.loads((out.dir / SUMMARY_FILE).read_text())
    except BaseException:
        out.discard_if_unused()  # e.g. a model that does not load: nothing was done
        raise
    finally:
        out.close()
