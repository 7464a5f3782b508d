"""Video-text training data: read an exported caption dataset, index its clips into buckets, and
serve fixed-size frame tensors.

Input layouts (:func:`read_samples`), as written by ``captioner export``:

``captions.jsonl``
    ``{"video": path, "start": s|null, "end": e|null, "caption": text, ...}`` per line.
``metadata.csv`` / ``metadata.jsonl``
    columns ``file_name`` (relative to the folder), ``caption`` and optionally ``start``/``end``.
``prompts.txt`` + ``videos.txt``
    one caption / one video path per line, aligned (whole videos: no clip ranges).

A folder is searched in that order. Relative video paths resolve against the folder holding the
file that names them.

:class:`VideoTextDataset` probes every video once (in a thread pool), puts each clip in a bucket
(:func:`t2v.buckets.choose_bucket`), turns long clips into one or more samples, and drops and
reports what cannot be used. Items are ``{"video": (C, F, H, W) float32 in [-1, 1], "caption", ...}``;
batch them with :class:`t2v.buckets.BucketBatchSampler` and :func:`collate`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from densecap.video import ClipView, VideoInfo, VideoReader, open_video
from densecap.config import StrictModel
from densecap.errors import CaptionerError, VideoError
from densecap.files import read_utf8
from t2v.buckets import (
    Bucket,
    BucketBatchSampler,
    SampleRef,
    SamplerError,
    choose_bucket,
    sampled_capacity,
    window_starts,
)

__all__ = [
    "Bucket", "BucketBatchSampler", "DataConfig", "DataError", "Sample", "SampleRef", "SampleSpec",
    "SamplerError", "VideoTextDataset", "bucket_of", "collate", "read_samples", "sample_key",
]

log = logging.getLogger(__name__)

DEFAULT_SIZE = (480, 832)  # (height, width) of the default bucket
LAYOUT_FILES = ("captions.jsonl", "metadata.csv", "metadata.jsonl", "prompts.txt + videos.txt")
KEY_VERSION = 1  # bump when what sample_key() covers changes meaning


class DataError(CaptionerError):
    """A dataset file is missing or malformed, or no usable clip is left. The message names the
    file (and line) or the cause."""


# ----------------------------------------------------------------------------------------------
# input layouts


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
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise DataError(f"{where}: {key} must be a number of seconds or empty, got {value!r}")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key} must be a number of seconds or empty, got {value!r}") from None
    if not math.isfinite(t) or t < 0:
        raise DataError(f"{where}: {key} must be a finite number of seconds >= 0, got {value!r}")
    return t


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
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
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


# ----------------------------------------------------------------------------------------------
# config


class DataConfig(StrictModel):
    """How clips become training samples."""

    path: str = Field(description="dataset file or folder (see read_samples)")
    num_frames: int = Field(49, ge=1, description="frames of the default bucket (when buckets is not given)")
    fps: float | None = Field(None, gt=0, description="sample frames at this rate (seconds-based)")
    stride: int | None = Field(None, ge=1, description="sample every k-th source frame")
    buckets: list[tuple[int, int, int]] | None = Field(
        None, description="(frames, height, width) shapes; default [(num_frames, 480, 832)]")
    resize: Literal["cover_crop", "fit_pad"] = Field(
        "cover_crop", description="cover_crop: scale to cover the bucket and crop; fit_pad: fit inside, pad black")
    crop: Literal["center", "random"] = Field(
        "center", description="where cover_crop crops; random: seeded by (seed, epoch, sample)")
    long_clips: Literal["head", "uniform", "windows"] = Field(
        "head", description="head: the first window; uniform: the bucket's frames spread over the whole clip; "
                            "windows: up to max_windows_per_clip non-overlapping windows, spread over the clip")
    max_windows_per_clip: int = Field(4, ge=1)
    caption_dropout: float = Field(
        0.0, ge=0.0, le=1.0, description="probability a caption is replaced by '' (seeded by seed, epoch, sample)")
    video_backend: Literal["auto", "decord", "pyav"] = "auto"
    seed: int = 0
    probe_workers: int = Field(4, ge=1, description="threads probing videos while indexing")
    reader_cache: int = Field(2, ge=0, description="open readers kept per worker (windows of one video)")

    @field_validator("buckets")
    @classmethod
    def _check_buckets(cls, v: list[tuple[int, int, int]] | None) -> list[tuple[int, int, int]] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one bucket, or leave buckets out for the default")
        for f, h, w in v:
            if f < 1 or h < 2 or w < 2:
                raise ValueError(f"bucket ({f}, {h}, {w}): frames must be >= 1 and height/width >= 2")
        if len(set(v)) != len(v):
            raise ValueError("buckets are listed twice")
        return v

    @model_validator(mode="after")
    def _check_rate(self) -> DataConfig:
        if self.fps is not None and self.stride is not None:
            raise ValueError("give fps (resample to a frame rate) or stride (every k-th frame), not both")
        if self.buckets is not None and "num_frames" in self.model_fields_set:
            most = max(b[0] for b in self.buckets)
            if self.num_frames != most:
                raise ValueError(f"num_frames ({self.num_frames}) only sets the default bucket's frame count; "
                                 f"with buckets given, frame counts come from them (the largest has {most}): "
                                 "leave num_frames out")
        return self

    def bucket_list(self) -> list[Bucket]:
        if self.buckets is None:
            return [(self.num_frames, *DEFAULT_SIZE)]
        return [tuple(b) for b in self.buckets]

    def rate_text(self) -> str:
        if self.fps is not None:
            return f"{self.fps:g} fps"
        if self.stride is not None and self.stride > 1:
            return f"stride {self.stride}"
        return "the source frame rate"

    def need_text(self, frames: int) -> str:
        """``17 frames at 8 fps = 2.1 s``: what a bucket needs of a clip."""
        if self.fps is not None:
            return f"{frames} frames at {self.fps:g} fps = {frames / self.fps:.1f} s"
        if self.stride is not None and self.stride > 1:
            return f"{frames} frames at stride {self.stride} = {(frames - 1) * self.stride + 1} source frames"
        return f"{frames} frames at the source frame rate"


def clip_capacity(info: VideoInfo, cfg: DataConfig) -> int:
    """Frames the clip yields at the config's sampling rate."""
    return sampled_capacity(info.num_frames, info.duration, cfg.fps, cfg.stride)


