"""Corpus input: a folder of videos, or a CSV/JSONL manifest of clips.

A manifest needs a path column (``path``, ``video``, ``video_path``, ``file_name`` or ``filepath``)
and may have a short caption (``caption``, ``short_caption``, ``text``, ``prompt`` or ``title``) and a
clip range in seconds (``start``/``end``), so one long video can yield several clips. Relative paths
are taken relative to the manifest's folder (not the working directory), and every clip's path is
absolute, so records name the same file wherever they are read from. A manifest is UTF-8 text, with or
without a byte-order mark (Excel's "CSV UTF-8" writes one). Problems name the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from densecap.errors import CaptionerError
from densecap.files import read_utf8 as _read_utf8
from densecap.jsonl import json_objects
from densecap.values import seconds

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".3gp"}
PATH_KEYS = ("path", "video", "video_path", "file_name", "filepath")
CAPTION_KEYS = ("caption", "short_caption", "text", "prompt", "title")
START_KEYS = ("start", "start_s", "clip_start")
END_KEYS = ("end", "end_s", "clip_end")


class ManifestError(CaptionerError):
    """A manifest cannot be read; the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class Clip:
    """One unit of work: a video file, optionally a ``[start, end)`` range of it, and its short caption."""

    path: str
    start: float | None = None
    end: float | None = None
    caption: str | None = None
    source: str = ""  # where it came from: "manifest.csv:12" or the input folder
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def clip_id(self) -> str:
        """Human-readable id: the path, plus the range when there is one."""
        if self.start is None and self.end is None:
            return self.path
        return f"{self.path}#{_fmt(self.start)}-{_fmt(self.end)}"

    def key(self) -> str:
        """Identity of the clip's content: path, range, and the file's size and modification time.

        A file that changes on disk gets a new key, so a resumed run captions it again instead of
        keeping a caption of the old content. A missing file keys on its path and range alone.
        """
        try:
            st = os.stat(self.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        text = f"{os.path.abspath(self.path)}|{_fmt(self.start)}|{_fmt(self.end)}|{stamp}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.start is not None:
            out["start"] = self.start
        if self.end is not None:
            out["end"] = self.end
        if self.caption is not None:
            out["caption"] = self.caption
        out.update(self.extra)
        return out


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _pick(row: dict[str, Any], keys: Iterable[str]) -> Any:
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    return None


def _seconds(value: Any, where: str, name: str) -> float | None:
    return seconds(value, where, name, ManifestError)


def _clip_from_row(row: dict[str, Any], base: Path, where: str) -> Clip:
    raw_path = _pick(row, PATH_KEYS)
    if raw_path is None:
        raise ManifestError(f"{where}: no video path (expected one of the columns {', '.join(PATH_KEYS)})")
    path = Path(str(raw_path)).expanduser()
    if not path.is_absolute():
        path = base / path
    start = _seconds(_pick(row, START_KEYS), where, "start")
    end = _seconds(_pick(row, END_KEYS), where, "end")
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: clip end {end:g}s is not after start {start:g}s")
    caption = _pick(row, CAPTION_KEYS)
    used = {*PATH_KEYS, *CAPTION_KEYS, *START_KEYS, *END_KEYS}
    extra = {k: v for k, v in row.items() if k not in used and v not in (None, "")}
    return Clip(str(path), start, end, None if caption is None else str(caption), where, extra)


def read_utf8(path: str | Path, error: type[CaptionerError] = ManifestError) -> str:
    """:func:`densecap.files.read_utf8`, raising a :class:`ManifestError` by default."""
    return _read_utf8(path, error)


def read_manifest(path: str | Path) -> list[Clip]:
    """Clips of a CSV (header row) or JSONL (one object a line) manifest."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.resolve().parent
    suffix = path.suffix.lower()
    clips: list[Clip] = []
    if suffix in (".jsonl", ".ndjson"):
        for where, row in json_objects(read_utf8(path), path, ManifestError):
            clips.append(_clip_from_row(row, base, where))
    elif suffix in (".csv", ".tsv"):
        with io.StringIO(read_utf8(path), newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames or not set(reader.fieldnames) & set(PATH_KEYS):
                raise ManifestError(
                    f"{path}: header has no video path column (expected one of {', '.join(PATH_KEYS)}; "
                    f"found {', '.join(reader.fieldnames or []) or 'nothing'})"
                )
            try:
                for n, row in enumerate(reader, 2):
                    clips.append(_clip_from_row(row, base, f"{path}:{n}"))
            except csv.Error as exc:
                raise ManifestError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    else:
        raise ManifestError(f"{path}: unknown manifest type {suffix!r} (use .csv, .tsv or .jsonl)")
    if not clips:
        raise ManifestError(f"{path}: manifest holds no clips")
    return clips


def find_videos(folder: str | Path) -> list[Clip]:
    """Every video file under ``folder`` (recursive, sorted), one clip each."""
    folder = Path(os.path.abspath(folder))  # records name files by absolute path (same key as before)
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )
    if not files:
        raise ManifestError(f"{folder}: no video files found (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    return [Clip(str(p), source=str(folder)) for p in files]


def read_input(source: str | Path) -> list[Clip]:
    """A folder (searched recursively) or a manifest file."""
    source = Path(source)
    if source.is_dir():
        return find_videos(source)
    if source.is_file():
        return read_manifest(source)
    raise ManifestError(f"{source}: no such file or folder")


def write_manifest(clips: Iterable[Clip], path: str | Path) -> Path:
    """Write clips as JSONL (the format :func:`read_manifest` reads back)."""
    from densecap.files import write_json_atomic

    text = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in clips)
    return write_json_atomic(path, text)
