"""Export caption records as a training dataset for text-to-video models.

Input: a run folder (``records/part-*.jsonl``), one JSONL shard, or one record JSON file. Output, in
a dataset folder ``DATASET``:

``captions.jsonl`` (format ``jsonl``)
    one line per clip: ``{"video": absolute path, "start": s|null, "end": e|null, "caption": text,
    "source": {...}}``; ``start``/``end`` are seconds of the source file (null for a whole video).
``metadata.csv`` / ``metadata.jsonl`` (formats ``metadata-csv`` / ``metadata-jsonl``)
    columns ``file_name``, ``caption``, ``start``, ``end``: the layout of the Hugging Face ``datasets``
    folder loaders, so ``load_dataset("videofolder", data_dir=DATASET)`` gives a ``video`` column
    (decoding it needs ``torchcodec``; the paths and captions load without it). ``videofolder``
    only accepts ``file_name`` relative to the folder and inside it, so the videos are linked
    (``videos="link"``, the default) or copied (``"copy"``) into ``DATASET/videos/``. It refuses a
    folder holding two metadata files, so only one of the two formats can be written at a time.
``prompts.txt`` + ``videos.txt`` (format ``prompts-txt``)
    one caption / one video path (relative to ``DATASET``) per line, same order, newlines in
    captions collapsed to spaces (the layout of CogVideoX-style fine-tuning scripts). These files
    carry no clip range: a clip of a longer video is listed with the whole file, and a warning says so.

Caption choice: the record's ``summary`` (default), its ``first`` frame caption, or ``resummary``: a
new caption of a range of each record written from its differential captions by a text model
(:mod:`captioner.resummary`); the range is ``[start, end]`` in record time when given (clipped to
each record's duration), else the whole record. Records with an empty caption are skipped and
counted, as are exact duplicates of a clip (same clip and config key, the later one wins).
A relative video path in a record is taken relative to the current folder (as when it was captioned).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from pydantic import ValidationError

from captioner.record import CaptionRecord
from densecap.errors import CaptionerError
from densecap.files import write_json_atomic
from densecap.paths import check_output_dir

FORMATS = ("jsonl", "metadata-csv", "metadata-jsonl", "prompts-txt")
CAPTION_KINDS = ("summary", "first", "resummary")
VIDEO_MODES = ("link", "copy", "none")
VIDEOS_SUBDIR = "videos"

CaptionKind = Literal["summary", "first", "resummary"]
VideoMode = Literal["link", "copy", "none"]

# (records with their ranges, their source names) -> one re-summary per item, in order
ResummaryFn = Callable[[Sequence[tuple[CaptionRecord, float, float]], Sequence[str]], Sequence[Any]]


@dataclass
class SourceRecord:
    record: CaptionRecord
    file: str  # the record file or shard it was read from
    line: int  # 1-based record number in that file


@dataclass
class ExportItem:
    video: str  # absolute path of the source video
    start: float | None
    end: float | None
    caption: str
    source: dict[str, Any]
    file_name: str | None = None  # path relative to the dataset folder (metadata / videos.txt)


@dataclass
class ExportResult:
    out_dir: Path
    records: int = 0
    exported: int = 0
    videos: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {
            "empty_caption": 0, "duplicate": 0, "out_of_range": 0, "no_diff_captions": 0, "missing_video": 0
        })
    clip_ranges_in_prompts_txt: int = 0
    files: list[Path] = field(default_factory=list)
    linked: int = 0
    copied: int = 0


def parse_formats(values: Iterable[str]) -> list[str]:
    """``["jsonl,metadata-csv", "prompts-txt"]`` -> the formats in canonical order, checked."""
    wanted: set[str] = set()
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if part not in FORMATS:
                raise CaptionerError(f"unknown export format {part!r}; choose from {', '.join(FORMATS)}")
            wanted.add(part)
    if not wanted:
        raise CaptionerError(f"no export format given; choose from {', '.join(FORMATS)}")
    if {"metadata-csv", "metadata-jsonl"} <= wanted:
        raise CaptionerError(
            "choose one of metadata-csv and metadata-jsonl: datasets' folder loaders refuse a folder with "
            "two metadata files (export twice, to two folders, if you need both)"
        )
    return [f for f in FORMATS if f in wanted]


def read_source_records(source: str | Path) -> list[SourceRecord]:
    """Every record of a run folder, JSONL shard or record JSON file, with where it came from."""
    from captioner.record import load_record
    from captioner.shards import RECORDS_DIR, record_files
    from densecap.jsonl import iter_jsonl

    path = Path(source)
    if path.is_file() and path.suffix != ".jsonl":
        return [SourceRecord(load_record(path), str(path), 1)]
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = record_files(path)
        if not files:
            raise CaptionerError(f"{path}: no records found (expected {RECORDS_DIR}/part-*.jsonl from `captioner run`)")
    else:
        raise CaptionerError(f"{path}: no such run folder or record file")
    out: list[SourceRecord] = []
    for f in files:
        for n, obj in enumerate(iter_jsonl(f), 1):
            try:
                out.append(SourceRecord(CaptionRecord.model_validate(obj), str(f), n))
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(p) for p in first["loc"])
                raise CaptionerError(f"{f}: record {n} is not a caption record ({key}: {first['msg']})") from None
    if not out:
        raise CaptionerError(f"{path}: holds no records")
    return out


def _dedupe(items: list[SourceRecord]) -> tuple[list[SourceRecord], int]:
    """Drop all but the last record of each (clip_key, config_key); records without a key are kept."""
    last: dict[tuple[str, str | None], int] = {}
    for i, s in enumerate(items):
        if s.record.clip_key:
            last[(s.record.clip_key, s.record.config_key)] = i
    keep = [
        s for i, s in enumerate(items)
        if not s.record.clip_key or last[(s.record.clip_key, s.record.config_key)] == i
    ]
    return keep, len(items) - len(keep)


def _video_path(record: CaptionRecord) -> str:
    return os.path.abspath(os.path.expanduser(record.video.path))


def _source_info(s: SourceRecord, kind: str, prompt_version: str) -> dict[str, Any]:
    r = s.record
    return {
        "record_file": os.path.abspath(s.file),
        "record": s.line,
        "clip_key": r.clip_key,
        "config_key": r.config_key,
        "mode": r.mode,
        "caption": kind,
        "prompt_version": prompt_version,
    }


def collapse(text: str) -> str:
    """One line: every run of whitespace (newlines included) becomes one space."""
    return " ".join(text.split())


def _dataset_names(videos: Sequence[str]) -> dict[str, str]:
    """A file name under ``videos/`` for each distinct video: its own name, or, when two different
    videos share a name, the name with a short hash of the full path."""
    by_name: dict[str, set[str]] = {}
    for v in videos:
        by_name.setdefault(Path(v).name, set()).add(v)
    out: dict[str, str] = {}
    for v in videos:
        p = Path(v)
        if len(by_name[p.name]) == 1:
            out[v] = p.name
        else:
            digest = hashlib.sha1(v.encode("utf-8")).hexdigest()[:8]
            out[v] = f"{p.stem}-{digest}{p.suffix}"
    return out


def _place_video(src: str, dst: Path, mode: VideoMode, result: ExportResult) -> None:
    """Put ``src`` at ``dst`` (a symlink, or a copy); an up-to-date existing entry is kept."""
    if dst.is_symlink():
        if os.readlink(dst) == src and mode == "link":
            return
        dst.unlink()
    elif dst.exists():
        same = mode == "copy" and dst.stat().st_size == os.stat(src).st_size and dst.stat().st_mtime >= os.stat(src).st_mtime
        if same:
            return
        if dst.is_dir():
            raise CaptionerError(f"{dst}: a folder is in the way of the video link")
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        try:
            os.symlink(src, dst)
            result.linked += 1
            return
        except OSError:  # pragma: no cover - file systems without symlinks: copy instead
            pass
    shutil.copy2(src, dst)
    result.copied += 1


def _relative_to(path: str, folder: Path) -> str | None:
    try:
        rel = Path(path).resolve().relative_to(folder.resolve())
    except ValueError:
        return None
    return rel.as_posix()


def _fmt_seconds(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _metadata_csv(items: Sequence[ExportItem]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file_name", "caption", "start", "end"])
    for it in items:
        writer.writerow([it.file_name, it.caption, _fmt_seconds(it.start), _fmt_seconds(it.end)])
    return buf.getvalue()


def _jsonl(rows: Iterator[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def export_dataset(
    source: str | Path,
    out_dir: str | Path,
    *,
    caption: CaptionKind = "summary",
    formats: Sequence[str] = ("jsonl",),
    videos: VideoMode | None = None,
    resummarize: ResummaryFn | None = None,
    resummary_version: str | None = None,
    start: float | None = None,
    end: float | None = None,
) -> ExportResult:
    """Export the records of ``source`` to ``out_dir``; see the module doc for the files.

    ``videos``: how metadata/prompts formats reach the videos; ``None`` = ``"link"`` when such a
    format is asked for (``"none"`` otherwise): ``"none"`` writes paths relative to ``out_dir`` when
    the video is inside it, else absolute paths (which ``videofolder`` refuses).
    ``resummarize``: needed for ``caption="resummary"`` (e.g. a :class:`captioner.resummary.Resummarizer`).
    """
    formats = parse_formats(formats)
    mode, needs_files = _check_options(caption, formats, videos, resummarize, start, end)
    out = check_output_dir(out_dir)

    records = read_source_records(source)
    result = ExportResult(out_dir=out, records=len(records))
    records, result.skipped["duplicate"] = _dedupe(records)
    if caption == "resummary":
        texts = _resummary_texts(records, resummarize, resummary_version, start, end, result)
    else:
        texts = _record_texts(records, caption)
    items = _export_items(texts, caption, result)
    items = _reach_videos(items, out, mode, needs_files, result)
    if not items:
        raise CaptionerError(
            f"{source}: nothing to export: all {result.records} records were skipped ({describe_skips(result)})"
        )
    result.exported = len(items)
    result.videos = len({it.video for it in items})
    _write_files(items, out, formats, result)
    return result


def _check_options(
    caption: str, formats: list[str], videos: VideoMode | None, resummarize: ResummaryFn | None,
    start: float | None, end: float | None,
) -> tuple[VideoMode, bool]:
    """The videos mode, and whether a format names video files; errors for options that do not go together."""
    if caption not in CAPTION_KINDS:
        raise CaptionerError(f"unknown caption choice {caption!r}; choose from {', '.join(CAPTION_KINDS)}")
    if caption != "resummary" and (start is not None or end is not None):
        raise CaptionerError("--start/--end choose the range to re-summarise: they need --caption resummary")
    if caption == "resummary" and resummarize is None:
        raise CaptionerError(
            "--caption resummary needs a text model to write the new captions: give a summarize config "
            "(--config tiny, --config default, or a YAML file like configs/summarize/default.yaml)"
        )
    needs_files = any(f != "jsonl" for f in formats)
    mode: VideoMode = videos or ("link" if needs_files else "none")
    if mode not in VIDEO_MODES:
        raise CaptionerError(f"unknown videos mode {mode!r}; choose from {', '.join(VIDEO_MODES)}")
    return mode, needs_files


# (record, caption text, start, end, prompt version) of each record to export, before the empty ones are skipped
_Text = tuple[SourceRecord, str, float | None, float | None, str]


def _record_texts(records: list[SourceRecord], caption: str) -> list[_Text]:
    """Each record's own caption: its summary, or its first frame caption."""
    texts: list[_Text] = []
    for s in records:
        r = s.record
        if caption == "summary":
            text = r.summary
        else:
            text = r.first_caption.text if r.first_caption is not None else ""
        clip = r.clip
        texts.append((s, text, None if clip is None else clip.start, None if clip is None else clip.end, r.prompt_version))
    return texts


