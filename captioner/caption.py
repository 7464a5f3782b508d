"""Caption one video end to end: keyframes -> DiffSW -> caption record."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from captioner.backends import BackendConfig, HFBackendConfig, build_backend
from captioner.backends.base import ChatBackend
from captioner.configbase import StrictModel
from captioner.diffsw import DiffSWConfig, DiffSWSession, frames_to_images, run_sessions
from captioner.encoders import ImageEncoder, build_encoder
from captioner.keyframes import KeyframeConfig, KeyframeResult, extract_keyframes
from captioner.modelrefs import resolve_model_ref
from captioner.prompts import load_prompts
from captioner.record import CaptionRecord, ClipRange, DiffCaption, FrameCaption, KeyframeEntry, VideoMeta
from captioner.video import ClipView, open_clip


@dataclass
class PreparedClip:
    """A clip's frame work, done before any model call: keyframes and their images."""

    path: str
    keyframes: KeyframeResult
    images: list
    clip_range: tuple[float, float] | None
    timings: dict[str, float]

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


def _with_resolved_model(cfg):
    return cfg.model_copy(update={"model": resolve_model_ref(cfg.model)})


def _describe(component, ref: str | None) -> dict:
    """A component's description, with ``model`` as the config names it (``tiny://vlm``, a hub id,
    a path), so records do not depend on where the tiny-model folder happens to be."""
    info = dict(component.describe())
    if ref is not None:
        info["model"] = ref
    return info


class VideoCaptioner:
    """Loads the encoder and models once, then captions any number of videos."""

    def __init__(
        self,
        config: CaptionConfig,
        *,
        captioner: ChatBackend | None = None,
        summarizer: ChatBackend | None = None,
        encoder: ImageEncoder | None = None,
    ):
        self.config = config
        summ_cfg = config.summarizer or config.captioner
        self._refs = {
            "captioner": config.captioner.model if captioner is None else None,
            "summarizer": summ_cfg.model if summarizer is None and (config.summarizer or captioner is None) else None,
            "encoder": getattr(config.keyframes.encoder, "model", None) if encoder is None else None,
        }
        self.prompts = load_prompts(config.diffsw.prompts)
        enc_cfg = config.keyframes.encoder
        if encoder is None and getattr(enc_cfg, "model", None):
            enc_cfg = _with_resolved_model(enc_cfg)
        self.encoder = encoder or build_encoder(enc_cfg)
        self.captioner = captioner or build_backend(_with_resolved_model(config.captioner))
        if summarizer is not None:
            self.summarizer = summarizer
        elif config.summarizer is not None:
            self.summarizer = build_backend(_with_resolved_model(config.summarizer))
        else:
            self.summarizer = self.captioner

    def close(self) -> None:
        self.captioner.close()
        if self.summarizer is not self.captioner:
            self.summarizer.close()

    def __enter__(self) -> "VideoCaptioner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recorded_config(self, threshold_used: float | None) -> dict:
        """The config as it was applied: the keyframe threshold the encoder's default resolved to."""
        data = self.config.model_dump(mode="json")
        if threshold_used is not None:
            data["keyframes"]["threshold"] = threshold_used
        return data

    def prepare(self, video: str | Path, start: float | None = None, end: float | None = None) -> "PreparedClip":
        """The frame work of one clip (no model calls): keyframes, then the keyframe images for the VLM."""
        cfg = self.config
        t0 = time.perf_counter()
        with open_clip(video, start, end, backend=cfg.video_backend, max_side=cfg.keyframes.max_side) as reader:
            kf = extract_keyframes(reader, cfg.keyframes, encoder=self.encoder)
            clip_range = (reader.clip_start, reader.clip_end) if isinstance(reader, ClipView) else None
        t1 = time.perf_counter()
        indices = [k.index for k in kf.keyframes]
        with open_clip(video, start, end, backend=cfg.video_backend, max_side=cfg.diffsw.frame_max_side) as reader:
            images = frames_to_images(reader.read_indices(indices))
        t2 = time.perf_counter()
        return PreparedClip(str(video), kf, images, clip_range, {"keyframes_s": t1 - t0, "frames_s": t2 - t1})

    def session(self, prepared: "PreparedClip") -> DiffSWSession:
        times = [k.time for k in prepared.keyframes.keyframes]
        return DiffSWSession(prepared.images, times, prepared.keyframes.video.duration, self.prompts, self.config.diffsw)

    def caption(self, video: str | Path, start: float | None = None, end: float | None = None) -> CaptionRecord:
        """Caption a video, or its ``[start, end)`` range (times in the record are then relative to the clip)."""
        prepared = self.prepare(video, start, end)
        session = self.session(prepared)
        run_sessions([session], self.captioner, self.summarizer)
        return self.record(prepared, session)

    def record(self, prepared: "PreparedClip", session: DiffSWSession) -> CaptionRecord:
        """The caption record of a finished session."""
        cfg = self.config
        kf = prepared.keyframes
        video = prepared.path
        info = kf.video
        times = [k.time for k in kf.keyframes]
        indices = [k.index for k in kf.keyframes]
        model_s = sum(session.stage_seconds.values())
        return CaptionRecord(
            video=VideoMeta(
                path=str(video),
                size_bytes=info.size_bytes,
                fps=info.fps,
                num_frames=info.num_frames,
                duration=info.duration,
                width=info.width,
                height=info.height,
                codec=info.codec,
            ),
            clip=None if prepared.clip_range is None else ClipRange(start=prepared.clip_range[0], end=prepared.clip_range[1]),
            keyframes=[KeyframeEntry(index=k.index, time=k.time, similarity=k.similarity) for k in kf.keyframes],
            first_caption=FrameCaption(time=times[0], text=session.first_caption or ""),
            diff_captions=[
                DiffCaption(t_start=times[i], t_end=times[i + 1], text=text or "")
                for i, text in enumerate(session.diff_captions)
            ],
            summary=session.summary or "",
            models={
                "captioner": _describe(self.captioner, self._refs["captioner"]),
                "summarizer": _describe(self.summarizer, self._refs["summarizer"]),
                "encoder": _describe(self.encoder, self._refs["encoder"]),
            },
            prompt_version=self.prompts["version"],
            config=self._recorded_config(kf.config.get("threshold_used")),
            stats={"keyframes": len(indices), "candidates": kf.candidates, "model_calls": dict(session.model_calls)},
            timings={
                "keyframes_s": round(prepared.timings["keyframes_s"], 4),
                "frames_s": round(prepared.timings["frames_s"], 4),
                "first_caption_s": round(session.stage_seconds["first"], 4),
                "diff_captions_s": round(session.stage_seconds["diff"], 4),
                "summary_s": round(session.stage_seconds["summary"], 4),
                "total_s": round(prepared.timings["keyframes_s"] + prepared.timings["frames_s"] + model_s, 4),
            },
        )


def caption_video(video: str | Path, config: CaptionConfig | None = None) -> CaptionRecord:
    """Caption one video with a fresh set of models (use :class:`VideoCaptioner` for many)."""
    with VideoCaptioner(config or CaptionConfig()) as vc:
        return vc.caption(video)
