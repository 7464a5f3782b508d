"""The caption record: what DiffSW writes for one video (or clip), and what later stages read.

A record is plain JSON. Everything in it is a function of the inputs and the config, except the
``timings`` section, so re-running with greedy decoding reproduces it field for field.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from densecap.errors import CaptionerError
from densecap.files import (  # noqa: F401  (kept importable here)
    OutputLock,
    file_sha256,
    lock_output,
    normal_mode,
    replace_dir,
    write_json_atomic,
)

RECORD_SCHEMA_VERSION = 1

log = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class VideoMeta(_Model):
    """The video of a record: the reader's :class:`~densecap.video.VideoInfo` as stored (without the
    decoder that read it, which does not change the captions), the path absolute."""

    path: str
    size_bytes: int
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    codec: str | None = None

    @classmethod
    def from_info(cls, info: Any, path: str | None = None) -> "VideoMeta":
        """From a reader's ``VideoInfo`` (every field of this model, read by name); ``path`` instead of
        the info's when given."""
        data = {name: getattr(info, name) for name in cls.model_fields}
        data["path"] = os.path.abspath(path or data["path"])  # readable from any working directory
        return cls(**data)


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
