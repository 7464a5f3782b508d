"""Caption one video end to end: keyframes -> DiffSW -> caption record.

The work splits in two halves that corpus runs put in different processes:

- :class:`ClipPreparer` does the frame work (decode, keyframes, keyframe images): CPU-bound, no
  language model;
- :class:`VideoCaptioner` holds the language models, turns prepared clips into DiffSW sessions and
  finished sessions into :class:`CaptionRecord` objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from captioner.backends import BackendConfig, HFBackendConfig, build_backend
from captioner.backends.base import ChatBackend
from captioner.diffsw import DiffSWConfig, DiffSWSession, frames_to_images, run_sessions
from captioner.encoders import ImageEncoder, build_encoder
from captioner.grid import (
    GridConfig,
    GridSession,
    load_grid_prompts,
    sample_grid_frames,
)
from captioner.keyframes import KeyframeConfig, KeyframeResult, extract_keyframes
from captioner.prompts import load_prompts
from captioner.record import (
    CaptionRecord,
    ClipRange,
    DiffCaption,
    FrameCaption,
    KeyframeEntry,
    VideoMeta,
)
from densecap.video import ClipView, VideoInfo, open_clip
from densecap.config import StrictModel
from densecap.errors import VideoError

DEFAULT_VLM = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_LLM = "Qwen/Qwen2.5-7B-Instruct"


class CaptionConfig(StrictModel):
    """Config of ``captioner caption`` (configs/caption/*.yaml)."""

    video_backend: Literal["auto", "decord", "pyav"] = "auto"
    keyframes: KeyframeConfig = Field(default_factory=KeyframeConfig)
    captioner: BackendConfig = Field(default_factory=lambda: HFBackendConfig(model=DEFAULT_VLM))
    summarizer: BackendConfig | None = Field(
        None, description="text model for the summary; null = the captioner model summarises too"
    )
    diffsw: DiffSWConfig = Field(default_factory=DiffSWConfig)
    mode: Literal["diffsw", "grid"] = Field(
        "diffsw", description="diffsw: keyframes + differential captions + summary; grid: one VLM call on a frame grid"
    )
    grid: GridConfig = Field(default_factory=GridConfig)


def _describe(component: Any, ref: str | None) -> dict:
    """A component's description, with ``model`` as the config names it (``tiny://vlm``, a hub id,
    a path), so records do not depend on where the tiny-model folder happens to be."""
    info = dict(component.describe())
    if ref is not None:
        info["model"] = ref
    return info


@dataclass
class PreparedClip:
    """A clip's frame work, done before any model call: the frames for the VLM, their indices and
    real times, and (DiffSW mode) the keyframe selection."""

    path: str
    video: VideoInfo
    images: list
    indices: list[int]
    times: list[float]
    clip_range: tuple[float, float] | None
    timings: dict[str, float]
    keyframes: KeyframeResult | None = None  # DiffSW mode
    encoder: dict | None = None


class ClipPreparer:
    """Decodes a clip, selects its keyframes and reads their images (no language model)."""

    def __init__(self, config: CaptionConfig, encoder: ImageEncoder | None = None):
        self.config = config
        enc_cfg = config.keyframes.encoder
        self._encoder_ref = getattr(enc_cfg, "model", None) if encoder is None else None
        self.encoder = encoder or build_encoder(enc_cfg)

    def prepare(
        self, video: str | Path, start: float | None = None, end: float | None = None, min_duration: float | None = None
    ) -> PreparedClip:
        """Keyframes and their images; a clip shorter than ``min_duration`` seconds is a VideoError."""
        cfg = self.config
        t0 = time.perf_counter()
        grid = cfg.mode == "grid"
        side = cfg.grid.tile_max_side if grid else _larger_side(cfg.keyframes.max_side, cfg.diffsw.frame_max_side)
        # One reader serves keyframe selection and the keyframe images (the encoders resize for
        # themselves), and its frame cache makes the second read free: one decoding pass per clip.
        with open_clip(video, start, end, backend=cfg.video_backend, max_side=side, access="sparse") as reader:
            if min_duration is not None and reader.duration < min_duration:
                raise VideoError(
                    str(video), f"too short: {reader.duration:.2f}s, less than the minimum of {min_duration:g}s"
                )
            clip_range = (reader.clip_start, reader.clip_end) if isinstance(reader, ClipView) else None
            if grid:
                frames, indices, times = sample_grid_frames(reader, cfg.grid)
                return PreparedClip(
                    path=str(video), video=reader.info, images=list(frames), indices=list(indices), times=list(times),
                    clip_range=clip_range, timings={"keyframes_s": 0.0, "frames_s": time.perf_counter() - t0},
                )
            reader.enable_cache(FRAME_CACHE_BYTES)
            kf = extract_keyframes(reader, cfg.keyframes, encoder=self.encoder)
            t1 = time.perf_counter()
            indices = [k.index for k in kf.keyframes]
            frames = reader.read_indices(indices)
        images = [_fit(img, cfg.diffsw.frame_max_side) for img in frames_to_images(frames)]
        t2 = time.perf_counter()
        return PreparedClip(
            path=str(video),
            video=kf.video,
            images=images,
            indices=indices,
            times=[k.time for k in kf.keyframes],
            clip_range=clip_range,
            timings={"keyframes_s": t1 - t0, "frames_s": t2 - t1},
            keyframes=kf,
            encoder=_describe(self.encoder, self._encoder_ref),
        )


FRAME_CACHE_BYTES = 256 * 1024 * 1024  # per open clip: ~256 frames at 768x432


def _larger_side(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)


def _fit(image, max_side: int | None):
    """Downscale (aspect kept, even sides, as decode-time resizing does) to ``max_side``."""
    if max_side is None or max(image.size) <= max_side:
        return image
    from densecap.video import output_size_for

    return image.resize(output_size_for(image.width, image.height, max_side), Image.Resampling.BICUBIC)


class VideoCaptioner:
    """Loads the language models once, then captions any number of videos or prepared clips.

    ``prepare=False`` skips loading the keyframe encoder (when another process prepares clips).
    """

    def __init__(
        self,
        config: CaptionConfig,
        *,
        captioner: ChatBackend | None = None,
        summarizer: ChatBackend | None = None,
        encoder: ImageEncoder | None = None,
        prepare: bool = True,
    ):
        self.config = config
        self.prompts = load_prompts(config.diffsw.prompts)
        self.grid_prompts = load_grid_prompts(config.grid.prompts) if config.mode == "grid" else None
        self.preparer = ClipPreparer(config, encoder) if prepare else None
        summ_cfg = config.summarizer or config.captioner
        self._refs = {
            "captioner": config.captioner.model if captioner is None else None,
            "summarizer": summ_cfg.model if summarizer is None and (config.summarizer or captioner is None) else None,
        }
        self.captioner = captioner or build_backend(config.captioner)
        if summarizer is not None:
            self.summarizer = summarizer
        elif config.summarizer is not None:
            self.summarizer = build_backend(config.summarizer)
        else:
            self.summarizer = self.captioner
        self.models = {
            "captioner": _describe(self.captioner, self._refs["captioner"]),
            "summarizer": _describe(self.summarizer, self._refs["summarizer"]),
        }

    def close(self) -> None:
        self.captioner.close()
        if self.summarizer is not self.captioner:
            self.summarizer.close()

    def __enter__(self) -> "VideoCaptioner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prepare(self, video: str | Path, start: float | None = None, end: float | None = None) -> PreparedClip:
        if self.preparer is None:
            raise RuntimeError("this VideoCaptioner was built with prepare=False")
        return self.preparer.prepare(video, start, end)

    def session(self, prepared: PreparedClip) -> DiffSWSession | GridSession:
        duration = prepared.video.duration
        if self.config.mode == "grid":
            session = GridSession(prepared.images, prepared.times, duration, self.grid_prompts, self.config.grid)
            session.indices = prepared.indices
            return session
        return DiffSWSession(prepared.images, prepared.times, duration, self.prompts, self.config.diffsw)

    def caption(self, video: str | Path, start: float | None = None, end: float | None = None) -> CaptionRecord:
        """Caption a video, or its ``[start, end)`` range (times in the record are then relative to the clip)."""
        prepared = self.prepare(video, start, end)
        session = self.session(prepared)
        run_sessions([session], self.captioner, self.summarizer)
        return self.record(prepared, session)

    def recorded_config(self, threshold_used: float | None) -> dict:
        """The config as it was applied: the keyframe threshold the encoder's default resolved to."""
        data = self.config.model_dump(mode="json")
        if threshold_used is not None:
            data["keyframes"]["threshold"] = threshold_used
        return data

    def record(self, prepared: PreparedClip, session: DiffSWSession | GridSession) -> CaptionRecord:
        """The caption record of a finished session."""
        info = prepared.video
        times = prepared.times
        kf = prepared.keyframes
        grid = self.config.mode == "grid"
        model_s = sum(session.stage_seconds.values())
        frame_s = prepared.timings["keyframes_s"] + prepared.timings["frames_s"]
        if grid:
            keyframes = [KeyframeEntry(index=i, time=t) for i, t in zip(prepared.indices, times)]
            first, diffs = None, []
        else:
            keyframes = [KeyframeEntry(index=k.index, time=k.time, similarity=k.similarity) for k in kf.keyframes]
            first = FrameCaption(time=times[0], text=session.first_caption or "")
            diffs = [
                DiffCaption(t_start=times[i], t_end=times[i + 1], text=text or "")
                for i, text in enumerate(session.diff_captions)
            ]
        models = dict(self.models)
        if prepared.encoder is not None:
            models["encoder"] = prepared.encoder
        if grid:
            models.pop("summarizer", None)  # the captioner writes the one caption
        stats: dict[str, Any] = {"keyframes": len(times), "model_calls": dict(session.model_calls)}
        if kf is not None:
            stats["candidates"] = kf.candidates
        return CaptionRecord(
            mode=self.config.mode,
            video=VideoMeta.from_info(info, path=prepared.path),
            clip=None if prepared.clip_range is None else ClipRange(start=prepared.clip_range[0], end=prepared.clip_range[1]),
            keyframes=keyframes,
            first_caption=first,
            diff_captions=diffs,
            summary=session.summary or "",
            models=models,
            prompt_version=self.grid_prompts["version"] if grid else self.prompts["version"],
            config=self.recorded_config(kf.config.get("threshold_used") if kf is not None else None),
            stats=stats,
            timings={
                "keyframes_s": round(prepared.timings["keyframes_s"], 4),
                "frames_s": round(prepared.timings["frames_s"], 4),
                "first_caption_s": round(session.stage_seconds["first"], 4),
                "diff_captions_s": round(session.stage_seconds["diff"], 4),
                "summary_s": round(session.stage_seconds["summary"], 4),
                "total_s": round(frame_s + model_s, 4),
            },
        )


def caption_video(video: str | Path, config: CaptionConfig | None = None) -> CaptionRecord:
    """Caption one video with a fresh set of models (use :class:`VideoCaptioner` for many)."""
    with VideoCaptioner(config or CaptionConfig()) as vc:
        return vc.caption(video)
