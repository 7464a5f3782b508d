"""Semantic-aware keyframe extraction (ShareGPT4Video, section 3.1).

Candidates are sampled every ``interval`` seconds (2 s in the paper). The first frame is always a
keyframe; each later candidate becomes a keyframe when the cosine similarity of its embedding to
the *last kept* keyframe falls below ``threshold``. Extras over the paper:

* timestamps are the real presentation times of the decoded frames (the authors' release writes
  ``index * 2`` seconds, which drifts for variable frame rates and off-grid seeks);
* leading solid-colour frames (black/white lead-in) are skipped for up to one interval: the first
  keyframe becomes the first non-solid frame found inside that interval;
* ``keep_last`` adds the video's last frame when it is at least one interval after the last
  keyframe (it is also an ordinary candidate, so a change in the final seconds is kept as well);
* ``min_keyframes``/``max_keyframes`` bound the count, adding the most distinct remaining
  candidates or dropping the most redundant keyframes.

See ``docs/keyframes.md``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field, model_validator

from captioner.encoders import (
    ClipEncoder,
    EncoderConfig,
    ImageEncoder,
    PixelEncoder,
    build_encoder,
)
from densecap.config import StrictModel
from densecap.errors import VideoError

if TYPE_CHECKING:  # pragma: no cover
    from densecap.video import VideoReader

__all__ = [
    "DEFAULT_THRESHOLDS",
    "KeyframeConfig",
    "Keyframe",
    "KeyframeResult",
    "select_keyframes",
    "extract_keyframes",
    "save_keyframes",
    "is_solid",
]

#: Threshold used when ``KeyframeConfig.threshold`` is left unset, per encoder type.
#: ``clip`` is the authors' value for CLIP ViT-L/14-336 CLS features; ``pixel`` was calibrated on
#: the test videos and samples (see docs/keyframes.md).
DEFAULT_THRESHOLDS: dict[str, float] = {"clip": ClipEncoder.default_threshold, "pixel": PixelEncoder.default_threshold}

_EPS = 1e-6


class KeyframeConfig(StrictModel):
    """Options of the keyframe step (the ``keyframes`` command's YAML, or ``keyframes:`` in a pipeline)."""

    interval: float = Field(default=2.0, gt=0, description="seconds between candidate frames")
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="keep a candidate when its cosine similarity to the last kept keyframe is below this; "
        "unset = the encoder's default (clip 0.93, pixel 0.70)",
    )
    keep_last: bool = Field(default=True, description="add the last frame when >= one interval after the last keyframe")
    min_keyframes: int = Field(default=1, ge=1)
    max_keyframes: int | None = Field(default=None, ge=1)
    skip_solid_lead: bool = Field(default=True, description="skip leading solid-colour frames for up to one interval")
    solid_std: float = Field(default=6.0, ge=0.0, description="a frame whose per-channel pixel std (0-255) is below this is solid")
    lead_step: float = Field(default=0.25, gt=0, description="sampling step (s) used to find the end of a solid lead")
    max_side: int | None = Field(default=336, ge=16, description="decode candidates resized so the longer side is at most this")
    decode_batch: int = Field(default=64, ge=1, description="candidates decoded and encoded per batch (bounds memory)")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)

    @model_validator(mode="after")
    def _check(self) -> "KeyframeConfig":
        if self.max_keyframes is not None and self.min_keyframes > self.max_keyframes:
            raise ValueError(f"min_keyframes ({self.min_keyframes}) must not exceed max_keyframes ({self.max_keyframes})")
        return self

    def resolved_threshold(self, encoder: ImageEncoder | str | None = None) -> float:
        """``threshold`` if set, else the default for ``encoder`` (an encoder, its type name, or None = clip)."""
        if self.threshold is not None:
            return float(self.threshold)
        if isinstance(encoder, ImageEncoder):
            default = getattr(encoder, "default_threshold", None)
            if default is not None:
                return float(default)
            encoder = getattr(encoder, "name", None)
        if encoder is None:
            encoder = self.encoder.type
        return DEFAULT_THRESHOLDS.get(str(encoder), DEFAULT_THRESHOLDS["clip"])


