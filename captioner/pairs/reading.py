"""The dense captions to pair (:func:`read_captions`), each with a stable id, read from a run folder,
a record file or shard, an export's ``captions.jsonl`` / ``metadata.jsonl`` / ``metadata.csv``, or a
dataset folder; and :func:`iter_numbered`, the line-numbered JSONL reader of the pairs files."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densecap.errors import CaptionerError
from densecap.values import seconds

log = logging.getLogger(__name__)

__all__ = ["DATASET_FILES", "CaptionInput", "CaptionItem", "item_id", "iter_numbered", "read_captions"]


@dataclass(frozen=True)
class CaptionItem:
    """One dense caption to pair: its id, text, where its video is, and where it was read."""

    id: str
    caption: str
    source: dict[str, Any] | None = field(default=None, hash=False)  # {"video", "start", "end"} or None
    where: str = ""  # "file:line", for messages


@dataclass
class CaptionInput:
    items: list[CaptionItem]
    read: int = 0  # captions read, empty ones and duplicates included
    empty: int = 0
    duplicates: int = 0


def item_id(caption: str, video: str | None = None, start: float | None = None, end: float | None = None) -> str:
    """Stable id of a caption of a clip: a hash of video path, range and text (text alone without a video)."""
    key = json.dumps([video, start, end, caption.strip()], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def _seconds(value: Any, where: str, name: str) -> float | None:
    """A clip bound in seconds, rounded to the microsecond (ids hash it)."""
    number = seconds(value, where, name)
    return None if number is None else round(number, 6)


def _make_source(video: str | None, start: float | None, end: float | None) -> dict[str, Any] | None:
    if video is None and start is None and end is None:
        return None
    return {"video": video, "start": start, "end": end}


class _Collector:
    def __init__(self) -> None:
        self.out = CaptionInput(items=[])
        self._seen: set[str] = set()

    def add(self, caption: Any, where: str, video: str | None = None, start: float | None = None, end: float | None = None) -> None:
        self.out.read += 1
        if caption is None:
            caption = ""
        if not isinstance(caption, str):
            raise CaptionerError(f"{where}: caption must be a string (got {type(caption).__name__})")
        text = caption.strip()
        if not text:
            self.out.empty += 1
            return
        key = item_id(text, video, start, end)
        if key in self._seen:
            self.out.duplicates += 1
            return
        self._seen.add(key)
        self.out.items.append(CaptionItem(key, text, _make_source(video, start, end), where))


def _video_near(value: Any, folder: Path, where: str) -> str | None:
    """A video path of a dataset file, absolute (relative ones are relative to the file's folder)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CaptionerError(f"{where}: video path must be a string (got {type(value).__name__})")
    path = Path(value).expanduser()
    return os.path.abspath(path if path.is_absolute() else folder / path)


def iter_numbered(path: Path, *, read_unterminated: bool) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` of each non-blank JSONL line; errors name the file and the line.

    An unfinished last line (no newline) is read when ``read_unterminated`` and it is valid JSON (a
    hand-written file); otherwise it is skipped (a writer at work, or one that was killed).
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise CaptionerError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CaptionerError(f"{path}: is a folder, not a JSONL file") from None
    with fh:
        for n, raw in enumerate(fh, 1):
            torn = not raw.endswith(b"\n")
            if torn and not read_unterminated:
                return
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                if torn:
                    return
                raise CaptionerError(f"{path}:{n}: not UTF-8 text") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                if torn:
                    log.warning("%s:%d: skipped an unfinished last line", path, n)
                    return
                raise CaptionerError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            yield n, obj


def _looks_like_record(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("video"), dict) and "summary" in obj and "keyframes" in obj


def _from_records(path: Path, col: _Collector) -> None:
    from captioner.export import read_source_records

    for s in read_source_records(path):
        r = s.record
        video = os.path.abspath(os.path.expanduser(r.video.path))
        start = None if r.clip is None else round(float(r.clip.start), 6)
        end = None if r.clip is None else round(float(r.clip.end), 6)
        col.add(r.summary, f"{s.file}:{s.line}", video, start, end)


def _from_jsonl(path: Path, col: _Collector) -> None:
    lines = iter_numbered(path, read_unterminated=True)
    first = next(lines, None)
    lines.close()
    if first is not None and _looks_like_record(first[1]):
        _from_records(path, col)
        return
    for n, obj in iter_numbered(path, read_unterminated=True):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise CaptionerError(f"{where}: expected a JSON object with a 'caption' key, got {type(obj).__name__}")
        if "caption" not in obj:
            raise CaptionerError(
                f"{where}: no 'caption' key (keys: {', '.join(sorted(obj)) or 'none'}); expected a caption record "
                "or a row of an export's captions.jsonl / metadata.jsonl"
            )
        video = _video_near(obj.get("video") or obj.get("file_name"), path.parent, where)
        col.add(obj["caption"], where, video, _seconds(obj.get("start"), where, "start"), _seconds(obj.get("end"), where, "end"))


def _from_csv(path: Path, col: _Collector) -> None:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            if "caption" not in columns:
                raise CaptionerError(f"{path}: no 'caption' column (columns: {', '.join(columns) or 'none'})")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                video = _video_near(row.get("file_name") or row.get("video"), path.parent, where)
                col.add(
                    row.get("caption"), where, video,
                    _seconds(row.get("start"), where, "start"), _seconds(row.get("end"), where, "end"),
                )
    except UnicodeDecodeError:
        raise CaptionerError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise CaptionerError(f"{path}: not a valid CSV file ({exc})") from None


DATASET_FILES = ("captions.jsonl", "metadata.jsonl", "metadata.csv")


def read_captions(source: str | Path) -> CaptionInput:
    """The dense captions of a run folder, record file or shard, export file or dataset folder."""
    from captioner.shards import RECORDS_DIR, record_files

    path = Path(source)
    col = _Collector()
    if path.is_dir():
        if record_files(path):
            _from_records(path, col)
        else:
            found = next((path / name for name in DATASET_FILES if (path / name).is_file()), None)
            if found is None:
                raise CaptionerError(
                    f"{path}: neither a `captioner run` folder ({RECORDS_DIR}/part-*.jsonl) nor a dataset folder "
                    f"({', '.join(DATASET_FILES)})"
                )
            return read_captions(found)
    elif not path.exists():
        raise CaptionerError(f"{path}: no such file or folder")
    else:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            _from_csv(path, col)
        elif suffix == ".jsonl":
            _from_jsonl(path, col)
        elif suffix == ".json":
            _from_records(path, col)
        else:
            raise CaptionerError(
                f"{path}: unknown caption file type {suffix or '(none)'}; expected a run folder, a record .json, "
                "a .jsonl shard or captions.jsonl / metadata.jsonl, or metadata.csv"
            )
    if col.out.read == 0:
        raise CaptionerError(f"{path}: holds no captions")
    return col.out