def _resummary_texts(
    records: list[SourceRecord], resummarize: ResummaryFn, resummary_version: str | None,
    start: float | None, end: float | None, result: ExportResult,
) -> list[_Text]:
    """A new caption of ``[start, end]`` of each record (record time, clipped to its duration; the whole
    record when not given), written by ``resummarize``; records it cannot cover are counted as skipped."""
    todo: list[tuple[SourceRecord, float, float]] = []
    for s in records:
        r = s.record
        duration = float(r.video.duration)
        lo = 0.0 if start is None else float(start)
        hi = duration if end is None else min(float(end), duration)
        if r.first_caption is None:  # a grid-mode record: nothing to re-summarise from
            result.skipped["no_diff_captions"] += 1
            continue
        if lo >= hi:
            result.skipped["out_of_range"] += 1
            continue
        todo.append((s, lo, hi))
    done = list(resummarize([(s.record, lo, hi) for s, lo, hi in todo], [f"{s.file}:{s.line}" for s, _, _ in todo])) if todo else []
    texts: list[_Text] = []
    for (s, lo, hi), summary in zip(todo, done):
        clip = s.record.clip
        if start is None and end is None:  # the record's whole range
            span = (None, None) if clip is None else (clip.start, clip.end)
        else:
            offset = clip.start if clip is not None else 0.0
            span = (offset + lo, offset + hi)
        version = getattr(summary, "prompt_version", None) or resummary_version or "resummary"
        text = getattr(summary, "summary", summary)
        texts.append((s, str(text), span[0], span[1], version))
    return texts


