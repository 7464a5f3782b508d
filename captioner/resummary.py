"""Clip re-summarisation: caption any sub-range of a captioned video from its record alone.

A DiffSW record holds a caption of the first keyframe and, for each pair of adjacent keyframes, a
description of what changed between them. That is enough to caption a part ``[S, E]`` of the video
without decoding a single frame:

* the state at ``S`` is the first-frame caption plus every change that ended by ``S``; it goes to the
  model as context, marked as happening *before* the clip;
* the clip itself is every differential caption whose interval overlaps ``[S, E]``; a pair that is
  only partly inside is kept, with its real times and a note saying which side it sticks out of;
* every time is re-expressed relative to ``S`` (the clip starts at 00:00.0, earlier times are negative);
* one text-model call turns that into a caption of the clip.

Times ``S`` and ``E`` are in the record's own time base: for a record of a clip (``record.clip``) they
are relative to the clip start, like every other time in the record. :func:`build_resummary_request`
is pure, so what the model sees can be checked exactly; :func:`resummarize` adds the model call.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from captioner.backends import BackendConfig, HFBackendConfig
from captioner.backends.base import ChatBackend, Message
from captioner.diffsw import format_time
from captioner.prompts import load_prompts
from captioner.record import CaptionRecord, DiffCaption
from densecap.config import StrictModel
from densecap.errors import CaptionerError

DEFAULT_SUMMARIZER = "Qwen/Qwen2.5-7B-Instruct"

# Sections and keys of a re-summary prompt file, with the placeholders each may use.
RESUMMARY_SCHEMA: dict[str, dict[str, set[str]]] = {
    "resummary": {
        "system": set(),
        "user": {"clip_duration", "start_state", "before", "changes"},
        "start_state_at_start": {"time", "first_caption"},
        "start_state_before": {"time", "first_caption"},
        "before_section": {"lines"},
        "no_before": set(),
        "difference_line": {"t_start", "t_end", "text", "note"},
        "note_partly_before": set(),
        "note_partly_after": set(),
        "note_spans": set(),
        "no_changes": set(),
    }
}

# Times closer than this are the same time (records store times rounded to the frame table).
_TOL = 1e-6

# Where a differential caption lies relative to the clip: wholly before it (context), inside it,
# or inside but sticking out of one or both ends.
Overlap = Literal["before", "inside", "partly_before", "partly_after", "spans"]


class SummarizeConfig(StrictModel):
    """Config of ``captioner summarize`` (configs/summarize/*.yaml)."""

    summarizer: BackendConfig = Field(default_factory=lambda: HFBackendConfig(model=DEFAULT_SUMMARIZER))
    prompts: str = Field("resummary-v1", description="built-in prompt name or path to a prompt YAML file")
    max_new_tokens: int = Field(512, ge=1)


def load_resummary_prompts(name_or_path: str | Path = "resummary-v1") -> dict[str, Any]:
    return load_prompts(name_or_path, schema=RESUMMARY_SCHEMA)


def format_relative(seconds: float) -> str:
    """A time relative to the clip start: ``2.5`` -> ``"00:02.5"``, ``-4`` -> ``"-00:04.0"``."""
    text = format_time(abs(seconds))
    negative = seconds < 0 and text != format_time(0)
    return ("-" if negative else "") + text


@dataclass(frozen=True)
class ClipDiff:
    """A differential caption used for a clip: its record times, times relative to S, and overlap."""

    t_start: float
    t_end: float
    rel_start: float
    rel_end: float
    text: str
    overlap: Overlap


@dataclass(frozen=True)
class ClipSelection:
    """What a record says about ``[start, end]``: the state before it and the changes during it."""

    start: float
    end: float
    first_time: float
    first_caption: str
    first_in_clip: bool  # the first-frame caption describes the clip's own first frame
    before: list[ClipDiff]  # changes that ended by ``start``, in time order
    inside: list[ClipDiff]  # changes overlapping ``[start, end]``, in time order


def _record_name(record: CaptionRecord, name: str | None) -> str:
    if name:
        return name
    where = record.video.path
    if record.clip is not None:
        where += f" [{record.clip.start:g}-{record.clip.end:g}s]"
    return f"record of {where}"


def check_range(record: CaptionRecord, start: float, end: float, name: str | None = None) -> tuple[float, float]:
    """``(start, end)`` as floats, or a :class:`CaptionerError` naming the record and its valid range."""
    who = _record_name(record, name)
    try:
        s, e = float(start), float(end)
    except (TypeError, ValueError):
        raise CaptionerError(f"{who}: start and end must be numbers (got {start!r}, {end!r})") from None
    duration = float(record.video.duration)
    if not (s == s and e == e) or s < -_TOL or e > duration + _TOL or e - s <= _TOL:
        raise CaptionerError(
            f"{who}: clip range {s:g}..{e:g}s is invalid; need 0 <= start < end <= {duration:g}s "
            f"(the record's duration; times are relative to the record's start)"
        )
    return max(0.0, s), min(duration, e)


def _clip_diff(d: DiffCaption, start: float, end: float) -> ClipDiff:
    if d.t_end <= start + _TOL:
        return ClipDiff(d.t_start, d.t_end, d.t_start - start, d.t_end - start, d.text, "before")
    began_before = d.t_start < start - _TOL
    ends_after = d.t_end > end + _TOL
    overlap: Overlap = (
        "spans" if began_before and ends_after else "partly_before" if began_before else "partly_after" if ends_after else "inside"
    )
    return ClipDiff(d.t_start, d.t_end, d.t_start - start, d.t_end - start, d.text, overlap)


def select_clip(record: CaptionRecord, start: float, end: float, name: str | None = None) -> ClipSelection:
    """Split a record's captions around ``[start, end]`` (record times). Raises on a bad range or a
    record without a first-frame caption (grid mode)."""
    start, end = check_range(record, start, end, name)
    if record.first_caption is None:
        raise CaptionerError(
            f"{_record_name(record, name)}: a {record.mode}-mode record has no first-frame and differential "
            f"captions to re-summarise"
        )
    diffs = sorted(record.diff_captions, key=lambda d: (d.t_start, d.t_end))
    before = [_clip_diff(d, start, end) for d in diffs if d.t_end <= start + _TOL]
    inside = [_clip_diff(d, start, end) for d in diffs if d.t_end > start + _TOL and d.t_start < end - _TOL]
    first_time = float(record.first_caption.time)
    return ClipSelection(
        start=start,
        end=end,
        first_time=first_time,
        first_caption=record.first_caption.text,
        first_in_clip=first_time >= start - _TOL and not before,
        before=before,
        inside=inside,
    )


def _line(p: dict[str, Any], d: ClipDiff) -> str:
    note = "" if d.overlap in ("inside", "before") else p[f"note_{d.overlap}"]
    return p["difference_line"].format(
        t_start=format_relative(d.rel_start), t_end=format_relative(d.rel_end), text=d.text.strip(), note=note
    )


def build_resummary_request(
    record: CaptionRecord, start: float, end: float, prompts: dict[str, Any], name: str | None = None
) -> list[Message]:
    """The conversation sent to the text model for ``[start, end]`` of ``record`` (pure: no model, no I/O)."""
    return _build(select_clip(record, start, end, name), prompts)


def _build(sel: ClipSelection, prompts: dict[str, Any]) -> list[Message]:
    p = prompts["resummary"]
    state_key = "start_state_at_start" if sel.first_in_clip else "start_state_before"
    start_state = p[state_key].format(
        time=format_relative(sel.first_time - sel.start), first_caption=sel.first_caption.strip()
    )
    before = (
        p["before_section"].format(lines="\n".join(_line(p, d) for d in sel.before)) if sel.before else p["no_before"]
    )
    changes = "\n".join(_line(p, d) for d in sel.inside) if sel.inside else p["no_changes"]
    user = p["user"].format(
        clip_duration=format_time(sel.end - sel.start), start_state=start_state, before=before, changes=changes
    )
    user = re.sub(r"\n{3,}", "\n\n", user).strip()  # an empty section leaves no gap
    return [Message.system(p["system"]), Message.user(user)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class UsedDiff(_Model):
    t_start: float  # record time
    t_end: float
    rel_start: float  # relative to the clip start S
    rel_end: float
    text: str
    overlap: Overlap


class ClipSummary(_Model):
    """A re-summarised clip: where it came from, what the model was given, and what it wrote."""

    record: str | None = None  # the record file (or run folder / shard) it was read from
    video: str
    record_clip: dict[str, float] | None = None  # the record's own range in the source file, if any
    clip_key: str | None = None
    start: float  # record time (relative to record_clip.start when there is one)
    end: float
    source_start: float  # the same range in seconds of the source video file
    source_end: float
    first_caption_in_clip: bool
    context_diff_captions: list[UsedDiff] = Field(default_factory=list)  # changes before S
    diff_captions: list[UsedDiff] = Field(default_factory=list)  # changes overlapping [S, E]
    summary: str
    prompt_version: str
    model: dict[str, Any] = Field(default_factory=dict)
    max_new_tokens: int | None = None  # the token budget of the call (None: the backend's own)
    timings: dict[str, float] = Field(default_factory=dict)

    def to_json(self) -> str:
        import json

        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def _used(d: ClipDiff) -> UsedDiff:
    return UsedDiff(
        t_start=d.t_start, t_end=d.t_end, rel_start=round(d.rel_start, 6), rel_end=round(d.rel_end, 6),
        text=d.text, overlap=d.overlap,
    )


def _summary(
    record: CaptionRecord, sel: ClipSelection, text: str, prompts: dict[str, Any], model: dict, seconds: float,
    record_path: str | None, max_new_tokens: int | None,
) -> ClipSummary:
    offset = record.clip.start if record.clip is not None else 0.0
    return ClipSummary(
        record=record_path,
        video=record.video.path,
        record_clip=None if record.clip is None else {"start": record.clip.start, "end": record.clip.end},
        clip_key=record.clip_key,
        start=sel.start,
        end=sel.end,
        source_start=round(offset + sel.start, 6),
        source_end=round(offset + sel.end, 6),
        first_caption_in_clip=sel.first_in_clip,
        context_diff_captions=[_used(d) for d in sel.before],
        diff_captions=[_used(d) for d in sel.inside],
        summary=text.strip(),
        prompt_version=prompts["version"],
        model=model,
        max_new_tokens=max_new_tokens,
        timings={"summary_s": round(seconds, 4)},
    )


def resummarize_many(
    items: Sequence[tuple[CaptionRecord, float, float]],
    backend: ChatBackend,
    prompts: dict[str, Any],
    *,
    max_new_tokens: int | None = None,
    model: dict | None = None,
    record_paths: Sequence[str | None] | None = None,
) -> list[ClipSummary]:
    """Re-summarise many ``(record, start, end)`` ranges with one batched backend call."""
    paths = list(record_paths) if record_paths is not None else [None] * len(items)
    sels = [select_clip(r, s, e, name=p) for (r, s, e), p in zip(items, paths)]
    if not sels:
        return []
    t0 = time.perf_counter()
    texts = backend.generate([_build(sel, prompts) for sel in sels], max_new_tokens=max_new_tokens)
    share = (time.perf_counter() - t0) / len(sels)
    if len(texts) != len(sels):
        raise CaptionerError(f"backend returned {len(texts)} answers for {len(sels)} requests")
    described = model if model is not None else dict(backend.describe())
    return [
        _summary(r, sel, text, prompts, described, share, p, max_new_tokens)
        for (r, _, _), sel, text, p in zip(items, sels, texts, paths)
    ]


def resummarize(
    record: CaptionRecord,
    start: float,
    end: float,
    backend: ChatBackend,
    prompts: dict[str, Any],
    *,
    max_new_tokens: int | None = None,
    model: dict | None = None,
    record_path: str | None = None,
) -> ClipSummary:
    """Caption ``[start, end]`` (record times) of a captioned video from its record alone."""
    (out,) = resummarize_many(
        [(record, start, end)], backend, prompts, max_new_tokens=max_new_tokens, model=model, record_paths=[record_path]
    )
    return out


class Resummarizer:
    """A summariser built from a :class:`SummarizeConfig` (model loaded once), for CLI commands."""

    def __init__(self, config: SummarizeConfig, backend: ChatBackend | None = None):
        from captioner.backends import build_backend

        self.config = config
        self.prompts = load_resummary_prompts(config.prompts)
        self._ref = config.summarizer.model if backend is None else None
        self.backend = backend if backend is not None else build_backend(config.summarizer)

    def describe(self) -> dict:
        info = dict(self.backend.describe())
        if self._ref is not None:
            info["model"] = self._ref  # as the config names it (tiny://llm, a hub id, a path)
        return info

    def __call__(
        self, items: Sequence[tuple[CaptionRecord, float, float]], record_paths: Sequence[str | None] | None = None
    ) -> list[ClipSummary]:
        return resummarize_many(
            items, self.backend, self.prompts, max_new_tokens=self.config.max_new_tokens, model=self.describe(),
            record_paths=record_paths,
        )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Resummarizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same_video(recorded: str, wanted: str) -> bool:
    if recorded == wanted or Path(recorded) == Path(wanted):
        return True
    try:
        return Path(recorded).resolve() == Path(wanted).resolve()
    except OSError:  # pragma: no cover - unresolvable paths
        return False


def pick_record(
    source: str | Path, video: str | None = None, clip_start: float | None = None
) -> tuple[CaptionRecord, str]:
    """The record to re-summarise, and a name for it in messages.

    ``source`` is a record JSON file, or a run folder / JSONL shard; a folder or shard with more than
    one record needs ``video`` (the record's video path; a unique file name also matches) and, when
    that video has records of several clips, ``clip_start`` (the clip's start in the source file).
    """
    from captioner.record import load_record
    from captioner.shards import iter_records

    path = Path(source)
    if path.is_file() and path.suffix != ".jsonl":
        record = load_record(path)
        if video is not None and not _same_video(record.video.path, video) and Path(record.video.path).name != Path(video).name:
            raise CaptionerError(f"{path}: the record is of {record.video.path}, not {video}")
        return record, str(path)
    records = list(iter_records(path))  # raises a clear error for a missing path / empty folder
    if video is None:
        if len(records) == 1:
            return records[0], str(path)
        raise CaptionerError(f"{path}: holds {len(records)} records; pick one with --video PATH")
    found = [r for r in records if _same_video(r.video.path, video)]
    if not found:
        found = [r for r in records if Path(r.video.path).name == Path(video).name]
        if len({r.video.path for r in found}) > 1:
            raise CaptionerError(
                f"{path}: several videos are named {Path(video).name}: "
                + ", ".join(sorted({r.video.path for r in found}))
                + "; give the full path with --video"
            )
    if not found:
        raise CaptionerError(f"{path}: no record of video {video} ({len(records)} records in it)")
    if clip_start is not None:
        found = [r for r in found if r.clip is not None and abs(r.clip.start - clip_start) <= 1e-3]
        if not found:
            raise CaptionerError(f"{path}: no record of {video} has a clip starting at {clip_start:g}s")
    if len(found) > 1:
        ranges = ", ".join("whole video" if r.clip is None else f"{r.clip.start:g}-{r.clip.end:g}s" for r in found)
        raise CaptionerError(
            f"{path}: {len(found)} records of {video} ({ranges}); pick one with --clip-start SECONDS"
        )
    record = found[0]
    where = f"{path} ({record.video.path}" + ("" if record.clip is None else f" [{record.clip.start:g}-{record.clip.end:g}s]") + ")"
    return record, where
