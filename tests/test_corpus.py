"""Corpus runs: mixed good/bad inputs, resume after kill -9, config changes, clip ranges,
time limits on decoding, and the openai backend over a loopback server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captioner.configbase import load_config
from captioner.corpus import RunConfig, run_corpus
from captioner.engines.decode_pool import DecodePool
from captioner.errors import ConfigError
from captioner.manifest import Clip
from captioner.shards import iter_jsonl, iter_records, record_files

ROOT = Path(__file__).resolve().parent.parent


def tiny_run_config(*overrides: str) -> RunConfig:
    return load_config(RunConfig, ROOT / "configs" / "run" / "tiny.yaml", list(overrides))


def _all_records(run_dir: Path) -> list:
    return list(iter_records(run_dir))


@pytest.fixture()
def good_corpus(media, tmp_path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    shutil.copy(media["multiscene"], d / "multiscene.mp4")
    shutil.copy(media["static"], d / "sub" / "static.mp4")
    shutil.copy(media["webm_vp9"], d / "clip.webm")
    shutil.copy(media["solid_lead"], d / "sub" / "fade_in.mp4")
    return d


def test_mixed_corpus_records_every_good_clip_and_logs_every_bad_one(good_corpus, media, samples_dir, tiny_models, tmp_path):
    bad = {
        "random.mp4": media["random_bytes"],
        "empty.mp4": media["empty"],
        "notes.mp4": media["text_mp4"],
        "cut.mp4": media["truncated_noindex"],
        "audio.mp4": media["audio_only"],
        "zero.mp4": media["zero_frames"],
    }
    for name, src in bad.items():
        shutil.copy(src, good_corpus / name)
    out = tmp_path / "run"
    summary = run_corpus(good_corpus, tiny_run_config(), out, progress=False)

    records = _all_records(out)
    assert sorted(Path(r.video.path).name for r in records) == ["clip.webm", "fade_in.mp4", "multiscene.mp4", "static.mp4"]
    assert len({r.clip_key for r in records}) == 4
    assert all(r.config_key == summary["config_key"] and r.summary for r in records)
    errors = list(iter_jsonl(out / "errors.jsonl"))
    assert sorted(Path(e["path"]).name for e in errors) == sorted(bad)
    for e in errors:
        assert e["stage"] == "decode" and Path(e["path"]).name in e["error"]
    by_name = {Path(e["path"]).name: e["error"] for e in errors}
    assert "empty" in by_name["empty.mp4"]
    assert summary["captioned"] == 4 and summary["failed"] == 6 and summary["input_clips"] == 10
    assert summary["failed_by_stage"] == {"decode": 6}
    assert summary["model_calls"] == sum(sum(r.stats["model_calls"].values()) for r in records)
    assert summary["generated_tokens"] > 0 and summary["generated_tokens_per_clip"] > 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["finished"] is True and saved["captioned"] == 4


def test_resume_skips_done_clips_and_refuses_a_changed_config(good_corpus, tiny_models, tmp_path):
    out = tmp_path / "run"
    first = run_corpus(good_corpus, tiny_run_config("run.workers=0"), out, progress=False)
    assert first["captioned"] == 4
    again = run_corpus(good_corpus, tiny_run_config("run.workers=1"), out, progress=False)  # engine settings may change
    assert again["captioned"] == 0 and again["already_done"] == 4
    assert len(_all_records(out)) == 4
    with pytest.raises(ConfigError) as exc:
        run_corpus(good_corpus, tiny_run_config("diffsw.diff_max_new_tokens=7"), out, progress=False)
    assert "diffsw.diff_max_new_tokens" in str(exc.value) and str(out) in str(exc.value)
    # A file that changes on disk is a new clip: it is captioned again.
    target = good_corpus / "multiscene.mp4"
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = run_corpus(good_corpus, tiny_run_config(), out, progress=False)
    assert third["captioned"] == 1


def test_kill_9_mid_run_then_resume_gives_exactly_one_record_per_clip(media, tiny_models, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        shutil.copy(media["multiscene"] if i % 2 else media["static"], corpus / f"clip{i}.mp4")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "captioner.cli", "run", str(corpus), "--config", "tiny", "--out", str(out),
           "--no-progress", "--set", "run.workers=1", "--set", "run.prefetch=1", "--set", "run.max_active_clips=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            files = record_files(out) if (out / "records").exists() else []
            if sum(len(list(iter_jsonl(f))) for f in files) >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no records written in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done_before = sum(len(list(iter_jsonl(f))) for f in record_files(out))
    assert 2 <= done_before < 8
    # A writer killed mid-line leaves a torn last line: readers skip it, the next run cuts it off.
    with record_files(out)[-1].open("ab") as fh:
        fh.write(b'{"schema_version": 1, "video": {"path": "half')
    assert len(_all_records(out)) == done_before

    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{done_before} already done" in proc.stdout
    records = _all_records(out)
    assert sorted(Path(r.video.path).name for r in records) == [f"clip{i}.mp4" for i in range(8)]
    assert len({r.clip_key for r in records}) == 8
    for f in record_files(out):  # every line of every shard is a complete record
        for line in f.read_bytes().splitlines():
            json.loads(line)


def test_manifest_clip_ranges_become_clip_records(samples_dir, tiny_models, tmp_path):
    manifest = tmp_path / "clips.csv"
    video = samples_dir / "cockatoo.mp4"
    manifest.write_text(
        "path,start,end,caption\n"
        f"{video},0,5,a cockatoo on a branch\n"
        f"{video},5,10.5,the cockatoo close up\n"
        f"{video},,,the whole video\n"
    )
    out = tmp_path / "run"
    summary = run_corpus(manifest, tiny_run_config("run.workers=0"), out, progress=False)
    assert summary["captioned"] == 3
    records = sorted(_all_records(out), key=lambda r: (r.clip is not None, r.clip.start if r.clip else 0))
    whole, first, second = records
    assert whole.clip is None and whole.video.duration == pytest.approx(14.0)
    assert (first.clip.start, first.clip.end) == (0.0, 5.0) and first.video.duration == pytest.approx(5.0)
    assert second.clip.start == pytest.approx(5.0) and second.clip.end == pytest.approx(10.5)
    assert second.video.duration == pytest.approx(5.5)
    for r in (first, second):
        assert r.keyframes[0].time == 0.0  # times are relative to the clip
        assert all(k.time < r.video.duration for k in r.keyframes)
    assert len({r.clip_key for r in records}) == 3


def test_decode_pool_kills_a_hanging_worker_and_survives_a_crashing_one(media, tmp_path):
    from captioner.caption import CaptionConfig

    for name in ("hang.mp4", "crash.mp4", "ok1.mp4", "ok2.mp4"):
        shutil.copy(media["static"], tmp_path / name)
    pool = DecodePool(CaptionConfig().model_dump(mode="json"), workers=2, timeout_s=8.0, preparer_factory="slow_preparer:make")
    try:
        for i, name in enumerate(("hang.mp4", "crash.mp4", "ok1.mp4", "ok2.mp4")):
            pool.submit(i, Clip(str(tmp_path / name)))
        results = {}
        deadline = time.monotonic() + 120
        while pool.outstanding and time.monotonic() < deadline:
            for r in pool.poll(timeout=0.2):
                results[Path(r.clip.path).name] = r
        assert set(results) == {"hang.mp4", "crash.mp4", "ok1.mp4", "ok2.mp4"}
        assert "longer than 8s" in results["hang.mp4"].error and "hang.mp4" in results["hang.mp4"].error
        assert "worker died" in results["crash.mp4"].error and "crash.mp4" in results["crash.mp4"].error
        for ok in ("ok1.mp4", "ok2.mp4"):
            assert results[ok].error is None and len(results[ok].prepared.images) >= 1
    finally:
        pool.close()


def test_openai_backend_corpus_run_keeps_requests_bounded(good_corpus, tmp_path, monkeypatch):
    from chat_server import ChatServer

    monkeypatch.setenv("TEST_API_KEY", "sk-test-123")
    with ChatServer() as server:
        server.delay_s = 0.05
        cfg = tiny_run_config(
            "captioner={type: openai, model: served-vlm, base_url: '%s', api_key_env: TEST_API_KEY, max_in_flight: 3, "
            "backoff_base_s: 0.01, max_retries: 2}" % server.base_url,
            "summarizer=null",
            "run.workers=0",
        )
        summary = run_corpus(good_corpus, cfg, tmp_path / "run", progress=False)
        assert summary["captioned"] == 4 and summary["failed"] == 0
        records = _all_records(tmp_path / "run")
        total_calls = sum(sum(r.stats["model_calls"].values()) for r in records)
        assert len(server.requests) == total_calls
        assert 1 < server.max_concurrency <= 3
        with_images = [r for r in server.requests if "image_url" in json.dumps(r.body)]
        assert len(with_images) == total_calls - len(records)  # every call but the summaries carries frames
        assert all(r.headers.get("authorization") == "Bearer sk-test-123" for r in server.requests)
        assert records[0].models["captioner"]["model"] == "served-vlm"
        assert "sk-test-123" not in json.dumps([r.model_dump() for r in records])


def test_openai_auth_failure_stops_the_run_with_one_error(good_corpus, tmp_path, monkeypatch):
    """A 401 (the key is wrong) fails every request the same way: the run stops at the first one, with
    one error naming the server and the status, and the key (echoed back by the server) redacted."""
    from chat_server import ChatServer

    from captioner.errors import AuthError

    key = "sk-test-wrong-key-123"
    monkeypatch.setenv("TEST_API_KEY", key)
    with ChatServer() as server:
        server.fail_next(1000, status=401, text="invalid api key", echo_headers=True)
        cfg = tiny_run_config(
            "captioner={type: openai, model: served-vlm, base_url: '%s', api_key_env: TEST_API_KEY, max_in_flight: 2, "
            "backoff_base_s: 0.01, max_retries: 3}" % server.base_url,
            "summarizer=null",
            "run.workers=0",
        )
        t0 = time.monotonic()
        with pytest.raises(AuthError) as ei:
            run_corpus(good_corpus, cfg, tmp_path / "run", progress=False)
        assert time.monotonic() - t0 < 60
        assert server.request_count <= 4  # the first answer stops it: at most the requests already in flight
    msg = str(ei.value)
    assert server.base_url + "/chat/completions" in msg and "HTTP 401" in msg and "TEST_API_KEY" in msg
    assert key not in msg and "[redacted]" in msg
    errors = tmp_path / "run" / "errors.jsonl"
    assert not errors.exists() or key not in errors.read_text()  # no clip was failed for it
    assert not errors.exists() or not errors.read_text().strip()


def test_run_with_the_filter_stage_captions_only_distinct_clips(media, tiny_models, tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"clip{i}.mp4"
        shutil.copy(media["static"], p)
        paths.append(p)
    manifest = tmp_path / "clips.jsonl"
    captions = ["A dog runs on the beach", "A dog is running along the beach", "A red car drives through a tunnel at night",
                "Two chefs chop onions in a busy kitchen"]
    manifest.write_text("".join(json.dumps({"path": str(p), "caption": c}) + "\n" for p, c in zip(paths, captions)))
    out = tmp_path / "run"
    summary = run_corpus(manifest, tiny_run_config("filter={threshold: 0.9}", "run.workers=0"), out, progress=False)
    assert summary["filtered_out"] == 1 and summary["captioned"] == 3
    assert sorted(Path(r.video.path).name for r in iter_records(out)) == ["clip0.mp4", "clip2.mp4", "clip3.mp4"]
    (dropped,) = list(iter_jsonl(out / "filter" / "dropped.jsonl"))
    assert dropped["path"].endswith("clip1.mp4") and dropped["duplicate_of"]["path"].endswith("clip0.mp4")
    assert dropped["similarity"] >= 0.9


def test_every_clip_with_a_decodable_frame_is_captioned_however_short(samples_dir, media, tiny_models, tmp_path):
    """Short clips are common in T2V corpora: a 1.2 s and a 0.3 s clip (both shorter than the 2 s
    keyframe interval) get their first (and last) frames and a summary; only a clip with no decodable
    frame fails. run.min_clip_seconds brings a minimum back."""
    import imageio_ffmpeg

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(samples_dir / "realshort.mp4", corpus / "short_1.2s.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(samples_dir / "realshort.mp4"), "-t", "0.3",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(corpus / "short_0.3s.mp4")], check=True)
    shutil.copy(media["zero_frames"], corpus / "no_frame.mp4")
    summary = run_corpus(corpus, tiny_run_config("run.workers=1"), tmp_path / "run", progress=False)
    assert summary["captioned"] == 2 and summary["failed"] == 1
    records = {Path(r.video.path).name: r for r in iter_records(tmp_path / "run")}
    long_, short = records["short_1.2s.mp4"], records["short_0.3s.mp4"]
    assert long_.video.duration == pytest.approx(1.2, abs=0.05) and short.video.duration < 0.4
    assert long_.keyframes[0].time == 0.0 and long_.keyframes[-1].time > 1.0  # first and last frame
    assert 1 <= len(short.keyframes) <= 2 and short.keyframes[0].time == 0.0
    assert long_.summary and short.summary and long_.first_caption and short.first_caption
    (error,) = list(iter_jsonl(tmp_path / "run" / "errors.jsonl"))
    assert error["path"].endswith("no_frame.mp4")
    # a minimum, when a user wants one, still applies
    strict = run_corpus(corpus, tiny_run_config("run.workers=0", "run.min_clip_seconds=1.0"), tmp_path / "strict", progress=False)
    assert strict["captioned"] == 1 and strict["failed"] == 2
    assert any("too short" in e["error"] and "short_0.3s" in e["path"] for e in iter_jsonl(tmp_path / "strict" / "errors.jsonl"))


def test_a_text_only_model_behind_the_openai_backend_stops_the_run_at_once(good_corpus, tmp_path, monkeypatch):
    """Images sent to a server whose model drops them would caption the corpus blind: the run stops
    with one error naming the model and server, before any clip is captioned or failed."""
    from chat_server import ChatServer

    from captioner.errors import UnsupportedInputError

    with ChatServer(text_only=True) as server:
        cfg = tiny_run_config(
            "captioner={type: openai, model: a-text-llm, base_url: '%s', max_retries: 0}" % server.base_url,
            "summarizer=null", "run.workers=0",
        )
        with pytest.raises(UnsupportedInputError, match="'a-text-llm' at .*ignores images"):
            run_corpus(good_corpus, cfg, tmp_path / "run", progress=False)
        assert server.requests == [] and len(server.probes) == 2
    errors = tmp_path / "run" / "errors.jsonl"
    assert not errors.exists() or not list(iter_jsonl(errors))  # no clip was failed for it