def _export_items(texts: list[_Text], caption: str, result: ExportResult) -> list[ExportItem]:
    """One item per non-empty caption (empty ones are counted as skipped)."""
    items: list[ExportItem] = []
    for s, text, lo, hi, version in texts:
        text = text.strip()
        if not text:
            result.skipped["empty_caption"] += 1
            continue
        items.append(
            ExportItem(
                video=_video_path(s.record),
                start=None if lo is None else round(lo, 6),
                end=None if hi is None else round(hi, 6),
                caption=text,
                source=_source_info(s, caption, version),
            )
        )
    return items


def _reach_videos(
    items: list[ExportItem], out: Path, mode: VideoMode, needs_files: bool, result: ExportResult
) -> list[ExportItem]:
    """Give each item its ``file_name`` when a format needs one: the video linked or copied under
    ``videos/`` (items whose video is missing are dropped), or its path relative to ``out`` (``"none"``)."""
    if needs_files and mode != "none":
        present = [it for it in items if os.path.isfile(it.video)]
        result.skipped["missing_video"] = len(items) - len(present)
        items = present
        names = _dataset_names(sorted({it.video for it in items}))
        for video, name in names.items():
            _place_video(video, out / VIDEOS_SUBDIR / name, mode, result)
        for it in items:
            it.file_name = f"{VIDEOS_SUBDIR}/{names[it.video]}"
    elif needs_files:
        for it in items:
            it.file_name = _relative_to(it.video, out) or it.video
    return items