@dataclass
class Keyframe:
    index: int  #: frame index in the video
    time: float  #: presentation time in seconds (from the decoder, not index * interval)
    similarity: float | None  #: cosine similarity to the previous kept keyframe (None for the first)
    image: str | None = None  #: file name of the saved image, when saved

    def to_dict(self) -> dict:
        d = {"index": self.index, "time": round(self.time, 6), "similarity": None if self.similarity is None else round(self.similarity, 6)}
        if self.image is not None:
            d["image"] = self.image
        return d


@dataclass
class KeyframeResult:
    keyframes: list[Keyframe]
    video: Any  #: densecap.video.VideoInfo
    candidates: int  #: number of candidate frames compared
    encoder: dict
    config: dict
    timings: dict = field(default_factory=dict)

    @property
    def times(self) -> list[float]:
        return [k.time for k in self.keyframes]

    @property
    def indices(self) -> list[int]:
        return [k.index for k in self.keyframes]

    def to_dict(self) -> dict:
        return {
            "video": _video_dict(self.video),
            "keyframes": [k.to_dict() for k in self.keyframes],
            "num_keyframes": len(self.keyframes),
            "candidates": self.candidates,
            "encoder": self.encoder,
            "config": self.config,
            "timings": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.timings.items()},
        }


def _video_dict(info: Any) -> dict:
    if info is None:
        return {}
    d = asdict(info) if is_dataclass(info) else dict(vars(info))
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------------
# Pure selection logic
# --------------------------------------------------------------------------------------------------


