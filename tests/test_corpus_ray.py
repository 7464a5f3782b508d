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


def _actor_pids(title: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(title.encode()):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.timeout(600)
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the actor's process through /proc")
def test_ray_engine_survives_an_actor_killed_mid_batch(media, tiny_models, tmp_path):
    """kill -9 of the captioning actor while it works on a batch: the batch goes to a new actor and
    every clip is still captioned once; the run neither stops nor hangs."""
    import os
    import signal
    import threading
    import time

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        shutil.copy(media["multiscene"] if i % 2 else media["static"], corpus / f"clip{i}.mp4")
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not killed and not stop.is_set():
            for pid in _actor_pids("ray::CaptionActor.caption"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        summary = run_corpus(corpus, _cfg("run.engine=ray", "run.ray_num_cpus=2", "run.workers=1", "run.ray_batch_clips=3"),
                             tmp_path / "run", progress=False)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert killed, "the actor was never seen working"
    assert summary["captioned"] == 3 and summary["failed"] == 0
    assert sorted(Path(r.video.path).name for r in iter_records(tmp_path / "run")) == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