def bucket_of(info: VideoInfo, cfg: DataConfig) -> Bucket | None:
    """The bucket of a clip (its reader's ``info``), or None when it is too short for every bucket."""
    return choose_bucket(info.width, info.height, clip_capacity(info, cfg), cfg.bucket_list())


def frame_indices(reader: VideoReader, cfg: DataConfig, frames: int, window: int | None) -> list[int]:
    """Indices (in ``reader``) of a sample's frames. ``window``: first sampled position (at the
    sampling rate); None: ``frames`` spread evenly from the first to the last frame."""
    n = reader.num_frames
    if window is None:
        if frames == 1:
            return [0]
        last = reader.frame_times([n - 1])[0]
        return reader.index_at(np.linspace(0.0, last, frames).tolist())
    if cfg.fps is not None:
        return reader.index_at([(window + k) / cfg.fps for k in range(frames)])
    step = cfg.stride or 1
    return [(window + k) * step for k in range(frames)]


def sample_key(spec: SampleSpec, window: int | None, cfg: DataConfig, bucket: Bucket | None = None) -> str:
    """A stable key for a sample's video tensor (for cached latents): the video file (real path,
    size, mtime), the clip range, the window, and the settings that shape the frames (sampling
    rate, long-clip mode, resize/crop, the bucket, or all buckets when ``bucket`` is not given).
    The caption is not part of it. 32 hex characters."""
    try:
        st = os.stat(spec.video)
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = None, None
    desc = {
        "v": KEY_VERSION,
        "video": os.path.realpath(spec.video), "size": size, "mtime_ns": mtime,
        "start": spec.start, "end": spec.end, "window": window,
        "fps": cfg.fps, "stride": cfg.stride, "long_clips": cfg.long_clips, "resize": cfg.resize,
        "crop": cfg.crop, "backend": cfg.video_backend,
        "bucket": list(bucket) if bucket is not None else None,
        "buckets": None if bucket is not None else [list(b) for b in cfg.bucket_list()],
    }
    if cfg.crop == "random":
        desc["seed"] = cfg.seed  # random crops depend on the seed (and epoch: cache with care)
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------
# frames -> tensor


def decode_side(width: int, height: int, out_h: int, out_w: int, resize: str) -> int | None:
    """The ``max_side`` to decode at so that resizing to the bucket only shrinks a little more (or
    not at all); None: decode at the native size (the bucket is as large or larger)."""
    s = max(out_h / height, out_w / width) if resize == "cover_crop" else min(out_h / height, out_w / width)
    if s >= 1.0:
        return None
    side = int(math.ceil(max(width, height) * s)) + 2
    side += side % 2
    return side if side < max(width, height) else None