def _as_unit(embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
    e = torch.as_tensor(embeddings, dtype=torch.float32)
    if e.ndim != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {tuple(e.shape)}")
    return torch.nn.functional.normalize(e, dim=1)


def select_keyframes(
    embeddings: torch.Tensor | np.ndarray,
    times: list[float],
    cfg: KeyframeConfig,
    *,
    threshold: float | None = None,
    last_frame: bool | None = None,
) -> list[int]:
    """Choose keyframes among candidates; returns positions into ``embeddings``, in time order.

    ``embeddings`` (N, D) belong to candidates at ``times`` (ascending). Row 0 is always kept; row i
    is kept when its cosine similarity to the last kept row is below the threshold (``threshold``,
    else ``cfg.resolved_threshold()``). If ``last_frame`` (default ``cfg.keep_last``), the final row is
    the video's last frame and is also kept when it lies at least ``cfg.interval`` after the last kept
    row. Then ``cfg.min_keyframes`` and ``cfg.max_keyframes`` are applied.
    """
    e = _as_unit(embeddings)
    n = e.shape[0]
    if len(times) != n:
        raise ValueError(f"{n} embeddings but {len(times)} times")
    if n == 0:
        return []
    thr = float(threshold) if threshold is not None else cfg.resolved_threshold()
    last_frame = cfg.keep_last if last_frame is None else last_frame
    # Similarities are computed pair by pair as they are needed (the same dot product that reports a
    # keyframe's similarity in extract_keyframes), never as the N x N matrix: that grew with the
    # square of the video's length (5,400 candidates, 3 hours at 2 s: 117 MB).
    pairs: dict[tuple[int, int], float] = {}

    def sim(i: int, j: int) -> float:
        key = (i, j) if i < j else (j, i)
        v = pairs.get(key)
        if v is None:
            v = pairs[key] = float(e[key[0]] @ e[key[1]])
        return v

    kept = [0]
    for i in range(1, n):
        s = float(e[i] @ e[kept[-1]])
        forced = last_frame and i == n - 1 and times[i] - times[kept[-1]] >= cfg.interval - _EPS
        if s < thr or forced:
            kept.append(i)

    # min_keyframes: add the most distinct remaining candidates (lowest max-similarity to the kept set).
    target = min(cfg.min_keyframes, n)
    while len(kept) < target:
        kept_set = set(kept)
        rest = [i for i in range(n) if i not in kept_set]
        max_sim = (e[rest] @ e[kept].T).max(dim=1).values  # (N - K) x K, K < min_keyframes
        kept.append(rest[int(torch.argmin(max_sim))])
        kept.sort()

    # max_keyframes: repeatedly drop the keyframe most similar to a time-neighbour (never the first).
    if cfg.max_keyframes is not None:
        while len(kept) > cfg.max_keyframes:
            best_j, best_r = None, -math.inf
            for j in range(1, len(kept)):
                r = sim(kept[j], kept[j - 1])
                if j + 1 < len(kept):
                    r = max(r, sim(kept[j], kept[j + 1]))
                if r >= best_r:  # ties: drop the later one
                    best_j, best_r = j, r
            kept.pop(best_j)
    return kept


def is_solid(frame: np.ndarray, solid_std: float = 6.0) -> bool:
    """True when the frame is (nearly) one colour: every channel's pixel std is below ``solid_std``."""
    f = np.asarray(frame)
    step = max(1, min(f.shape[0], f.shape[1]) // 64)
    sub = f[::step, ::step].reshape(-1, f.shape[-1]).astype(np.float32)
    return bool(sub.std(axis=0).max() < solid_std)


# --------------------------------------------------------------------------------------------------
# Extraction from a video
# --------------------------------------------------------------------------------------------------


def _open(video, max_side):
    from densecap.video import open_video

    return open_video(video, max_side=max_side, access="sparse")


def _unique_sorted(indices, n: int | None = None) -> list[int]:
    out = sorted({int(i) for i in indices})
    if n is not None and n > 0:
        out = sorted({min(max(i, 0), n - 1) for i in out})
    return out


def extract_keyframes(
    video: str | os.PathLike | "VideoReader",
    cfg: KeyframeConfig | None = None,
    encoder: ImageEncoder | None = None,
) -> KeyframeResult:
    """Run keyframe selection on a video path (opened at ``cfg.max_side``) or an open reader."""
    cfg = cfg or KeyframeConfig()
    t_start = time.perf_counter()
    timings = {"open_s": 0.0, "decode_s": 0.0, "encode_s": 0.0, "select_s": 0.0}
    own = isinstance(video, (str, os.PathLike))
    if encoder is None:
        t = time.perf_counter()
        encoder = build_encoder(cfg.encoder)
        timings["encoder_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    reader = _open(video, cfg.max_side) if own else video
    timings["open_s"] = time.perf_counter() - t
    try:
        result = _extract(reader, cfg, encoder, timings)
    finally:
        if own:
            reader.close()
    timings["total_s"] = time.perf_counter() - t_start
    return result


def _extract(reader, cfg: KeyframeConfig, encoder: ImageEncoder, timings: dict) -> KeyframeResult:
    info = reader.info
    n = int(info.num_frames)
    duration = float(info.duration or 0.0)
    if n <= 0:
        raise VideoError(getattr(info, "path", "?"), "video has no frames")
    threshold = cfg.resolved_threshold(encoder)

    # Grid candidates t = 0, interval, 2*interval, ... < duration, mapped to real frames.
    steps = max(1, math.ceil(duration / cfg.interval - _EPS)) if duration > 0 else 1
    grid_times = [k * cfg.interval for k in range(steps)]
    wanted = _unique_sorted(reader.index_at(grid_times), n)
    last_idx = n - 1
    if cfg.keep_last and last_idx not in wanted:
        wanted.append(last_idx)
    wanted = _unique_sorted(wanted, n)

    emb: dict[int, torch.Tensor] = {}
    frames_decoded = 0
    first_solid = False

    def decode_encode(indices: list[int]) -> np.ndarray:
        nonlocal frames_decoded
        t0 = time.perf_counter()
        frames = reader.read_indices(indices)
        t1 = time.perf_counter()
        vecs = encoder.encode(frames)
        t2 = time.perf_counter()
        timings["decode_s"] += t1 - t0
        timings["encode_s"] += t2 - t1
        frames_decoded += len(indices)
        for i, v in zip(indices, vecs):
            emb[i] = v
        return frames

    for start in range(0, len(wanted), cfg.decode_batch):
        chunk = wanted[start : start + cfg.decode_batch]
        frames = decode_encode(chunk)
        if start == 0 and cfg.skip_solid_lead:
            first_solid = is_solid(frames[0], cfg.solid_std)
        del frames

    first = wanted[0]
    if first_solid:
        first = _find_lead_end(reader, cfg, wanted, timings)
        if first not in emb:
            decode_encode([first])

    cand = [first] + [i for i in wanted if i > first]
    times = [float(x) for x in reader.frame_times(cand)]
    has_last = cfg.keep_last and cand[-1] == last_idx

    t0 = time.perf_counter()
    e = torch.stack([emb[i] for i in cand]).float()
    pos = select_keyframes(e, times, cfg, threshold=threshold, last_frame=has_last)
    e = _as_unit(e)
    keyframes = []
    for j, p in enumerate(pos):
        s = None if j == 0 else float(e[p] @ e[pos[j - 1]])
        keyframes.append(Keyframe(index=cand[p], time=times[p], similarity=s))
    timings["select_s"] = time.perf_counter() - t0
    timings["frames_decoded"] = frames_decoded
    timings["solid_lead"] = first_solid

    config = cfg.model_dump(mode="json")
    config["threshold_used"] = threshold
    return KeyframeResult(
        keyframes=keyframes,
        video=info,
        candidates=len(cand),
        encoder=encoder.describe(),
        config=config,
        timings=timings,
    )


def _find_lead_end(reader, cfg: KeyframeConfig, wanted: list[int], timings: dict) -> int:
    """First non-solid frame inside the first interval; if none, the next grid candidate."""
    n = int(reader.info.num_frames)
    fallback = wanted[1] if len(wanted) > 1 else wanted[0]
    start_t = float(reader.frame_times([wanted[0]])[0])
    k = max(1, int(math.ceil(cfg.interval / cfg.lead_step - _EPS)))
    end_t = float(reader.info.duration)
    probe_times = [t for t in (start_t + j * cfg.lead_step for j in range(1, k)) if t < end_t]
    probe = [i for i in _unique_sorted(reader.index_at(probe_times), n) if wanted[0] < i < fallback] if probe_times else []

    def solid_flags(indices: list[int]) -> list[bool]:
        if not indices:
            return []
        t0 = time.perf_counter()
        frames = reader.read_indices(indices)
        timings["decode_s"] += time.perf_counter() - t0
        timings["lead_probe_frames"] = timings.get("lead_probe_frames", 0) + len(indices)
        return [is_solid(f, cfg.solid_std) for f in frames]

    flags = solid_flags(probe)
    hit = next((j for j, s in enumerate(flags) if not s), None)
    if hit is None:
        lo, hi = (probe[-1] if probe else wanted[0]), fallback
        if hi == wanted[0]:
            return wanted[0]
    else:
        lo, hi = (probe[hit - 1] if hit > 0 else wanted[0]), probe[hit]
    # Refine between the last solid probe and the first non-solid frame (bounded read).
    between = list(range(lo + 1, hi))
    if len(between) > 32:
        between = _unique_sorted(np.linspace(lo + 1, hi - 1, 32).round().astype(int).tolist())
    for i, s in zip(between, solid_flags(between)):
        if not s:
            return i
    return hi


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def save_keyframes(
    result: KeyframeResult,
    out_dir: str | os.PathLike,
    save_images: bool = False,
    reader: "VideoReader | None" = None,
    jpeg_quality: int = 95,
) -> Path:
    """Write ``out_dir/keyframes.json`` and, with ``save_images``, ``keyframe_000_t0.00.jpg`` ... at native size.

    ``reader`` is used for the images only when it decodes at native resolution; otherwise the
    video is reopened at full size. Returns the JSON path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if save_images and result.keyframes:
        from PIL import Image

        info = result.video
        native = (int(info.width), int(info.height))
        own = reader is None or tuple(getattr(reader, "output_size", ())) != native
        rd = _open(info.path, None) if own else reader
        try:
            frames = rd.read_indices([k.index for k in result.keyframes])
        finally:
            if own:
                rd.close()
        for j, (kf, frame) in enumerate(zip(result.keyframes, frames)):
            name = f"keyframe_{j:03d}_t{kf.time:.2f}.jpg"
            Image.fromarray(np.ascontiguousarray(frame)).save(out / name, quality=jpeg_quality)
            kf.image = name
    path = out / "keyframes.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
