"""The caption record: what DiffSW writes for one video (or clip), and what later stages read.

A record is plain JSON. Everything in it is a function of the inputs and the config, except the
``timings`` section, so re-running with greedy decoding reproduces it field for field.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from captioner.errors import CaptionerError

RECORD_SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class VideoMeta(_Model):
    path: str
    size_bytes: int
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    codec: str | None = None


class ClipRange(_Model):
    """The part of the video a record covers, in seconds of the source file. Keyframe and caption
    times in the record are relative to ``start`` (the clip's first frame is at 0)."""

    start: float
    end: float


class KeyframeEntry(_Model):
    index: int
    time: float
    similarity: float | None = None


class FrameCaption(_Model):
    time: float
    text: str


class DiffCaption(_Model):
    t_start: float
    t_end: float
    text: str


class CaptionRecord(_Model):
    schema_version: int = RECORD_SCHEMA_VERSION
    mode: Literal["diffsw", "grid"] = "diffsw"
    video: VideoMeta
    clip: ClipRange | None = None
    clip_key: str | None = None
    config_key: str | None = None
    keyframes: list[KeyframeEntry]
    first_caption: FrameCaption | None = None  # None in grid mode
    diff_captions: list[DiffCaption] = Field(default_factory=list)
    summary: str
    models: dict[str, Any] = Field(default_factory=dict)
    prompt_version: str
    config: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)

    def without_timings(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data.pop("timings", None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask has no read-only form, and setting it races with threads


def write_json_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename, so no reader ever sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; use the normal mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_record(record: CaptionRecord, path: str | Path) -> Path:
    return write_json_atomic(path, record.to_json())


def load_record(path: str | Path) -> CaptionRecord:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptionerError(f"{path}: record file not found") from None
    except json.JSONDecodeError as exc:
        raise CaptionerError(f"{path}: not valid JSON ({exc})") from None
    try:
        return CaptionRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise CaptionerError(f"{path}: not a caption record ({key}: {first['msg']})") from None


# ---------------------------------------------------------------------------------------------------
# file helpers shared by the long-running commands

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), computed once per (path, size, mtime) in a process."""
    import hashlib

    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``final``; an existing ``final`` is moved aside first and removed
    after, so ``final`` is at every moment either the old folder or the new one, complete."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