def frames_to_tensor(frames: np.ndarray, out_h: int, out_w: int, resize: str,
                     offset: tuple[float, float] = (0.5, 0.5)) -> torch.Tensor:
    """``(N, h, w, 3)`` uint8 -> ``(3, N, out_h, out_w)`` float32 in [-1, 1].

    ``cover_crop``: scale to cover the bucket, then crop (``offset``: where the crop lies along the
    spare height/width, 0..1; 0.5 = centre). ``fit_pad``: scale to fit inside, pad with black (-1).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if resize == "cover_crop":
        s = max(out_h / h, out_w / w)
        nh, nw = max(out_h, round(h * s)), max(out_w, round(w * s))
    else:
        s = min(out_h / h, out_w / w)
        nh, nw = min(out_h, max(1, round(h * s))), min(out_w, max(1, round(w * s)))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h or nw < w)
    x = (x / 127.5 - 1.0).clamp_(-1.0, 1.0)
    if resize == "cover_crop":
        top = int(round((nh - out_h) * offset[0]))
        left = int(round((nw - out_w) * offset[1]))
        x = x[:, :, top:top + out_h, left:left + out_w]
    else:
        top, left = (out_h - nh) // 2, (out_w - nw) // 2
        x = F.pad(x, (left, out_w - nw - left, top, out_h - nh - top), value=-1.0)
    return x.permute(1, 0, 2, 3).contiguous()


# ----------------------------------------------------------------------------------------------
# dataset


@dataclass(frozen=True)
class Sample:
    """One training sample: a clip (or a window of it) and the bucket it goes to."""

    spec: SampleSpec
    bucket: Bucket
    window: int | None  # first sampled position of the window (at the sampling rate); None: uniform
    start_time: float  # source-file time of the sample's first frame
    width: int  # the video's display size
    height: int


@dataclass(frozen=True)
class _Skip:
    source: str
    reason: str
    kind: str  # "unreadable" | "short"


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) % 2**64 for p in parts]))


class VideoTextDataset(torch.utils.data.Dataset):
    """Samples of captioned clips, bucketed; see the module doc.

    ``skipped``: ``(source, reason)`` for every clip left out (unreadable, too short for every
    bucket). Raises :class:`DataError` when no sample is left, naming the cause.

    ``dataset[i]`` or ``dataset[SampleRef(i, epoch, step)]`` (what :class:`BucketBatchSampler`
    yields) gives ``{"video": (C, F, H, W) float32 in [-1, 1], "caption", "bucket": (F, H, W),
    "source", "video_path", "frame_times" (source-file seconds), "index", "epoch", "position"}``.
    Caption dropout and random crops are seeded by ``(seed, epoch, index)``: the epoch comes from the
    ref, or :meth:`set_epoch` for plain indices.
    """

    def __init__(self, specs: Sequence[SampleSpec], cfg: DataConfig) -> None:
        self.cfg = cfg
        self.specs = list(specs)
        self.buckets = cfg.bucket_list()
        self.epoch = 0
        self.samples: list[Sample] = []
        self._skips: list[_Skip] = []
        self._local = threading.local()
        self._index()
        if not self.samples:
            raise DataError(self._empty_message())

    @classmethod
    def from_config(cls, cfg: DataConfig) -> VideoTextDataset:
        return cls(read_samples(cfg.path), cfg)

    # -- indexing -------------------------------------------------------------------------------

    def _index(self) -> None:
        by_file: dict[str, list[int]] = {}
        for k, spec in enumerate(self.specs):
            by_file.setdefault(spec.video, []).append(k)
        jobs = list(by_file.items())
        results: list[list[Sample] | _Skip | None] = [None] * len(self.specs)
        workers = min(self.cfg.probe_workers, len(jobs))
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t2v-probe") as pool:
                done = list(pool.map(lambda job: self._probe_file(*job), jobs))
        else:
            done = [self._probe_file(*job) for job in jobs]
        for part in done:
            for k, res in part:
                results[k] = res
        for res in results:
            if isinstance(res, _Skip):
                self._skips.append(res)
            elif res:
                self.samples.extend(res)
        if self._skips:
            log.info("%d of %d clips skipped (first: %s: %s)", len(self._skips), len(self.specs),
                     self._skips[0].source, self._skips[0].reason)

    def _probe_file(self, path: str, ks: list[int]) -> list[tuple[int, list[Sample] | _Skip]]:
        try:
            reader = open_video(path, backend=self.cfg.video_backend)
        except VideoError as e:
            return [(k, _Skip(self.specs[k].source, str(e), "unreadable")) for k in ks]
        except Exception as e:  # a decoder failing in a way the reader does not translate
            return [(k, _Skip(self.specs[k].source, f"{path}: {type(e).__name__}: {e}", "unreadable")) for k in ks]
        out = []
        with reader:
            for k in ks:
                spec = self.specs[k]
                try:
                    out.append((k, self._samples_of(spec, reader)))
                except VideoError as e:
                    out.append((k, _Skip(spec.source, str(e), "unreadable")))
        return out

    def _samples_of(self, spec: SampleSpec, reader: VideoReader) -> list[Sample] | _Skip:
        clip, offset = _view(reader, spec)
        info = clip.info
        cap = clip_capacity(info, self.cfg)
        bucket = choose_bucket(info.width, info.height, cap, self.buckets)
        if bucket is None:
            need = min(self.buckets, key=lambda b: b[0])[0]
            what = "clip" if spec.start is not None or spec.end is not None else "video"
            reason = (f"{spec.video}: {what} too short: {info.duration:.2f} s ({info.num_frames} frames) gives "
                      f"{cap} frames at {self.cfg.rate_text()}; the smallest bucket needs "
                      f"{self.cfg.need_text(need)}")
            return _Skip(spec.source, reason, "short")
        out = []
        for w in window_starts(cap, bucket[0], self.cfg.long_clips, self.cfg.max_windows_per_clip):
            first = frame_indices(clip, self.cfg, 1, w)[0] if w is not None else 0
            t0 = offset + clip.frame_times([first])[0]
            out.append(Sample(spec, bucket, w, round(t0, 6), info.width, info.height))
        return out

    # -- reporting ------------------------------------------------------------------------------

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(s.source, s.reason) for s in self._skips]

    def _empty_message(self) -> str:
        n = len(self.specs)
        if n == 0:
            return "no clips to index (the sample list is empty)"
        bad = [s for s in self._skips if s.kind == "unreadable"]
        short = [s for s in self._skips if s.kind == "short"]
        need = self.cfg.need_text(min(b[0] for b in self.buckets))
        if len(bad) == n:
            return f"no video files could be read ({n} clips): first error: {bad[0].source}: {bad[0].reason}"
        if len(short) == n:
            return (f"all {n} clips were too short for the smallest bucket ({need}): first: "
                    f"{short[0].source}: {short[0].reason}")
        return (f"no usable clips among {n}: {len(bad)} unreadable (first: {bad[0].source}: {bad[0].reason}); "
                f"{len(short)} too short for the smallest bucket ({need}; first: {short[0].source})")

    def bucket_counts(self) -> dict[Bucket, int]:
        out: dict[Bucket, int] = {}
        for s in self.samples:
            out[s.bucket] = out.get(s.bucket, 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> str:
        parts = [f"{len(self.samples)} samples from {len(self.specs) - len(self._skips)} of {len(self.specs)} clips"]
        parts += [f"{f}x{h}x{w}: {c}" for (f, h, w), c in self.bucket_counts().items()]
        if self._skips:
            kinds = {k: sum(1 for s in self._skips if s.kind == k) for k in ("unreadable", "short")}
            parts.append(f"skipped {kinds['unreadable']} unreadable, {kinds['short']} too short")
        return "; ".join(parts)

    # -- access ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def sample_buckets(self) -> list[Bucket]:
        return [s.bucket for s in self.samples]

    def bucket_of(self, info: VideoInfo) -> Bucket | None:
        return bucket_of(info, self.cfg)

    def sample_key(self, i: int) -> str:
        s = self.samples[i]
        return sample_key(s.spec, s.window, self.cfg, s.bucket)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (caption dropout, random crops)."""
        self.epoch = int(epoch)

    def caption_for(self, i: int, epoch: int | None = None) -> str:
        """Sample ``i``'s caption in ``epoch``: "" with probability ``caption_dropout`` (the same
        answer every time for the same seed, epoch and sample)."""
        caption = self.samples[i].spec.caption
        p = self.cfg.caption_dropout
        if p <= 0.0:
            return caption
        e = self.epoch if epoch is None else epoch
        return "" if p >= 1.0 or _rng(self.cfg.seed, e, i, 1).random() < p else caption

    def __getitem__(self, ref: int | SampleRef | tuple) -> dict[str, Any]:
        if isinstance(ref, tuple):
            i, epoch = int(ref[0]), int(ref[1])
            step = int(ref[2]) if len(ref) > 2 else None
        else:
            i, epoch, step = int(ref), self.epoch, None
        if not -len(self.samples) <= i < len(self.samples):
            raise IndexError(f"sample {i} out of range ({len(self.samples)} samples)")
        i %= len(self.samples)
        s = self.samples[i]
        nf, out_h, out_w = s.bucket
        side = decode_side(s.width, s.height, out_h, out_w, self.cfg.resize)
        reader = None
        try:
            reader = self._reader(s.spec.video, side)
            clip, offset = _view(reader, s.spec)
            cap = clip_capacity(clip.info, self.cfg)
            if cap < (s.window or 0) + nf:
                raise VideoError(s.spec.video, f"now yields {cap} frames, the sample needs {(s.window or 0) + nf} "
                                               "(the file changed since the dataset was indexed?)")
            idx = frame_indices(clip, self.cfg, nf, s.window)
            frames = clip.read_indices(idx)
            times = [round(offset + t, 6) for t in clip.frame_times(idx)]
        except VideoError as e:
            self._drop_reader(s.spec.video, side)
            raise DataError(f"{s.spec.source}: {e}") from None
        finally:
            if reader is not None and self.cfg.reader_cache <= 0:
                reader.close()
        if self.cfg.crop == "random" and self.cfg.resize == "cover_crop":
            off = tuple(_rng(self.cfg.seed, epoch, i, 2).random(2).tolist())
        else:
            off = (0.5, 0.5)
        video = frames_to_tensor(frames, out_h, out_w, self.cfg.resize, off)
        caption = self.caption_for(i, epoch)
        return {
            "video": video, "caption": caption, "bucket": s.bucket, "source": s.spec.source,
            "video_path": s.spec.video, "frame_times": times, "index": i, "epoch": epoch,
            "position": None if step is None else (epoch, step + 1),
            "caption_dropped": caption == "" and s.spec.caption != "",
        }

    # -- readers --------------------------------------------------------------------------------

    def _cache(self) -> OrderedDict:
        cache = getattr(self._local, "readers", None)
        if cache is None:
            cache = self._local.readers = OrderedDict()
        return cache

    def _reader(self, path: str, side: int | None) -> VideoReader:
        cache = self._cache()
        key = (path, side)
        reader = cache.get(key)
        if reader is not None:
            cache.move_to_end(key)
            return reader
        reader = open_video(path, backend=self.cfg.video_backend, max_side=side)
        if self.cfg.reader_cache <= 0:
            return reader  # not kept: the caller closes it
        cache[key] = reader
        while len(cache) > self.cfg.reader_cache:
            _, old = cache.popitem(last=False)
            old.close()
        return reader

    def _drop_reader(self, path: str, side: int | None) -> None:
        reader = self._cache().pop((path, side), None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        """Close the readers this thread keeps open."""
        cache = self._cache()
        while cache:
            cache.popitem()[1].close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)  # open readers stay with the process that opened them
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def _view(reader: VideoReader, spec: SampleSpec) -> tuple[VideoReader, float]:
    """The clip's range of ``reader`` and the source-file time of its first frame."""
    if spec.start is None and spec.end is None:
        return reader, 0.0
    view = ClipView(reader, spec.start, spec.end)
    return view, view.clip_start


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch of one bucket: ``video`` (B, C, F, H, W); the rest as lists (``bucket`` and
    ``position`` once: the batch's bucket and, when drawn by a BucketBatchSampler, the position after it)."""
    if not batch:
        raise ValueError("empty batch")
    buckets = {tuple(b["bucket"]) for b in batch}
    if len(buckets) > 1:
        raise ValueError(f"batch mixes buckets {sorted(buckets)}; draw batches with BucketBatchSampler")
    positions = [b.get("position") for b in batch]
    return {
        "video": torch.stack([b["video"] for b in batch]),
        "caption": [b["caption"] for b in batch],
        "bucket": batch[0]["bucket"],
        "source": [b["source"] for b in batch],
        "video_path": [b["video_path"] for b in batch],
        "frame_times": [b["frame_times"] for b in batch],
        "index": [b["index"] for b in batch],
        "position": max(positions) if all(p is not None for p in positions) else None,
    }
