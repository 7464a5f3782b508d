"""What one request of the web page (``t2v ui``) may ask for: the page's generation controls, its limits
(:class:`PageLimits`, ``t2v ui --limit KEY=VALUE``), the error a request gets (:class:`WebUIError`),
validation messages that name the page's controls, the prompt check and the generation time limit."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, ValidationError

from densecap.config import StrictModel
from densecap.errors import CaptionerError, ConfigError

#: The page's generation controls: (config field, label on the page).
CONTROLS: tuple[tuple[str, str], ...] = (
    ("seed", "Seed"),
    ("num_inference_steps", "Steps"),
    ("guidance_scale", "Guidance"),
    ("num_frames", "Frames"),
    ("height", "Height"),
    ("width", "Width"),
)
_LABELS = dict(CONTROLS)


class WebUIError(CaptionerError):
    """A request the page cannot carry out (shown in the page's status box)."""


class PageLimits(StrictModel):
    """What one request of the page may ask for, and how long it may wait and run (``t2v ui --limit
    KEY=VALUE``). The defaults admit every family's recommended settings."""

    max_steps: int = Field(100, ge=1, description="most denoising steps per video")
    max_frames: int = Field(257, ge=1, description="most frames per video")
    max_height: int = Field(1280, ge=1, description="largest height in pixels")
    max_width: int = Field(1280, ge=1, description="largest width in pixels")
    max_videos: int = Field(4, ge=1, description="most videos per request (the config's videos_per_prompt)")
    max_prompt_chars: int = Field(2000, ge=1, description="longest prompt, in characters")
    time_limit_s: float = Field(900.0, gt=0, description=(
        "a generation is stopped after the denoising step that passes this many seconds (counted from "
        "when it gets the models, the first request's model loading not included); nothing is written"))
    busy_wait_s: float = Field(30.0, ge=0, description=(
        "how long a request waits for the models while another one runs, before 'busy, try again'"))
    queue_size: int = Field(8, ge=1, description=(
        "requests the page takes at once (one runs, the others wait at most busy_wait_s); more are "
        "refused by Gradio's queue ('queue is full')"))


def parse_limits(items: tuple[str, ...] | list[str]) -> PageLimits:
    """:class:`PageLimits` from ``KEY=VALUE`` strings (values are YAML); errors name the key."""
    from densecap.config import parse_override

    data: dict[str, Any] = {}
    for item in items:
        path, value = parse_override(item)
        data[".".join(path)] = value
    try:
        return PageLimits.model_validate(data)
    except ValidationError as e:
        allowed = ", ".join(PageLimits.model_fields)
        raise ConfigError(f"--limit: {_validation_message(e)} (limits: {allowed})") from None


def _validation_message(err) -> str:
    """A pydantic ValidationError of a GenerateConfig as lines naming the page's controls."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "settings"
        msg = e["msg"]
        if "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        lines.append(f"{_LABELS.get(key, key)}: {msg}")
    return "; ".join(lines)


def _time_limit(seconds: float):
    """A diffusers ``callback_on_step_end`` that stops the generation (raises :class:`WebUIError`)
    after the first denoising step that ends more than ``seconds`` from now."""
    deadline = time.monotonic() + seconds

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if time.monotonic() > deadline:
            raise WebUIError(f"time limit: the generation was stopped after denoising step {step + 1}, past "
                             f"the page's limit of {seconds:g} s per request (t2v ui --limit time_limit_s=N); "
                             "nothing was written")
        return callback_kwargs

    return on_step_end


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise WebUIError("type a prompt first")
    return prompt.strip()