def _write_files(items: list[ExportItem], out: Path, formats: list[str], result: ExportResult) -> None:
    """Write the dataset files of ``formats`` (atomically), recording them in ``result``."""
    out.mkdir(parents=True, exist_ok=True)
    if "jsonl" in formats:
        rows = ({"video": it.video, "start": it.start, "end": it.end, "caption": it.caption, "source": it.source} for it in items)
        result.files.append(_write(out / "captions.jsonl", _jsonl(rows)))
    if "metadata-csv" in formats:
        result.files.append(_write(out / "metadata.csv", _metadata_csv(items)))
    if "metadata-jsonl" in formats:
        rows = ({"file_name": it.file_name, "caption": it.caption, "start": it.start, "end": it.end} for it in items)
        result.files.append(_write(out / "metadata.jsonl", _jsonl(rows)))
    if "prompts-txt" in formats:
        result.files.append(_write(out / "prompts.txt", "".join(collapse(it.caption) + "\n" for it in items)))
        result.files.append(_write(out / "videos.txt", "".join(f"{it.file_name}\n" for it in items)))
        result.clip_ranges_in_prompts_txt = sum(1 for it in items if it.start is not None or it.end is not None)


def _write(path: Path, text: str) -> Path:
    """Write atomically, with the permissions a plain ``open()`` would give (write_json_atomic sets them)."""
    return write_json_atomic(path, text)


def describe_skips(result: ExportResult) -> str:
    parts = [f"{n} {why.replace('_', ' ')}" for why, n in result.skipped.items() if n]
    return ", ".join(parts) if parts else "none"


def stale_metadata(result: ExportResult) -> list[Path]:
    """Metadata files in the dataset folder that this export did not write (an earlier export's):
    datasets' folder loaders refuse a folder with two of them."""
    written = {p.name for p in result.files}
    return [
        result.out_dir / name
        for name in ("metadata.csv", "metadata.jsonl", "metadata.parquet")
        if (result.out_dir / name).exists() and name not in written
    ]
