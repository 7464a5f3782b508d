"""How captioned clips become training samples: the :class:`DataConfig` settings, the frames a
sample takes (sampling rate, long-clip windows), its bucket, its stable key for cached latents,
and how decoded frames are resized into the bucket's tensor. See :mod:`t2v.data`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from densecap.config import StrictModel
from densecap.video import ClipView, VideoInfo, VideoReader
from t2v.buckets import Bucket, choose_bucket, sampled_capacity
from t2v.data.layouts import SampleSpec

DEFAULT_SIZE = (480, 832)  # (height, width) of the default bucket
KEY_VERSION = 1  # bump when what sample_key() covers changes meaning


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


# ----------------------------------------------------------------------------------------------
# clips and their samples


def clip_view(reader: VideoReader, spec: SampleSpec) -> tuple[VideoReader, float]:
    """The clip's range of ``reader`` and the source-file time of its first frame."""
    if spec.start is None and spec.end is None:
        return reader, 0.0
    view = ClipView(reader, spec.start, spec.end)
    return view, view.clip_start


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
