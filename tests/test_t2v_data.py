"""t2v.data / t2v.buckets: dataset layouts, bucketing, frame sampling, tensors, batch order and resume."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from captioner.export import export_dataset
from captioner.record import ClipRange, load_record
from captioner.shards import JsonlAppender
from densecap.video import VideoInfo
from t2v.buckets import BucketBatchSampler, SampleRef, SamplerError, choose_bucket, sampled_capacity, window_starts
from t2v.data import (
    DataConfig,
    DataError,
    SampleSpec,
    VideoTextDataset,
    bucket_of,
    collate,
    read_samples,
    sample_key,
)

SMALL = [(9, 48, 64)]  # 4:3 like the synthetic clips (160x120), cheap to decode and resize


def cfg_of(**kw) -> DataConfig:
    kw.setdefault("path", "unused")
    kw.setdefault("buckets", SMALL)
    return DataConfig(**kw)


def spec(video, start=None, end=None, caption="a caption", source="test:1") -> SampleSpec:
    return SampleSpec(video=str(video), start=start, end=end, caption=caption, source=source)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- input layouts -------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path, samples_dir):
    """A run folder of three records (two clips of cockatoo, whole realshort) exported by
    captioner's own exporter into three dataset folders: jsonl + prompts-txt, metadata-csv,
    metadata-jsonl."""
    base = load_record(samples_dir / "cockatoo.diffsw.json")
    cockatoo, realshort = samples_dir / "cockatoo.mp4", samples_dir / "realshort.mp4"

    def rec(video, clip, summary, key):
        dur = base.video.duration if clip is None else clip[1] - clip[0]
        return base.model_copy(update={
            "video": base.video.model_copy(update={"path": str(video), "duration": dur}),
            "clip": None if clip is None else ClipRange(start=clip[0], end=clip[1]),
            "summary": summary, "clip_key": key, "config_key": "c",
        }).model_dump(mode="json")

    run = tmp_path / "run"
    with JsonlAppender(run / "records" / "part-00000.jsonl") as app:
        app.append(rec(cockatoo, (0.0, 6.0), "A cockatoo\nlooks around.", "a"))
        app.append(rec(cockatoo, (6.0, 14.0), "It flies off.", "b"))
        app.append(rec(realshort, None, "A short one.", "c"))
    out = {}
    for name, fmts in (("jsonl", ["jsonl", "prompts-txt"]), ("csv", ["metadata-csv"]), ("mjsonl", ["metadata-jsonl"])):
        out[name] = tmp_path / name
        export_dataset(run, out[name], formats=fmts)
    return out


def test_exported_layouts_read_back(exported, samples_dir):
    cockatoo, realshort = str(samples_dir / "cockatoo.mp4"), str(samples_dir / "realshort.mp4")
    specs = read_samples(exported["jsonl"])  # a folder with captions.jsonl: that file wins over prompts.txt
    assert [(s.video, s.start, s.end, s.caption) for s in specs] == [
        (os.path.abspath(cockatoo), 0.0, 6.0, "A cockatoo\nlooks around."),
        (os.path.abspath(cockatoo), 6.0, 14.0, "It flies off."),
        (os.path.abspath(realshort), None, None, "A short one."),
    ]
    assert specs[1].source == f"{exported['jsonl'] / 'captions.jsonl'}:2"
    assert read_samples(exported["jsonl"] / "captions.jsonl") == specs

    # prompts.txt + videos.txt: relative links under videos/, whole files (no ranges)
    (exported["jsonl"] / "captions.jsonl").unlink()
    pt = read_samples(exported["jsonl"])
    assert [s.caption for s in pt] == ["A cockatoo looks around.", "It flies off.", "A short one."]
    assert all(s.start is None and s.end is None for s in pt)
    assert pt[2].video == str(exported["jsonl"] / "videos" / "realshort.mp4")
    assert pt[1].source == f"{exported['jsonl'] / 'prompts.txt'}:2"

    for name, fname in (("csv", "metadata.csv"), ("mjsonl", "metadata.jsonl")):
        got = read_samples(exported[name])
        assert [(s.start, s.end, s.caption) for s in got] == [(s.start, s.end, s.caption) for s in specs]
        assert got[0].video == str(exported[name] / "videos" / "cockatoo.mp4")  # relative to the folder
        assert got[2].source.endswith(f"{fname}:{5 if name == 'csv' else 3}")  # csv: a header, a 2-line caption
        assert os.path.samefile(got[2].video, realshort)


def test_relative_paths_resolve_against_the_listing_folder(tmp_path, media):
    sub = tmp_path / "data" / "clips"
    sub.mkdir(parents=True)
    os.symlink(media["static"], sub / "s.mp4")
    f = write_jsonl(tmp_path / "data" / "captions.jsonl", [
        {"video": "clips/s.mp4", "caption": "x"},
        {"file_name": "./clips/../clips/s.mp4", "caption": "y", "start": "1.5", "end": ""},
        {"video": str(media["static"]), "caption": "z", "start": None},
    ])
    specs = read_samples(f)
    assert specs[0].video == specs[1].video == str(tmp_path / "data" / "clips" / "s.mp4")
    assert (specs[1].start, specs[1].end) == (1.5, None)
    assert specs[2].video == str(media["static"])


@pytest.mark.parametrize("case, expect", [
    ("nothing", r"no such dataset file or folder"),
    ("unknown_layout", r"no dataset found; looked for captions\.jsonl, metadata\.csv, metadata\.jsonl, prompts\.txt \+ videos\.txt"),
    ("unknown_file", r"notes\.txt: not a dataset file"),
    ("bad_json", r"captions\.jsonl:2: not valid JSON"),
    ("missing_caption_key", r"captions\.jsonl:2: missing column 'caption'"),
    ("missing_video_key", r"captions\.jsonl:1: missing column 'video' \(or 'file_name'\)"),
    ("empty_caption", r"captions\.jsonl:2: empty caption"),
    ("bad_range", r"captions\.jsonl:1: clip range 3\.\.2 s is empty"),
    ("negative_start", r"captions\.jsonl:1: start must be a finite number of seconds >= 0"),
    ("missing_video_file", r"captions\.jsonl:2: video file not found: .*gone\.mp4"),
    ("csv_missing_column", r"metadata\.csv:1: missing column 'caption'; the header has file_name, text"),
    ("csv_empty_caption", r"metadata\.csv:4: empty caption"),  # the first row spans lines 2-3
    ("both_metadata", r"holds both metadata\.csv and metadata\.jsonl"),
    ("misaligned", r"prompts\.txt has 3 lines but .*videos\.txt has 2: they must be aligned"),
    ("prompts_alone", r"videos\.txt: file not found \(prompts\.txt needs it alongside"),
    ("prompts_empty_line", r"prompts\.txt:2: empty caption"),
])
def test_bad_inputs_name_file_and_line(tmp_path, media, case, expect):
    v = str(media["static"])
    d = tmp_path / "ds"
    d.mkdir()
    target = d
    if case == "nothing":
        target = d / "nope"
    elif case == "unknown_file":
        target = d / "notes.txt"
        target.write_text("hi\n")
    elif case == "bad_json":
        (d / "captions.jsonl").write_text(json.dumps({"video": v, "caption": "a"}) + "\n{oops\n")
    elif case == "missing_caption_key":
        write_jsonl(d / "captions.jsonl", [{"video": v, "caption": "a"}, {"video": v, "text": "b"}])
    elif case == "missing_video_key":
        write_jsonl(d / "captions.jsonl", [{"path": v, "caption": "a"}])
    elif case == "empty_caption":
        write_jsonl(d / "captions.jsonl", [{"video": v, "caption": "a"}, {"video": v, "caption": "  "}])
    elif case == "bad_range":
        write_jsonl(d / "captions.jsonl", [{"video": v, "caption": "a", "start": 3, "end": 2}])
    elif case == "negative_start":
        write_jsonl(d / "captions.jsonl", [{"video": v, "caption": "a", "start": -1}])
    elif case == "missing_video_file":
        write_jsonl(d / "captions.jsonl", [{"video": v, "caption": "a"}, {"video": "gone.mp4", "caption": "b"}])
    elif case == "csv_missing_column":
        (d / "metadata.csv").write_text(f"file_name,text\n{v},a\n")
    elif case == "csv_empty_caption":
        (d / "metadata.csv").write_text(f'file_name,caption\n{v},"a\nb"\n{v},\n')
    elif case == "both_metadata":
        (d / "metadata.csv").write_text(f"file_name,caption\n{v},a\n")
        write_jsonl(d / "metadata.jsonl", [{"file_name": v, "caption": "a"}])
    elif case == "misaligned":
        (d / "prompts.txt").write_text("a\nb\nc\n")
        (d / "videos.txt").write_text(f"{v}\n{v}\n\n")
    elif case == "prompts_alone":
        (d / "prompts.txt").write_text("a\n")
    elif case == "prompts_empty_line":
        (d / "prompts.txt").write_text("a\n\nc\n")
        (d / "videos.txt").write_text(f"{v}\n{v}\n{v}\n")
    with pytest.raises(DataError, match=expect):
        read_samples(target)


# --- config ----------------------------------------------------------------------------------------


def test_config_defaults_and_checks():
    c = DataConfig(path="x")
    assert c.bucket_list() == [(49, 480, 832)]
    assert DataConfig(path="x", num_frames=17).bucket_list() == [(17, 480, 832)]
    assert DataConfig(path="x", buckets=[[9, 48, 64]]).bucket_list() == [(9, 48, 64)]
    with pytest.raises(ValidationError, match="fps .* or stride .* not both"):
        DataConfig(path="x", fps=8, stride=2)
    with pytest.raises(ValidationError, match="num_frames \\(17\\) only sets the default bucket"):
        DataConfig(path="x", num_frames=17, buckets=[(9, 48, 64)])
    with pytest.raises(ValidationError, match="extra"):
        DataConfig(path="x", frames=3)
    with pytest.raises(ValidationError):
        DataConfig(path="x", caption_dropout=1.5)


# --- bucketing and windows (numbers only) -------------------------------------------------------


def info(w, h, n, fps):
    return VideoInfo(path="v", size_bytes=1, fps=fps, num_frames=n, duration=n / fps, width=w, height=h,
                     codec="h264", backend="pyav")


def test_bucket_choice_aspect_first_then_most_frames():
    buckets = [(49, 480, 832), (17, 480, 832), (49, 832, 480), (17, 832, 480), (33, 512, 512)]
    c = DataConfig(path="x", fps=8, buckets=buckets)
    assert bucket_of(info(1920, 1080, 300, 30), c) == (49, 480, 832)  # 10 s landscape
    assert bucket_of(info(1080, 1920, 300, 30), c) == (49, 832, 480)  # portrait -> portrait
    assert bucket_of(info(1000, 1000, 300, 30), c) == (33, 512, 512)  # square
    assert bucket_of(info(1080, 1920, 90, 30), c) == (17, 832, 480)  # 3 s = 24 frames at 8 fps: the short one
    assert bucket_of(info(1000, 1000, 90, 30), c) == (17, 480, 832)  # square bucket too long: nearest that fits
    assert bucket_of(info(1920, 1080, 60, 30), c) is None  # 2 s = 16 frames < 17
    assert choose_bucket(160, 120, 9, [(9, 48, 64), (9, 96, 128)]) == (9, 96, 128)  # pixel count nearest


def test_capacity_and_window_starts():
    assert sampled_capacity(120, 12.0, fps=5) == 60
    assert sampled_capacity(120, 12.0, stride=3) == 40
    assert sampled_capacity(120, 12.0) == 120
    assert window_starts(60, 9, "head") == [0]
    assert window_starts(60, 9, "uniform") == [None]
    assert window_starts(8, 9, "head") == []
    assert window_starts(60, 9, "windows", 4) == [0, 17, 34, 51]
    assert window_starts(20, 9, "windows", 4) == [0, 11]  # only two fit
    for cap in range(9, 80):
        for m in (1, 2, 3, 5):
            s = window_starts(cap, 9, "windows", m)
            assert all(b - a >= 9 for a, b in zip(s, s[1:])) and s[-1] + 9 <= cap


# --- frames from real files ------------------------------------------------------------------------


def test_head_at_fps_gives_evenly_spaced_times(media):
    ds = VideoTextDataset([spec(media["multiscene"])], cfg_of(fps=5))
    item = ds[0]
    assert item["frame_times"] == pytest.approx([0.2 * k for k in range(9)])
    assert item["bucket"] == (9, 48, 64) and item["video"].shape == (3, 9, 48, 64)
    assert item["video"].dtype == torch.float32
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    assert item["source"] == "test:1" and item["video_path"] == str(media["multiscene"])


def test_stride_and_uniform(media):
    ds = VideoTextDataset([spec(media["multiscene"])], cfg_of(stride=3))
    assert ds[0]["frame_times"] == pytest.approx([0.3 * k for k in range(9)])
    ds = VideoTextDataset([spec(media["multiscene"])], cfg_of(fps=5, long_clips="uniform"))
    t = ds[0]["frame_times"]
    assert t[0] == 0.0 and t[-1] == pytest.approx(11.9) and len(t) == 9
    assert np.diff(t) == pytest.approx(np.full(8, 11.9 / 8), abs=0.101)  # nearest frames


def test_windows_non_overlapping_within_the_clip_range(media):
    specs = [spec(media["multiscene"]), spec(media["multiscene"], 2.0, 6.0, source="test:2")]
    ds = VideoTextDataset(specs, cfg_of(fps=5, long_clips="windows", max_windows_per_clip=4))
    whole = [i for i, s in enumerate(ds.samples) if s.spec.source == "test:1"]
    part = [i for i, s in enumerate(ds.samples) if s.spec.source == "test:2"]
    assert len(whole) == 4 and len(part) == 2  # 4 s at 5 fps = 20 frames: two windows of 9
    for group, lo, hi in ((whole, 0.0, 12.0), (part, 2.0, 6.0)):
        spans = [ds[i]["frame_times"] for i in group]
        for t in spans:
            assert lo <= t[0] and t[-1] < hi
            assert np.diff(t) == pytest.approx(np.full(8, 0.2))
        for a, b in zip(spans, spans[1:]):
            assert a[-1] < b[0]  # non-overlapping, in order
    assert [ds[i]["frame_times"][0] for i in whole] == pytest.approx([0.0, 3.4, 6.8, 10.2])
    assert ds.samples[part[0]].start_time == 2.0


def test_clip_range_head_starts_at_start(media):
    ds = VideoTextDataset([spec(media["multiscene"], 4.0, 8.0)], cfg_of(stride=2))
    assert ds[0]["frame_times"] == pytest.approx([4.0 + 0.2 * k for k in range(9)])


def test_portrait_and_short_clips_pick_their_buckets(media):
    buckets = [(17, 48, 64), (17, 64, 48), (9, 48, 64)]
    specs = [
        spec(media["multiscene"], source="s:1"),  # 160x120, 12 s
        spec(media["rotated"], source="s:2"),  # shown 120x160: portrait
        spec(media["multiscene"], 0.0, 1.0, source="s:3"),  # 10 frames: only the 9-frame bucket fits
        spec(media["multiscene"], 0.0, 0.5, source="s:4"),  # 5 frames: none fits
    ]
    ds = VideoTextDataset(specs, cfg_of(buckets=buckets))
    got = {s.spec.source: s.bucket for s in ds.samples}
    assert got == {"s:1": (17, 48, 64), "s:2": (17, 64, 48), "s:3": (9, 48, 64)}
    assert ds.skipped == [("s:4", f"{media['multiscene']}: clip too short: 0.50 s (5 frames) gives 5 frames at the "
                                  "source frame rate; the smallest bucket needs 9 frames at the source frame rate")]
    portrait = ds[[s.spec.source for s in ds.samples].index("s:2")]
    assert portrait["video"].shape == (3, 17, 64, 48)
    assert ds.bucket_counts() == {(9, 48, 64): 1, (17, 48, 64): 1, (17, 64, 48): 1}


def test_resize_modes(media):
    # portrait frames into a landscape bucket: cover_crop fills it, fit_pad pads left/right with black
    s = [spec(media["rotated"])]
    cover = VideoTextDataset(s, cfg_of(buckets=[(5, 48, 64)]))[0]["video"]
    assert cover.shape == (3, 5, 48, 64) and cover.min() >= -1 and cover.max() <= 1
    fit = VideoTextDataset(s, cfg_of(buckets=[(5, 48, 64)], resize="fit_pad"))[0]["video"]
    assert fit.shape == (3, 5, 48, 64)
    assert torch.all(fit[..., :10] == -1) and torch.all(fit[..., -10:] == -1)  # 36 px wide content in 64
    assert fit[..., 20:44].std() > 0.1
    # upscaling (the bucket is larger than the video) also gives the bucket's shape
    big = VideoTextDataset([spec(media["multiscene"])], cfg_of(buckets=[(3, 240, 320)]))[0]["video"]
    assert big.shape == (3, 3, 240, 320) and big.min() >= -1 and big.max() <= 1


def test_random_crop_is_seeded_by_epoch(media):
    ds = VideoTextDataset([spec(media["multiscene"])], cfg_of(buckets=[(3, 48, 32)], crop="random", seed=3))
    a = ds[SampleRef(0, 0, 0)]["video"]
    assert torch.equal(a, ds[SampleRef(0, 0, 5)]["video"])
    others = [ds[SampleRef(0, e, 0)]["video"] for e in range(1, 6)]
    assert any(not torch.equal(a, o) for o in others)
    center = VideoTextDataset([spec(media["multiscene"])], cfg_of(buckets=[(3, 48, 32)]))
    assert torch.equal(center[0]["video"], center[SampleRef(0, 4, 0)]["video"])


def test_caption_dropout_rate_and_determinism(media):
    specs = [spec(media["static"], caption=f"caption {k}", source=f"c:{k}") for k in range(400)]
    ds = VideoTextDataset(specs, cfg_of(caption_dropout=0.25, seed=7))  # one file: probed once
    e0 = [ds.caption_for(i, 0) for i in range(len(ds))]
    e1 = [ds.caption_for(i, 1) for i in range(len(ds))]
    rate = sum(c == "" for c in e0) / len(e0)
    assert 0.18 < rate < 0.32
    assert e0 == [ds.caption_for(i, 0) for i in range(len(ds))]
    assert e0 != e1
    assert all(c in ("", f"caption {i}") for i, c in enumerate(e0))
    ds2 = VideoTextDataset(specs, cfg_of(caption_dropout=0.25, seed=7))
    assert e1 == [ds2.caption_for(i, 1) for i in range(len(ds2))]
    dropped = e0.index("")
    item = ds[SampleRef(dropped, 0, 0)]
    assert item["caption"] == "" and item["caption_dropped"]
    ds.set_epoch(0)
    assert ds[dropped]["caption"] == ""


# --- skipping and errors ---------------------------------------------------------------------------


def test_bad_clips_are_skipped_and_reported(media):
    specs = [
        spec(media["random_bytes"], source="f:1"),
        spec(media["multiscene"], source="f:2"),
        spec(media["empty"], source="f:3"),
        spec(media["multiscene"], 0.0, 0.5, source="f:4"),
        spec(media["multiscene"], 20.0, 30.0, source="f:5"),  # after the end of the video
    ]
    ds = VideoTextDataset(specs, cfg_of(fps=5))
    assert [s.spec.source for s in ds.samples] == ["f:2"]
    skipped = dict(ds.skipped)
    assert list(skipped) == ["f:1", "f:3", "f:4", "f:5"]
    assert "random.mp4: not a video file" in skipped["f:1"]
    assert "empty.mp4: file is empty" in skipped["f:3"]
    assert "too short" in skipped["f:4"] and "9 frames at 5 fps = 1.8 s" in skipped["f:4"]
    assert "after the end of the video" in skipped["f:5"]
    assert "1 samples from 1 of 5 clips" in ds.summary()


def test_empty_dataset_errors_name_the_cause(media):
    with pytest.raises(DataError, match=r"no video files could be read \(2 clips\): first error: a:1: .*random\.mp4"):
        VideoTextDataset([spec(media["random_bytes"], source="a:1"), spec(media["empty"], source="a:2")], cfg_of())
    short = [spec(media["multiscene"], 0.0, 1.0, source="b:1"), spec(media["multiscene"], 3.0, 4.0, source="b:2")]
    with pytest.raises(DataError, match=r"all 2 clips were too short for the smallest bucket "
                                        r"\(17 frames at 8 fps = 2\.1 s\): first: b:1: "):
        VideoTextDataset(short, cfg_of(fps=8, buckets=[(17, 48, 64), (33, 48, 64)]))
    with pytest.raises(DataError, match=r"no usable clips among 2: 1 unreadable .* 1 too short"):
        VideoTextDataset([spec(media["random_bytes"]), short[0]], cfg_of(fps=8, buckets=[(17, 48, 64)]))


# --- batches ---------------------------------------------------------------------------------------


BUCKETS = [(9, 48, 64)] * 23 + [(9, 64, 48)] * 10 + [(5, 48, 64)] * 7


def draw(sampler, n=None):
    out = []
    for batch in sampler:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def test_sampler_never_mixes_buckets_and_is_deterministic():
    s = BucketBatchSampler(BUCKETS, batch_size=4, seed=1)
    e0 = draw(s)
    assert s.epoch == 1 and s.consumed == 0  # a full pass moves to the next epoch
    e1 = draw(s)
    for batches in (e0, e1):
        assert all(len({BUCKETS[r.index] for r in b}) == 1 for b in batches)
        assert sorted(r.index for b in batches for r in b) == list(range(len(BUCKETS)))  # each sample once
        assert len(batches) == 6 + 3 + 2
    assert [r.epoch for r in e1[0]] == [1] * len(e1[0]) and [b[0].step for b in e1] == list(range(11))
    idx = lambda bs: [[r.index for r in b] for b in bs]  # noqa: E731
    assert idx(e0) != idx(e1)
    again = BucketBatchSampler(BUCKETS, batch_size=4, seed=1)
    assert idx(draw(again)) == idx(e0)
    again.set_epoch(1)
    assert idx(draw(again)) == idx(e1)
    assert idx(draw(BucketBatchSampler(BUCKETS, batch_size=4, seed=2))) != idx(e0)
    dl = BucketBatchSampler(BUCKETS, batch_size=4, seed=1, drop_last=True)
    assert all(len(b) == 4 for b in dl) and len(dl) == 5 + 2 + 1
    plain = BucketBatchSampler(BUCKETS, batch_size=4, shuffle=False)
    assert idx(draw(plain))[0] == [33, 34, 35, 36]  # buckets in sorted order, indices in order


def test_sampler_resumes_exactly():
    ref = BucketBatchSampler(BUCKETS, batch_size=3, seed=5)
    full = draw(ref) + draw(ref) + draw(ref)  # epochs 0, 1, 2
    per_epoch = len(full) // 3

    run = BucketBatchSampler(BUCKETS, batch_size=3, seed=5)
    seen = draw(run)  # epoch 0
    seen += draw(run, 4)  # part of epoch 1
    state = run.state_dict()
    assert state["epoch"] == 1 and state["batches_consumed"] == 4
    resumed = BucketBatchSampler(BUCKETS, batch_size=3, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(1)  # a training loop's set_epoch at the top of the resumed epoch keeps the position
    seen += draw(resumed) + draw(resumed)
    assert seen == full

    # with prefetching (a DataLoader's workers read ahead): the position after the batch the loop finished
    run = BucketBatchSampler(BUCKETS, batch_size=3, seed=5)
    it = iter(run)
    ahead = [next(it) for _ in range(per_epoch)]  # the loader has read the whole epoch
    finished = {"position": (ahead[2][0].epoch, ahead[2][0].step + 1)}  # the loop finished 3 batches
    state = run.state_dict(after=finished)
    assert (state["epoch"], state["batches_consumed"]) == (0, 3)
    end = run.state_dict(after={"position": (0, per_epoch)})
    assert (end["epoch"], end["batches_consumed"]) == (1, 0)
    resumed = BucketBatchSampler(BUCKETS, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert draw(resumed) == full[3:per_epoch]

    with pytest.raises(SamplerError, match="batch_size 3 then, 4 now"):
        BucketBatchSampler(BUCKETS, batch_size=4, seed=5).load_state_dict(state)
    with pytest.raises(SamplerError, match="40 samples then, 39 now"):
        BucketBatchSampler(BUCKETS[:-1], batch_size=3, seed=5).load_state_dict(state)


def test_sampler_replicas_split_an_epoch():
    parts = [draw(BucketBatchSampler(BUCKETS, batch_size=4, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 5  # 11 batches cut to 10
    got = {r.index for p in parts for b in p for r in b}
    assert len(got) == sum(len(b) for p in parts for b in p)  # no sample on both ranks


def test_dataloader_batches_and_position(media):
    specs = ([spec(media["multiscene"], 0.0, 3.0, source=f"m:{k}") for k in range(3)]
             + [spec(media["rotated"], 0.0, 3.0, source=f"r:{k}") for k in range(2)])
    cfg = cfg_of(buckets=[(3, 32, 48), (3, 48, 32)], fps=2)
    ds = VideoTextDataset(specs, cfg)
    sampler = BucketBatchSampler(ds, batch_size=2, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert sorted(b["video"].shape[0] for b in batches) == [1, 2, 2]  # 3 landscape clips, 2 portrait
    for b in batches:
        assert b["video"].shape[1:] == (3, *b["bucket"])
        assert len(b["caption"]) == len(b["source"]) == b["video"].shape[0]
        assert {s[0] for s in b["source"]} == ({"m"} if b["bucket"] == (3, 32, 48) else {"r"})
    assert [b["position"] for b in batches] == [(0, 1), (0, 2), (0, 3)]
    assert sampler.state_dict(after=batches[1])["batches_consumed"] == 2
    with pytest.raises(ValueError, match="mixes buckets"):
        collate([ds[0], ds[len(ds) - 1]])
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers get (readers stay behind)
    assert torch.equal(clone[0]["video"], ds[0]["video"])
    ds.close()


def test_sample_key(tmp_path, media):
    video = tmp_path / "v.mp4"
    video.write_bytes(media["static"].read_bytes())
    s = spec(video, 1.0, 3.0)
    c = cfg_of(fps=5)
    k = sample_key(s, 0, c)
    assert len(k) == 32 and k == sample_key(spec(video, 1.0, 3.0, caption="other"), 0, c)
    different = [
        sample_key(s, 9, c), sample_key(spec(video, 1.0, 4.0), 0, c), sample_key(s, 0, cfg_of(fps=4)),
        sample_key(s, 0, cfg_of(fps=5, resize="fit_pad")), sample_key(s, 0, c, bucket=(9, 48, 64)),
    ]
    assert len({k, *different}) == len(different) + 1
    os.utime(video, ns=(1, 1))
    assert sample_key(s, 0, c) != k


def test_unreadable_at_load_time_names_the_source(tmp_path, media):
    video = tmp_path / "v.mp4"
    video.write_bytes(media["static"].read_bytes())
    ds = VideoTextDataset([spec(video, source="x.jsonl:7")], cfg_of(reader_cache=0))
    assert ds[0]["video"].shape == (3, 9, 48, 64)
    video.write_bytes(b"")  # replaced after indexing
    with pytest.raises(DataError, match=r"x\.jsonl:7: .*v\.mp4: file is empty"):
        ds[0]
