"""Export for training: every format written and read back (metadata through the `datasets` library)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.errors import CaptionerError
from captioner.export import export_dataset, parse_formats
from captioner.record import ClipRange, load_record
from captioner.shards import JsonlAppender

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def base(samples_dir):
    return load_record(samples_dir / "cockatoo.diffsw.json")


def _rec(base, video: Path, *, clip=None, summary="a caption", first="first frame", key=None, mode="diffsw"):
    duration = base.video.duration if clip is None else clip[1] - clip[0]  # record times are the clip's
    update = {
        "video": base.video.model_copy(update={"path": str(video), "duration": duration}),
        "clip": None if clip is None else ClipRange(start=clip[0], end=clip[1]),
        "summary": summary,
        "clip_key": key,
        "config_key": "cfg1",
    }
    if mode == "grid":
        update.update(mode="grid", first_caption=None, diff_captions=[])
    else:
        update["first_caption"] = base.first_caption.model_copy(update={"text": first})
    return base.model_copy(update=update)


@pytest.fixture
def run_dir(tmp_path, samples_dir, base):
    """A run folder written by hand: two shards, clips of cockatoo, a whole realshort, one empty
    summary, one grid-mode record, and a re-captioned clip (a duplicate key: the later one wins)."""
    cockatoo, realshort = samples_dir / "cockatoo.mp4", samples_dir / "realshort.mp4"
    folder = tmp_path / "run"
    with JsonlAppender(folder / "records" / "part-00000.jsonl") as app:
        app.append(_rec(base, cockatoo, clip=(0.0, 6.0), summary="A cockatoo\nlooks at the camera.", key="c0").model_dump(mode="json"))
        app.append(_rec(base, cockatoo, clip=(6.0, 14.0), summary="old caption", key="c1").model_dump(mode="json"))
        app.append(_rec(base, realshort, summary="  ", first="short first", key="r").model_dump(mode="json"))
    with JsonlAppender(folder / "records" / "part-00001.jsonl") as app:
        app.append(_rec(base, cockatoo, clip=(6.0, 14.0), summary="It flies off, then returns.", key="c1").model_dump(mode="json"))
        app.append(_rec(base, realshort, summary="A short grid caption.", key="g", mode="grid").model_dump(mode="json"))
    return folder


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _load_folder(out: Path, tmp_path: Path):
    ds = datasets.load_dataset("videofolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"), split="train")
    assert "video" in ds.features and "file_name" not in ds.features
    # decoding needs torchcodec; the stored paths and captions do not
    return ds.cast_column("video", datasets.Video(decode=False))


def test_captions_jsonl(run_dir, tmp_path, samples_dir):
    out = tmp_path / "ds"
    result = export_dataset(run_dir, out)
    assert [p.name for p in result.files] == ["captions.jsonl"]
    assert not (out / "videos").exists()  # jsonl names the videos by absolute path
    rows = [json.loads(line) for line in _lines(out / "captions.jsonl")]
    assert [r["caption"] for r in rows] == [
        "A cockatoo\nlooks at the camera.", "It flies off, then returns.", "A short grid caption."
    ]
    cockatoo = str((samples_dir / "cockatoo.mp4").resolve())
    assert [(r["video"], r["start"], r["end"]) for r in rows] == [
        (cockatoo, 0.0, 6.0), (cockatoo, 6.0, 14.0), (str((samples_dir / "realshort.mp4").resolve()), None, None)
    ]
    assert all(os.path.isabs(r["video"]) for r in rows)
    src = rows[1]["source"]
    assert src["clip_key"] == "c1" and src["config_key"] == "cfg1" and src["caption"] == "summary"
    assert src["record_file"].endswith("part-00001.jsonl") and src["record"] == 1
    assert rows[2]["source"]["mode"] == "grid"
    assert result.records == 5 and result.exported == 3 and result.videos == 2
    assert result.skipped["empty_caption"] == 1 and result.skipped["duplicate"] == 1


@pytest.mark.parametrize("fmt", ["metadata-csv", "metadata-jsonl"])
def test_metadata_loads_with_datasets_videofolder(run_dir, tmp_path, samples_dir, fmt):
    out = tmp_path / "ds"
    result = export_dataset(run_dir, out, formats=[fmt])
    name = "metadata.csv" if fmt == "metadata-csv" else "metadata.jsonl"
    assert [p.name for p in result.files] == [name]
    links = sorted((out / "videos").iterdir())
    assert [p.name for p in links] == ["cockatoo.mp4", "realshort.mp4"]
    assert all(p.is_symlink() and p.resolve() == (samples_dir / p.name).resolve() for p in links)
    assert result.linked == 2

    ds = _load_folder(out, tmp_path)
    assert ds.num_rows == 3
    assert ds["caption"] == ["A cockatoo\nlooks at the camera.", "It flies off, then returns.", "A short grid caption."]
    assert [Path(v["path"]).name for v in ds["video"]] == ["cockatoo.mp4", "cockatoo.mp4", "realshort.mp4"]
    assert all(Path(v["path"]).resolve().is_file() for v in ds["video"])
    assert ds["start"] == [0.0, 6.0, None] and ds["end"] == [6.0, 14.0, None]

    # the csv/json loaders read the same table
    loader = "csv" if fmt == "metadata-csv" else "json"
    flat = datasets.load_dataset(loader, data_files=str(out / name), cache_dir=str(tmp_path / "hf-cache2"), split="train")
    assert flat["file_name"] == ["videos/cockatoo.mp4", "videos/cockatoo.mp4", "videos/realshort.mp4"]
    assert flat["caption"] == ds["caption"]


def test_prompts_and_videos_txt_are_aligned(run_dir, tmp_path):
    out = tmp_path / "ds"
    result = export_dataset(run_dir, out, formats=["jsonl,prompts-txt"])
    assert [p.name for p in result.files] == ["captions.jsonl", "prompts.txt", "videos.txt"]
    prompts, videos = _lines(out / "prompts.txt"), _lines(out / "videos.txt")
    rows = [json.loads(line) for line in _lines(out / "captions.jsonl")]
    assert len(prompts) == len(videos) == len(rows) == 3
    assert prompts[0] == "A cockatoo looks at the camera."  # newline collapsed
    for prompt, video, row in zip(prompts, videos, rows):
        assert prompt == " ".join(row["caption"].split())
        assert (out / video).resolve() == Path(row["video"]).resolve()
    assert result.clip_ranges_in_prompts_txt == 2


def test_first_frame_captions_skip_records_without_one(run_dir, tmp_path):
    out = tmp_path / "ds"
    result = export_dataset(run_dir, out, caption="first", formats=["metadata-jsonl"])
    rows = [json.loads(line) for line in _lines(out / "metadata.jsonl")]
    assert [r["caption"] for r in rows] == ["first frame", "short first", "first frame"]
    assert [r["file_name"] for r in rows] == ["videos/cockatoo.mp4", "videos/realshort.mp4", "videos/cockatoo.mp4"]
    assert result.skipped["empty_caption"] == 1  # the grid-mode record has no first-frame caption


def test_resummary_captions(run_dir, tmp_path):
    calls = []

    def fake(items, names):
        calls.append((items, names))
        return [f"re {r.clip_key} {s:g}-{e:g}" for r, s, e in items]

    out = tmp_path / "ds"
    result = export_dataset(run_dir, out, caption="resummary", resummarize=fake, start=1.0, end=7.0)
    assert len(calls) == 1  # one batched call
    rows = [json.loads(line) for line in _lines(out / "captions.jsonl")]
    # c0 is 6 s long (range clipped to 1..6), c1 (from 6 s) 8 s long, r a whole 14 s video;
    # the grid record has no differential captions to re-summarise.
    assert [r["caption"] for r in rows] == ["re c0 1-6", "re r 1-7", "re c1 1-7"]
    assert [(r["start"], r["end"]) for r in rows] == [(1.0, 6.0), (1.0, 7.0), (7.0, 13.0)]
    assert rows[0]["source"]["caption"] == "resummary"
    assert result.skipped["no_diff_captions"] == 1

    with pytest.raises(CaptionerError, match="needs a text model"):
        export_dataset(run_dir, out, caption="resummary")
    with pytest.raises(CaptionerError, match="--caption resummary"):
        export_dataset(run_dir, out, start=1.0)


def test_copy_mode_and_name_clashes(tmp_path, samples_dir, base):
    a, b = tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"
    for p, src in ((a, "cockatoo.mp4"), (b, "realshort.mp4")):
        p.parent.mkdir()
        shutil.copy(samples_dir / src, p)
    record_file = tmp_path / "rec.jsonl"
    with JsonlAppender(record_file) as app:
        app.append(_rec(base, a, summary="from a").model_dump(mode="json"))
        app.append(_rec(base, b, summary="from b").model_dump(mode="json"))
        app.append(_rec(base, tmp_path / "gone.mp4", summary="missing").model_dump(mode="json"))
    out = tmp_path / "ds"
    result = export_dataset(record_file, out, formats=["metadata-csv"], videos="copy")
    assert result.copied == 2 and result.skipped["missing_video"] == 1
    with (out / "metadata.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [r["file_name"] for r in rows]
    assert len(set(names)) == 2 and all(n.startswith("videos/clip-") and n.endswith(".mp4") for n in names)
    for row, src in zip(rows, (a, b)):
        copied = out / row["file_name"]
        assert not copied.is_symlink() and copied.read_bytes() == src.read_bytes()
    # exporting again keeps the copies
    again = export_dataset(record_file, out, formats=["metadata-csv"], videos="copy")
    assert again.copied == 0 and again.exported == 2


def test_single_record_file(samples_dir, tmp_path):
    out = tmp_path / "ds"
    result = export_dataset(samples_dir / "cockatoo.diffsw.json", out, formats=["jsonl", "metadata-jsonl"])
    assert result.exported == 1
    ds = _load_folder(out, tmp_path)
    assert ds.num_rows == 1 and ds["start"] == [None]


def test_errors(tmp_path, run_dir):
    with pytest.raises(CaptionerError, match="no such run folder"):
        export_dataset(tmp_path / "missing", tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerError, match="no records found"):
        export_dataset(tmp_path / "empty", tmp_path / "ds")
    (tmp_path / "blank" / "records").mkdir(parents=True)
    (tmp_path / "blank" / "records" / "part-00000.jsonl").write_text("")
    with pytest.raises(CaptionerError, match="holds no records"):
        export_dataset(tmp_path / "blank", tmp_path / "ds")
    with pytest.raises(CaptionerError, match="choose one of metadata-csv and metadata-jsonl"):
        parse_formats(["metadata-csv,metadata-jsonl"])
    with pytest.raises(CaptionerError, match="unknown export format 'parquet'"):
        parse_formats(["jsonl,parquet"])
    bad = tmp_path / "bad" / "records" / "part-00000.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"summary": "x"}\n')
    with pytest.raises(CaptionerError, match="part-00000.jsonl: record 1 is not a caption record"):
        export_dataset(tmp_path / "bad", tmp_path / "ds")
    empty_only = tmp_path / "empty_only.jsonl"
    with JsonlAppender(empty_only) as app:
        app.append(load_record(Path(__file__).parent.parent / "samples" / "cockatoo.diffsw.json").model_copy(update={"summary": ""}).model_dump(mode="json"))
    with pytest.raises(CaptionerError, match="nothing to export.*1 empty caption"):
        export_dataset(empty_only, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_cli(run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ds"
    result = runner.invoke(cli, ["export", str(run_dir), "--out", str(out), "--format", "jsonl,metadata-jsonl", "--format", "prompts-txt"])
    assert result.exit_code == 0, result.output
    assert "exported 3 clips of 2 videos from 5 records" in result.output
    assert "1 empty caption" in result.output and "1 duplicate" in result.output
    assert "videos.txt names whole files" in result.output  # the clip-range warning
    assert {p.name for p in out.iterdir()} == {"captions.jsonl", "metadata.jsonl", "prompts.txt", "videos.txt", "videos"}

    result = runner.invoke(cli, ["export", str(run_dir), "--out", str(out), "--format", "metadata-csv"])
    assert result.exit_code == 0 and "metadata.jsonl is from an earlier export" in result.output

    for args, message in [
        (["--caption", "resummary"], "needs a text model"),
        (["--start", "2"], "need --caption resummary"),
        (["--config", "tiny"], "need --caption resummary"),
        (["--format", "csv"], "unknown export format 'csv'"),
    ]:
        result = runner.invoke(cli, ["export", str(run_dir), "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
    result = runner.invoke(cli, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no such run folder" in result.output


def test_cli_resummary_with_tiny_model(run_dir, tiny_models, tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        cli, ["export", str(run_dir), "--out", str(out), "--caption", "resummary", "--config", "tiny", "--set", "max_new_tokens=8"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in _lines(out / "captions.jsonl")]
    assert len(rows) == 3 and all(r["caption"].strip() for r in rows)
    assert [(r["start"], r["end"]) for r in rows] == [(0.0, 6.0), (None, None), (6.0, 14.0)]
    assert all(r["source"]["prompt_version"] == "resummary-v1" for r in rows)
