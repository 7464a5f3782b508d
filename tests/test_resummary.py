"""Clip re-summarisation: which captions go to the model for a range, with what times, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.backends.base import ChatBackend
from captioner.cli import cli
from captioner.errors import CaptionerError
from captioner.record import ClipRange, DiffCaption, load_record
from captioner.resummary import (
    build_resummary_request,
    check_range,
    format_relative,
    load_resummary_prompts,
    pick_record,
    resummarize,
    select_clip,
)
from captioner.shards import JsonlAppender


class EchoBackend(ChatBackend):
    """Answers every conversation with a fixed text and records what it was sent."""

    name = "echo"

    def __init__(self):
        self.calls = []

    def generate(self, conversations, *, max_new_tokens=None):
        self.calls.append((list(conversations), max_new_tokens))
        return [f"  clip caption {i}\n" for i in range(len(conversations))]

    def describe(self):
        return {"backend": "echo", "model": "echo"}

    @property
    def supports_images(self):
        return False


@pytest.fixture(scope="module")
def prompts():
    return load_resummary_prompts()


@pytest.fixture(scope="module")
def shipped(samples_dir):
    """samples/cockatoo.diffsw.json: keyframes at 0, 4, 6, 8, 10, 13.95 s of a 14 s video."""
    return load_record(samples_dir / "cockatoo.diffsw.json")


@pytest.fixture(scope="module")
def record(shipped):
    """The shipped record with readable, distinct texts."""
    diffs = [DiffCaption(t_start=d.t_start, t_end=d.t_end, text=f"CHANGE-{i}") for i, d in enumerate(shipped.diff_captions)]
    first = shipped.first_caption.model_copy(update={"text": "FIRST-FRAME"})
    return shipped.model_copy(update={"diff_captions": diffs, "first_caption": first})


def _user(messages) -> str:
    assert [m.role for m in messages] == ["system", "user"]
    assert not any(m.has_images for m in messages)
    return messages[1].text


def _inside(sel):
    return [(d.text, d.overlap) for d in sel.inside]


def test_selection_for_ranges(record):
    # The start of the video: nothing before, the first caption is the clip's own first frame.
    sel = select_clip(record, 0.0, 3.0)
    assert sel.first_in_clip and sel.before == []
    assert _inside(sel) == [("CHANGE-0", "partly_after")]

    # Across keyframes: a pair that ended by S is context; pairs overlapping the range count, flagged.
    sel = select_clip(record, 5.0, 7.0)
    assert not sel.first_in_clip
    assert [d.text for d in sel.before] == ["CHANGE-0"]
    assert _inside(sel) == [("CHANGE-1", "partly_before"), ("CHANGE-2", "partly_after")]

    # Exactly on keyframes: no partial pairs.
    sel = select_clip(record, 4.0, 8.0)
    assert [d.text for d in sel.before] == ["CHANGE-0"]
    assert _inside(sel) == [("CHANGE-1", "inside"), ("CHANGE-2", "inside")]

    # Inside one pair: that pair alone, sticking out of both ends.
    sel = select_clip(record, 4.5, 5.5)
    assert [d.text for d in sel.before] == ["CHANGE-0"]
    assert _inside(sel) == [("CHANGE-1", "spans")]

    # The whole video: every change, all inside.
    sel = select_clip(record, 0.0, 14.0)
    assert sel.first_in_clip and sel.before == []
    assert _inside(sel) == [(f"CHANGE-{i}", "inside") for i in range(5)]

    # After the last keyframe: the state is everything, and nothing changes within the clip.
    sel = select_clip(record, 13.95, 14.0)
    assert [d.text for d in sel.before] == [f"CHANGE-{i}" for i in range(5)] and sel.inside == []


def test_format_relative():
    assert format_relative(0) == "00:00.0"
    assert format_relative(2.5) == "00:02.5"
    assert format_relative(-4) == "-00:04.0"
    assert format_relative(-0.01) == "00:00.0"  # rounds to zero: no "-00:00.0"
    assert format_relative(-75.25) == "-01:15.2"


def test_request_times_are_relative_to_the_clip_start(record, prompts):
    text = _user(build_resummary_request(record, 5.0, 7.0, prompts))
    assert "(00:02.0 long)" in text
    # The state before the clip: the first frame at -5 s, then the change from -5 s to -1 s, as context.
    assert "first frame (-00:05.0) showed: FIRST-FRAME" in text
    assert "- -00:05.0 to -00:01.0: CHANGE-0\n" in text
    # The clip: the partial pairs with their real times, relative to S, and said to be partial.
    assert "- -00:01.0 to 00:01.0: CHANGE-1 (this change began before the clip started)" in text
    assert "- 00:01.0 to 00:03.0: CHANGE-2 (this change continues after the clip ends)" in text
    for absent in ("CHANGE-3", "CHANGE-4"):
        assert absent not in text
    context, clip = text.split("Changes during the clip:")
    assert "before the clip" in context and "CHANGE-0" in context
    assert "CHANGE-0" not in clip and clip.index("CHANGE-1") < clip.index("CHANGE-2")


def test_request_at_the_very_start_uses_the_first_caption_as_the_start(record, prompts):
    text = _user(build_resummary_request(record, 0.0, 4.0, prompts))
    assert "The clip's first frame (00:00.0): FIRST-FRAME" in text
    assert "Changes before the clip" not in text and "\n\n\n" not in text
    assert "- 00:00.0 to 00:04.0: CHANGE-0\n" in text
    assert "CHANGE-1" not in text


def test_request_for_a_range_inside_one_pair(record, prompts):
    text = _user(build_resummary_request(record, 4.5, 5.5, prompts))
    assert "- -00:00.5 to 00:01.5: CHANGE-1 (this change began before the clip and continues after it ends)" in text
    assert "(00:01.0 long)" in text


def test_request_covering_all(record, prompts):
    text = _user(build_resummary_request(record, 0.0, 14.0, prompts))
    clip = text.split("Changes during the clip:")[1]
    positions = [clip.index(f"CHANGE-{i}") for i in range(5)]
    assert positions == sorted(positions)
    assert "this change" not in text  # nothing partial
    assert "- 00:10.0 to 00:14.0: CHANGE-4" in text  # 13.95 s, to a tenth


def test_request_with_no_change_in_range(record, prompts):
    text = _user(build_resummary_request(record, 13.95, 14.0, prompts))
    assert "(no changes were recorded within the clip)" in text


@pytest.mark.parametrize("start,end", [(-1.0, 3.0), (3.0, 14.5), (5.0, 5.0), (6.0, 2.0), (math.nan, 2.0), (20.0, 30.0)])
def test_bad_ranges_name_the_record(record, start, end):
    with pytest.raises(CaptionerError, match=r"cockatoo\.mp4.*0 <= start < end <= 14s"):
        check_range(record, start, end)
    with pytest.raises(CaptionerError, match="my-record.json"):
        build_resummary_request(record, start, end, load_resummary_prompts(), name="my-record.json")


def test_grid_record_cannot_be_resummarised(record, prompts):
    grid = record.model_copy(update={"mode": "grid", "first_caption": None, "diff_captions": []})
    with pytest.raises(CaptionerError, match="grid-mode record"):
        build_resummary_request(grid, 0.0, 2.0, prompts)


def test_resummarize_with_a_backend_double(record, prompts):
    clip_record = record.model_copy(update={"clip": ClipRange(start=30.0, end=44.0), "clip_key": "k1"})
    backend = EchoBackend()
    out = resummarize(clip_record, 5.0, 7.0, backend, prompts, max_new_tokens=77, record_path="x.jsonl")
    ((convs, max_new),) = backend.calls
    assert len(convs) == 1 and max_new == 77
    assert convs[0] == build_resummary_request(clip_record, 5.0, 7.0, prompts)
    assert out.summary == "clip caption 0"
    assert (out.start, out.end) == (5.0, 7.0)
    assert (out.source_start, out.source_end) == (35.0, 37.0)  # the record's clip starts at 30 s
    assert out.record == "x.jsonl" and out.clip_key == "k1" and out.record_clip == {"start": 30.0, "end": 44.0}
    assert [d.text for d in out.diff_captions] == ["CHANGE-1", "CHANGE-2"]
    assert [(d.rel_start, d.rel_end) for d in out.diff_captions] == [(-1.0, 1.0), (1.0, 3.0)]
    assert [d.text for d in out.context_diff_captions] == ["CHANGE-0"]
    assert out.prompt_version == "resummary-v1" and out.model == {"backend": "echo", "model": "echo"}
    assert json.loads(out.to_json())["summary"] == "clip caption 0"


def test_pick_record_from_a_run_folder(tmp_path, record):
    folder = tmp_path / "run"
    a = record.model_copy(update={"clip": ClipRange(start=0.0, end=14.0)})
    b = record.model_copy(update={"clip": ClipRange(start=14.0, end=28.0), "summary": "second"})
    other = record.model_copy(update={"video": record.video.model_copy(update={"path": "/data/other.mp4"})})
    with JsonlAppender(folder / "records" / "part-00000.jsonl") as app:
        for r in (a, b, other):
            app.append(r.model_dump(mode="json"))
    got, name = pick_record(folder, "/data/other.mp4")
    assert got.video.path == "/data/other.mp4" and "other.mp4" in name
    assert pick_record(folder, "other.mp4")[0].video.path == "/data/other.mp4"  # a unique file name
    with pytest.raises(CaptionerError, match="--clip-start"):
        pick_record(folder, "samples/cockatoo.mp4")
    assert pick_record(folder, "samples/cockatoo.mp4", clip_start=14.0)[0].summary == "second"
    with pytest.raises(CaptionerError, match="--video"):
        pick_record(folder)
    with pytest.raises(CaptionerError, match="no record of video"):
        pick_record(folder, "nope.mp4")
    with pytest.raises(CaptionerError, match="no such run folder"):
        pick_record(tmp_path / "missing")


def test_cli_end_to_end_with_tiny_model_reads_no_frames(samples_dir, tiny_models, tmp_path, monkeypatch):
    import captioner.video
    import densecap.video
    import densecap.video.opening

    def no_frames(*args, **kwargs):
        raise AssertionError("summarize must not read video frames")

    for module in (captioner.video, densecap.video, densecap.video.opening):
        for name in ("open_video", "open_clip", "probe_video"):
            monkeypatch.setattr(module, name, no_frames)
    out = tmp_path / "clip.json"
    src = samples_dir / "cockatoo.diffsw.json"
    result = CliRunner().invoke(
        cli, ["summarize", str(src), "--start", "5", "--end", "9.5", "--out", str(out), "--config", "tiny"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["summary"].strip()
    assert (data["start"], data["end"]) == (5.0, 9.5)
    assert data["record"] == str(src) and data["video"] == "samples/cockatoo.mp4"
    assert [(d["t_start"], d["t_end"]) for d in data["diff_captions"]] == [(4.0, 6.0), (6.0, 8.0), (8.0, 10.0)]
    assert [d["overlap"] for d in data["diff_captions"]] == ["partly_before", "inside", "partly_after"]
    assert data["prompt_version"] == "resummary-v1"
    assert data["model"]["model"] == "tiny://llm" and data["max_new_tokens"] == 32
    assert "wrote" in result.output


def test_cli_run_folder_and_bad_range(samples_dir, tmp_path):
    rec = load_record(samples_dir / "cockatoo.diffsw.json")
    folder = tmp_path / "run"
    with JsonlAppender(folder / "records" / "part-00000.jsonl") as app:
        app.append(rec.model_dump(mode="json"))
        app.append(rec.model_copy(update={"video": rec.video.model_copy(update={"path": "b.mp4"})}).model_dump(mode="json"))
    runner = CliRunner()
    # The range is checked before any model is loaded (the default config names a 7B model).
    result = runner.invoke(
        cli, ["summarize", str(folder), "--video", "samples/cockatoo.mp4", "--start", "3", "--end", "20", "--out", "x.json"]
    )
    assert result.exit_code == 1
    assert "0 <= start < end <= 14s" in result.output and "cockatoo.mp4" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["summarize", str(folder), "--start", "0", "--end", "2", "--out", "x.json"])
    assert result.exit_code == 1 and "--video" in result.output
    result = runner.invoke(cli, ["summarize", str(tmp_path / "none.json"), "--start", "0", "--end", "2", "--out", "x.json"])
    assert result.exit_code == 1 and "none.json: no such run folder or record file" in result.output
    assert not Path("x.json").exists()
