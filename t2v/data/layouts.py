"""The input layouts of a video-text training set: find and read an exported caption dataset
(``captions.jsonl``, ``metadata.csv`` / ``metadata.jsonl``, ``prompts.txt`` + ``videos.txt``) into
:class:`SampleSpec` rows, naming the file and line of anything malformed. See :mod:`t2v.data`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densecap.errors import CaptionerError
from densecap.files import read_utf8
from densecap.jsonl import json_objects
from densecap.values import seconds

LAYOUT_FILES = ("captions.jsonl", "metadata.csv", "metadata.jsonl", "prompts.txt + videos.txt")


class DataError(CaptionerError):
    """A dataset file is missing or malformed, or no usable clip is left. The message names the
    file (and line) or the cause."""



@dataclass(frozen=True)
class SampleSpec:
    """One captioned clip as listed in the dataset files."""

    video: str  # absolute path
    start: float | None  # seconds of the source file; None: from the start
    end: float | None  # None: to the end
    caption: str
    source: str  # "file:line" where it is listed


def read_samples(path: str | os.PathLike, check_videos: bool = True) -> list[SampleSpec]:
    """Every clip of a dataset: a ``captions.jsonl`` (or ``metadata.csv`` / ``metadata.jsonl`` /
    ``prompts.txt``) file, or a folder holding one of the layouts (see the module doc).

    ``check_videos``: raise when a listed video file does not exist (naming ``file:line``).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such dataset file or folder")
    if p.is_file():
        if p.name in ("prompts.txt", "videos.txt"):
            specs = _read_prompts(p.parent)
        elif p.suffix == ".jsonl":
            specs = _read_jsonl(p)
        elif p.suffix == ".csv":
            specs = _read_csv(p)
        else:
            raise DataError(f"{p}: not a dataset file I can read; expected one of {', '.join(LAYOUT_FILES)} "
                            "or a folder holding one")
    else:
        specs = _read_folder(p)
    if not specs:
        raise DataError(f"{p}: lists no clips")
    if check_videos:
        missing = [s for s in specs if not os.path.isfile(s.video)]
        if missing:
            first = missing[0]
            more = f" ({len(missing) - 1} more videos are missing)" if len(missing) > 1 else ""
            raise DataError(f"{first.source}: video file not found: {first.video}{more}")
    return specs


def _read_folder(folder: Path) -> list[SampleSpec]:
    if (folder / "captions.jsonl").is_file():
        return _read_jsonl(folder / "captions.jsonl")
    meta = [folder / n for n in ("metadata.csv", "metadata.jsonl") if (folder / n).is_file()]
    if len(meta) > 1:
        raise DataError(f"{folder}: holds both metadata.csv and metadata.jsonl; remove the stale one "
                        "(or point at the file to use)")
    if meta:
        return _read_csv(meta[0]) if meta[0].suffix == ".csv" else _read_jsonl(meta[0])
    prompts, videos = folder / "prompts.txt", folder / "videos.txt"
    if prompts.is_file() or videos.is_file():
        return _read_prompts(folder)
    raise DataError(f"{folder}: no dataset found; looked for {', '.join(LAYOUT_FILES)}")


def _resolve(folder: Path, value: str) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(folder), os.path.expanduser(value)))


def _as_time(value: Any, where: str, key: str) -> float | None:
    return seconds(value, where, key, DataError)


def _make_spec(folder: Path, row: dict[str, Any], where: str, columns_hint: str) -> SampleSpec:
    video = row.get("video", row.get("file_name"))
    if video is None:
        raise DataError(f"{where}: missing column 'video' (or 'file_name'); {columns_hint}")
    if not isinstance(video, str) or not video.strip():
        raise DataError(f"{where}: empty video path")
    if "caption" not in row:
        raise DataError(f"{where}: missing column 'caption'; {columns_hint}")
    caption = row["caption"]
    if caption is None:
        caption = ""
    if not isinstance(caption, str):
        raise DataError(f"{where}: caption must be text, got {type(caption).__name__}")
    caption = caption.strip()
    if not caption:
        raise DataError(f"{where}: empty caption")
    start = _as_time(row.get("start"), where, "start")
    end = _as_time(row.get("end"), where, "end")
    if end is not None and end <= (start or 0.0):
        raise DataError(f"{where}: clip range {start or 0.0:g}..{end:g} s is empty (end must be after start)")
    return SampleSpec(video=_resolve(folder, video.strip()), start=start, end=end, caption=caption, source=where)


def _read_jsonl(path: Path) -> list[SampleSpec]:
    out: list[SampleSpec] = []
    hint = "each line needs 'video' (or 'file_name') and 'caption', optionally 'start'/'end'"
    try:
        text = read_utf8(path, DataError)  # a BOM is dropped; another encoding names the line and byte
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    for where, row in json_objects(text, path, DataError):
        out.append(_make_spec(path.parent, row, where, hint))
    return out


def _read_csv(path: Path) -> list[SampleSpec]:
    out: list[SampleSpec] = []
    try:
        fh = io.StringIO(read_utf8(path, DataError), newline="")  # Excel's "CSV UTF-8" starts with a BOM
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    with fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames
            if not header:
                raise DataError(f"{path}:1: no header row (expected columns file_name, caption[, start, end])")
            hint = f"the header has {', '.join(header)}"
            for name in ("caption",):
                if name not in header:
                    raise DataError(f"{path}:1: missing column '{name}'; {hint}")
            if "file_name" not in header and "video" not in header:
                raise DataError(f"{path}:1: missing column 'file_name'; {hint}")
            line = reader.line_num + 1
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{line}: more fields than the header's {len(header)} columns")
                if any(v is None for v in row.values()):
                    raise DataError(f"{path}:{line}: fewer fields than the header's {len(header)} columns")
                out.append(_make_spec(path.parent, row, f"{path}:{line}", hint))
                line = reader.line_num + 1
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    return out


def _text_lines(path: Path) -> list[str]:
    try:
        lines = read_utf8(path, DataError).splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    while lines and not lines[-1].strip():  # trailing blank lines are not entries
        lines.pop()
    return lines


def _read_prompts(folder: Path) -> list[SampleSpec]:
    prompts, videos = folder / "prompts.txt", folder / "videos.txt"
    for have, need in ((prompts, videos), (videos, prompts)):
        if have.is_file() and not need.is_file():
            raise DataError(f"{need}: file not found ({have.name} needs it alongside, aligned line by line)")
    plines, vlines = _text_lines(prompts), _text_lines(videos)
    if len(plines) != len(vlines):
        raise DataError(f"{prompts} has {len(plines)} lines but {videos} has {len(vlines)}: they must be "
                        "aligned, one caption and one video per line")
    out: list[SampleSpec] = []
    for n, (caption, video) in enumerate(zip(plines, vlines), 1):
        if not caption.strip():
            raise DataError(f"{prompts}:{n}: empty caption")
        if not video.strip():
            raise DataError(f"{videos}:{n}: empty video path")
        out.append(SampleSpec(video=_resolve(folder, video.strip()), start=None, end=None,
                              caption=caption.strip(), source=f"{prompts}:{n}"))
    return out
