"""DiffSW: differential sliding-window captioning (ShareGPT4Video).

For the keyframes of a video:

1. a vision-language model writes a detailed caption of the first keyframe;
2. for each adjacent pair of keyframes it describes only what changed between them, given both
   frames, both timestamps and (as in the paper) the previous differential caption as context;
3. a language model summarises the first caption and all differential captions, in time order,
   into one dense caption of the whole video.

The work of one video is a :class:`DiffSWSession`: a small state machine that hands out model
requests as soon as their inputs exist. :func:`run_sessions` drives any number of sessions together
and sends every ready request of the same kind to the backend in one batched call, so captioning many
clips at once keeps the model busy even though a video's differential captions depend on each other.
This module only builds messages; how a model is called is the backend's business.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image
from pydantic import Field

from captioner.backends.base import ChatBackend, Message
from densecap.config import StrictModel

Role = Literal["captioner", "summarizer"]
Stage = Literal["first", "diff", "summary"]


class DiffSWConfig(StrictModel):
    """How DiffSW talks to the models (which models is the backends' config)."""

    prompts: str = Field("diffsw-v1", description="built-in prompt name or path to a prompt YAML file")
    previous_context: bool = Field(
        True, description="give each pair the previous differential caption (sequential); false sends all pairs at once"
    )
    pair_mode: Literal["two_images", "stacked"] = Field(
        "two_images", description="send a pair as two images, or stacked side by side in one (single-image models)"
    )
    stack_gap: int = Field(16, ge=0, description="pixels between the two frames in stacked mode")
    frame_max_side: int | None = Field(
        768, ge=16, description="longest side of frames sent to the VLM (resized at decode time); null = native"
    )
    first_max_new_tokens: int = Field(384, ge=1)
    diff_max_new_tokens: int = Field(192, ge=1)
    summary_max_new_tokens: int = Field(512, ge=1)


def format_time(seconds: float) -> str:
    """``75.25`` -> ``"01:15.2"``; hours are added when needed (``"1:02:03.0"``)."""
    seconds = max(0.0, float(seconds))
    tenths = int(round(seconds * 10))
    hours, rem = divmod(tenths, 36000)
    minutes, rem = divmod(rem, 600)
    secs = rem / 10
    if hours:
        return f"{hours}:{minutes:02d}:{secs:04.1f}"
    return f"{minutes:02d}:{secs:04.1f}"


def stack_pair(a: Image.Image, b: Image.Image, gap: int = 16) -> Image.Image:
    """Put two frames side by side with a dark gap; the taller sets the height (the other is centred)."""
    height = max(a.height, b.height)
    canvas = Image.new("RGB", (a.width + gap + b.width, height), (16, 16, 16))
    canvas.paste(a, (0, (height - a.height) // 2))
    canvas.paste(b, (a.width + gap, (height - b.height) // 2))
    return canvas


@dataclass
class Request:
    """One model call a session needs: which model (role), the conversation, and where the answer goes."""

    session: "DiffSWSession"
    role: Role
    stage: Stage
    slot: int  # pair index for "diff", 0 otherwise
    conversation: list[Message]
    max_new_tokens: int


@dataclass
class DiffSWSession:
    """DiffSW state of one video: keyframe images and times in, first/diff/summary texts out."""

    frames: Sequence[Image.Image]
    times: Sequence[float]
    duration: float
    prompts: dict[str, Any]
    config: DiffSWConfig
    first_caption: str | None = None
    diff_captions: list[str | None] = field(default_factory=list)
    summary: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"first": 0.0, "diff": 0.0, "summary": 0.0})
    model_calls: dict[str, int] = field(default_factory=lambda: {"first": 0, "diff": 0, "summary": 0})
    _issued: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.times) or not self.frames:
            raise ValueError("a DiffSW session needs one time per keyframe and at least one keyframe")
        self.diff_captions = [None] * (len(self.frames) - 1)

    @property
    def done(self) -> bool:
        return self.summary is not None

    # -- requests -------------------------------------------------------------------------------
    def ready_requests(self) -> list[Request]:
        """Requests whose inputs are all known and that were not handed out yet."""
        out: list[Request] = []
        if ("first", 0) not in self._issued:
            out.append(self._first_request())
        for i in range(len(self.diff_captions)):
            if ("diff", i) in self._issued:
                continue
            if self.config.previous_context and i > 0 and self.diff_captions[i - 1] is None:
                break
            out.append(self._diff_request(i))
        if (
            ("summary", 0) not in self._issued
            and self.first_caption is not None
            and all(c is not None for c in self.diff_captions)
        ):
            out.append(self._summary_request())
        for r in out:
            self._issued.add((r.stage, r.slot))
        return out

    def complete(self, request: Request, text: str, seconds: float = 0.0) -> None:
        text = text.strip()
        if request.stage == "first":
            self.first_caption = text
        elif request.stage == "diff":
            self.diff_captions[request.slot] = text
        else:
            self.summary = text
        self.stage_seconds[request.stage] += seconds
        self.model_calls[request.stage] += 1

    def _first_request(self) -> Request:
        p = self.prompts["first_frame"]
        conv = [
            Message.system(p["system"]),
            Message.user(self.frames[0], p["user"].format(time=format_time(self.times[0]))),
        ]
        return Request(self, "captioner", "first", 0, conv, self.config.first_max_new_tokens)

    def _diff_request(self, i: int) -> Request:
        p = self.prompts["differential"]
        t_start, t_end = self.times[i], self.times[i + 1]
        context = ""
        if self.config.previous_context and i > 0:
            context = p["context"].format(
                t_prev=format_time(self.times[i - 1]), t_start=format_time(t_start), previous=self.diff_captions[i - 1]
            ) + " "
        stacked = self.config.pair_mode == "stacked"
        text = p["user"].format(
            pair_layout=p["stacked" if stacked else "two_images"],
            t_start=format_time(t_start),
            t_end=format_time(t_end),
            context=context,
        )
        a, b = self.frames[i], self.frames[i + 1]
        images = (stack_pair(a, b, self.config.stack_gap),) if stacked else (a, b)
        conv = [Message.system(p["system"]), Message.user(*images, text)]
        return Request(self, "captioner", "diff", i, conv, self.config.diff_max_new_tokens)

    def _summary_request(self) -> Request:
        p = self.prompts["summary"]
        lines = [
            p["difference_line"].format(
                t_start=format_time(self.times[i]), t_end=format_time(self.times[i + 1]), text=text
            )
            for i, text in enumerate(self.diff_captions)
        ]
        user = p["user"].format(
            duration=format_time(self.duration),
            time=format_time(self.times[0]),
            first_caption=self.first_caption,
            differences="\n".join(lines) if lines else "(no later changes: a single keyframe)",
        )
        conv = [Message.system(p["system"]), Message.user(user)]
        return Request(self, "summarizer", "summary", 0, conv, self.config.summary_max_new_tokens)


def run_sessions(
    sessions: Sequence[DiffSWSession],
    captioner: ChatBackend,
    summarizer: ChatBackend | None = None,
) -> None:
    """Drive sessions to completion, batching every ready request of one kind into one backend call.

    Requests are grouped by (model, token budget); each group goes out as one ``generate`` call. The
    time of a call is shared evenly among the requests it answered.
    """
    summarizer = summarizer or captioner
    backends = {"captioner": captioner, "summarizer": summarizer}
    pending = [s for s in sessions if not s.done]
    while pending:
        ready = [r for s in pending for r in s.ready_requests()]
        if not ready:  # pragma: no cover - a session that waits on nothing is a bug
            raise RuntimeError("DiffSW sessions stalled with no ready request")
        groups: dict[tuple[str, int], list[Request]] = {}
        for r in ready:
            groups.setdefault((r.role, r.max_new_tokens), []).append(r)
        for (role, max_new), reqs in groups.items():
            t0 = time.perf_counter()
            texts = backends[role].generate([r.conversation for r in reqs], max_new_tokens=max_new)
            share = (time.perf_counter() - t0) / len(reqs)
            if len(texts) != len(reqs):
                raise RuntimeError(f"backend returned {len(texts)} answers for {len(reqs)} requests")
            for r, text in zip(reqs, texts):
                r.session.complete(r, text, share)
        pending = [s for s in pending if not s.done]


def frames_to_images(frames: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
