"""Grid mode: fast captioning with one model call per video.

Instead of DiffSW's first-frame caption, one call per keyframe pair and a summary, grid mode samples
frames over the whole video (every ``interval`` seconds, or ``num_frames`` evenly), tiles them into
one image in reading order, each tile labelled with its number and timestamp, and asks the
vision-language model for the dense caption in a single call. It loses DiffSW's fine-grained change
descriptions but costs one generation instead of ``2 x keyframes``.

:class:`GridSession` follows the duck-typed protocol of :class:`captioner.diffsw.DiffSWSession`
(``ready_requests``, ``complete``, ``done``, ``stage_seconds``, ``model_calls``), so
:func:`captioner.diffsw.run_sessions` drives grid and DiffSW sessions alike and batches the grid
requests of many videos into one backend call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, model_validator

from captioner.backends.base import ChatBackend, Message, prepare_image
from captioner.diffsw import Request, format_time, run_sessions
from captioner.prompts import load_prompts
from densecap.config import StrictModel

GRID_SCHEMA: dict[str, dict[str, set[str]]] = {
    "grid": {
        "system": set(),
        "user": {"count", "rows", "columns", "duration", "frame_list"},
        "frame_line": {"index", "time"},
        "frame_separator": set(),
    }
}

BACKGROUND = (16, 16, 16)
LABEL_BOX = (0, 0, 0)
LABEL_TEXT = (255, 255, 255)


class GridConfig(StrictModel):
    """How grid mode samples, tiles and prompts (which model is the backend's config)."""

    interval: float = Field(2.0, gt=0, description="seconds between sampled frames (unless num_frames is set)")
    num_frames: int | None = Field(None, ge=1, description="sample this many frames evenly instead of every interval")
    max_frames: int = Field(16, ge=1, description="at most this many tiles; a longer video spreads them evenly")
    columns: int | None = Field(None, ge=1, description="tiles per row; null = about the square root of the count")
    tile_max_side: int = Field(336, ge=16, description="longest side of one tile, in pixels")
    gap: int = Field(4, ge=0, description="pixels between tiles (and around the grid)")
    label: bool = Field(True, description="draw each tile's number and timestamp on it")
    prompts: str = Field("grid-v1", description="built-in prompt name or path to a prompt YAML file")
    max_new_tokens: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "GridConfig":
        if not math.isfinite(self.interval):
            raise ValueError("interval must be a finite number of seconds")
        return self


def load_grid_prompts(name_or_path: str | Path = "grid-v1") -> dict[str, Any]:
    return load_prompts(name_or_path, schema=GRID_SCHEMA)


def grid_times(duration: float, cfg: GridConfig) -> list[float]:
    """Times to sample: ``0, interval, 2*interval, ...`` before ``duration``; or, with ``num_frames``
    (or when the interval would give more than ``max_frames``), that many times spread evenly from
    the first to the last frame (``duration`` itself picks the last frame)."""
    duration = float(duration)
    if not math.isfinite(duration) or duration <= 0:
        return [0.0]
    if cfg.num_frames is None:
        count = int(math.floor(duration / cfg.interval - 1e-9)) + 1  # 0, I, 2I, ... strictly before duration
        if count <= cfg.max_frames:
            return [round(i * cfg.interval, 6) for i in range(count)]
        n = cfg.max_frames
    else:
        n = min(cfg.num_frames, cfg.max_frames)
    if n == 1:
        return [0.0]
    return [round(float(t), 6) for t in np.linspace(0.0, duration, n)]


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    """``(rows, columns)`` for ``count`` tiles: ``columns`` if given (capped at the count), else
    ``ceil(sqrt(count))`` columns."""
    if count < 1:
        raise ValueError("a grid needs at least one tile")
    cols = min(columns, count) if columns else math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def tile_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The tile size for frames of ``width`` x ``height``: longest side ``max_side``, aspect kept."""
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _draw_label(canvas: Image.Image, x: int, y: int, text: str, tile_h: int) -> None:
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, tile_h // 12))
    pad = max(2, tile_h // 60)
    left, top, right, bottom = draw.textbbox((x + pad, y + pad), text, font=font)
    draw.rectangle((x, y, right + pad, bottom + pad), fill=LABEL_BOX)
    draw.text((x + pad, y + pad), text, font=font, fill=LABEL_TEXT)


def label_text(index: int, time: float) -> str:
    """What is drawn on tile ``index`` (0-based): ``"3 | 00:04.0"`` (1-based number)."""
    return f"{index + 1} | {format_time(time)}"


def make_grid(frames: Sequence[Image.Image], times: Sequence[float], cfg: GridConfig) -> Image.Image:
    """Tile ``frames`` in reading order (left to right, top to bottom) on a dark canvas.

    Every tile has the size the first frame gets when scaled so its longest side is
    ``cfg.tile_max_side``; frames of another aspect are scaled to fit and centred. With ``cfg.label``
    each tile gets its 1-based number and timestamp in the top-left corner, on a dark box.
    """
    if len(frames) != len(times) or not frames:
        raise ValueError("make_grid needs one time per frame and at least one frame")
    rows, cols = grid_shape(len(frames), cfg.columns)
    tw, th = tile_size(frames[0].width, frames[0].height, cfg.tile_max_side)
    gap = cfg.gap
    canvas = Image.new("RGB", (cols * tw + (cols + 1) * gap, rows * th + (rows + 1) * gap), BACKGROUND)
    for i, (frame, t) in enumerate(zip(frames, times)):
        r, c = divmod(i, cols)
        x, y = gap + c * (tw + gap), gap + r * (th + gap)
        img = prepare_image(frame, None)
        scale = min(tw / img.width, th / img.height)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.BICUBIC)
        canvas.paste(img, (x + (tw - size[0]) // 2, y + (th - size[1]) // 2))
        if cfg.label:
            _draw_label(canvas, x, y, label_text(i, t), th)
    return canvas


@dataclass
class GridSession:
    """Grid mode for one video: sampled frames and times in, one caption (``summary``) out."""

    frames: Sequence[Image.Image]
    times: Sequence[float]
    duration: float
    prompts: dict[str, Any]
    config: GridConfig
    summary: str | None = None
    grid: Image.Image | None = None
    indices: list[int] | None = None  # frame indices of ``frames``, when known
    # Same keys as a DiffSW session so record code can treat both alike; grid mode uses "summary" only.
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"first": 0.0, "diff": 0.0, "summary": 0.0})
    model_calls: dict[str, int] = field(default_factory=lambda: {"first": 0, "diff": 0, "summary": 0})
    _issued: bool = False

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.times) or not self.frames:
            raise ValueError("a grid session needs one time per frame and at least one frame")
        if self.grid is None:
            self.grid = make_grid(self.frames, self.times, self.config)

    @property
    def done(self) -> bool:
        return self.summary is not None

    def ready_requests(self) -> list[Request]:
        if self._issued:
            return []
        self._issued = True
        return [Request(self, "captioner", "summary", 0, self.conversation(), self.config.max_new_tokens)]  # type: ignore[arg-type]

    def conversation(self) -> list[Message]:
        p = self.prompts["grid"]
        rows, cols = grid_shape(len(self.frames), self.config.columns)
        frame_list = p["frame_separator"].join(
            p["frame_line"].format(index=i + 1, time=format_time(t)) for i, t in enumerate(self.times)
        )
        text = p["user"].format(
            count=len(self.frames), rows=rows, columns=cols, duration=format_time(self.duration), frame_list=frame_list
        )
        return [Message.system(p["system"]), Message.user(self.grid, text)]

    def complete(self, request: Request, text: str, seconds: float = 0.0) -> None:
        self.summary = text.strip()
        self.stage_seconds["summary"] += seconds
        self.model_calls["summary"] += 1


def sample_grid_frames(reader, cfg: GridConfig) -> tuple[list[Image.Image], list[int], list[float]]:
    """Frames of an open :class:`~densecap.video.VideoReader` at :func:`grid_times`, with their
    indices and real times; a time that lands on an already chosen frame (a very short video) is dropped."""
    wanted = grid_times(reader.duration, cfg)
    arrays, indices, times = reader.read_at(wanted)
    frames: list[Image.Image] = []
    kept: list[int] = []
    real: list[float] = []
    for arr, idx, t in zip(arrays, indices, times):
        if idx in kept:
            continue
        kept.append(int(idx))
        frames.append(Image.fromarray(np.ascontiguousarray(arr)))
        real.append(float(t))
    return frames, kept, real


def read_grid_frames(reader, cfg: GridConfig) -> tuple[list[Image.Image], list[float]]:
    """:func:`sample_grid_frames` without the indices."""
    frames, _, times = sample_grid_frames(reader, cfg)
    return frames, times


def grid_session(reader, cfg: GridConfig, prompts: dict[str, Any] | None = None) -> GridSession:
    """A ready-to-run session for an open reader (frames are read now; ``session.indices`` holds
    their frame indices, for the record's keyframe list)."""
    frames, indices, times = sample_grid_frames(reader, cfg)
    session = GridSession(frames, times, float(reader.duration), prompts or load_grid_prompts(cfg.prompts), cfg)
    session.indices = indices
    return session


def caption_grid(
    reader_or_path, cfg: GridConfig, backend: ChatBackend, video_backend: str = "auto"
) -> tuple[Image.Image, list[float], str]:
    """Caption one video in grid mode: ``(grid image, frame times, caption)``.

    ``reader_or_path`` is an open reader (used as is, not closed) or a video path (opened with frames
    decoded at ``cfg.tile_max_side``).
    """
    from densecap.video import VideoReader, open_video

    if isinstance(reader_or_path, VideoReader):
        session = grid_session(reader_or_path, cfg)
    else:
        with open_video(reader_or_path, backend=video_backend, max_side=cfg.tile_max_side, access="sparse") as reader:
            session = grid_session(reader, cfg)
    run_sessions([session], backend)
    return session.grid, list(session.times), session.summary or ""
