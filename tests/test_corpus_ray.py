"""The Ray engine on a local 2-CPU Ray started by the command: same records, same resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from captioner.configbase import load_config
from captioner.corpus import RunConfig, run_corpus
from captioner.shards import iter_jsonl, iter_records

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent


def _cfg(*overrides):
    return load_config(RunConfig, ROOT / "configs" / "run" / "tiny.yaml", list(overrides))


def _comparable(record) -> dict:
    data = record.without_timings()
    data.pop("config_key", None)
    return data


@pytest.mark.timeout(600)
def test_ray_engine_matches_local_engine_and_resumes(media, samples_dir, tiny_models, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(media["multiscene"], corpus / "a.mp4")
    shutil.copy(media["static"], corpus / "b.mp4")
    shutil.copy(media["random_bytes"], corpus / "broken.mp4")

    ray_out = tmp_path / "ray"
    summary = run_corpus(
        corpus, _cfg("run.engine=ray", "run.ray_num_cpus=2", "run.workers=1", "run.ray_batch_clips=1"), ray_out, progress=False
    )
    assert summary["engine"] == "ray"
    assert summary["captioned"] == 2 and summary["failed"] == 1 and summary["failed_by_stage"] == {"decode": 1}
    assert summary["model_calls"] > 0 and summary["generated_tokens"] > 0
    (error,) = list(iter_jsonl(ray_out / "errors.jsonl"))
    assert error["path"].endswith("broken.mp4") and "broken.mp4" in error["error"]

    local_out = tmp_path / "local"
    run_corpus(corpus, _cfg("run.workers=0"), local_out, progress=False)
    by_path = lambda run: {r.video.path: _comparable(r) for r in iter_records(run)}  # noqa: E731
    assert by_path(ray_out) == by_path(local_out)  # same pipeline, same records

    # Resume semantics are shared: the local engine skips what the Ray run recorded.
    again = run_corpus(corpus, _cfg("run.workers=0"), ray_out, progress=False)
    assert again["already_done"] == 2 and again["captioned"] == 0
    assert len(list(iter_records(ray_out))) == 2
