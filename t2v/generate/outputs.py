"""The outputs of ``t2v generate`` and resuming: one :class:`GeneratedVideo` per prompt and seed with its
file names, the JSON sidecar written beside each mp4, and whether an existing video can be kept (its
sidecar made with the same content settings; see :mod:`t2v.generate`)."""

from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densecap.config import flatten_dict
from densecap.devices import process_share
from densecap.files import write_json_atomic
from densecap.paths import slugify
from t2v.generate.config import GenerateConfig, GenerateError

SIDECAR_VERSION = 1

# settings compared when deciding whether an existing video can be kept (see t2v.generate's module doc)
_CONTENT_SETTINGS = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt",
                     "fps", "dtype", "vae_dtype", "extra_call_kwargs", "expand")


@dataclass
class GeneratedVideo:
    """One prompt's result. ``frames``: the pipeline's output (F, H, W, 3), float in [0, 1], before mp4
    encoding (``None`` when skipped); ``record``: the sidecar's content."""

    index: int
    prompt: str
    pipeline_prompt: str | None
    path: Path
    sidecar: Path
    skipped: bool
    seed: int = 0
    assigned: bool = True  # False: another process of a multi-process launch makes this video
    frames: np.ndarray | None = None
    seconds: float | None = None
    record: dict[str, Any] = field(default_factory=dict)


def _resume_key(rec: dict[str, Any]) -> dict[str, Any]:
    """The part of a sidecar that decides the video's content (see the module doc)."""
    settings = rec.get("settings") or {}
    lora = rec.get("lora")
    model = rec.get("model") or {}
    key = {
        "prompt": rec.get("prompt"),
        "seed": rec.get("seed"),
        "model": {k: model.get(k) for k in ("family", "id", "revision")},
        "lora": {"sha256": lora.get("sha256"), "scale": lora.get("scale")} if isinstance(lora, dict) else None,
        "transformer": rec.get("transformer"),
        "settings": {k: settings.get(k) for k in _CONTENT_SETTINGS},
    }
    if not settings.get("expand"):
        key["pipeline_prompt"] = rec.get("pipeline_prompt")
    return key




def _is_done(mp4: Path, sidecar: Path, planned: dict[str, Any], overwrite: bool) -> bool:
    """True when ``mp4`` and ``sidecar`` hold this very video; raises when they hold another
    generation's (unless ``overwrite``). Without a sidecar the video is unfinished: made again."""
    if overwrite or not sidecar.is_file():
        return False
    try:
        old = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GenerateError(f"{sidecar}: an unreadable sidecar is in the way ({e}); remove it or pass "
                            "--overwrite") from None
    then, now = flatten_dict(_resume_key(old if isinstance(old, dict) else {})), flatten_dict(_resume_key(planned))
    diffs = [f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in sorted(set(then) | set(now))
             if then.get(k) != now.get(k)]
    if diffs:
        raise GenerateError(f"{sidecar}: holds a video generated with other settings ("
                            + "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")
                            + "); pass --overwrite (overwrite: true) to replace it, or choose another --out")
    return mp4.is_file()


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_json_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    """Versions of Python and the libraries that make the video (looked up once per process)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "densecap-t2v"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _plan(cfg: GenerateConfig, prompts: list[str], out: Path, expansions: list[dict] | None,
          model_rec: dict[str, Any], settings: dict[str, Any]) -> list[GeneratedVideo]:
    """One :class:`GeneratedVideo` per prompt and seed (``videos_per_prompt`` seeds from ``seed`` on; the
    file stem gets ``-seedN`` when there are several) with its file names, those already done marked
    skipped (with their sidecar as record); raises for a sidecar of other settings (see :func:`_is_done`)."""
    videos = []
    n = cfg.videos_per_prompt
    for i, prompt in enumerate(prompts):
        fed = expansions[i]["text"] if expansions is not None else prompt
        for seed in range(cfg.seed, cfg.seed + n):
            stem = f"{i:03d}-{slugify(prompt)}" + (f"-seed{seed}" if n > 1 else "")
            planned = {"prompt": prompt, "pipeline_prompt": fed, "seed": seed, **model_rec, "settings": settings}
            mp4, sidecar = out / f"{stem}.mp4", out / f"{stem}.json"
            done = _is_done(mp4, sidecar, planned, cfg.overwrite)
            record = json.loads(sidecar.read_text(encoding="utf-8")) if done else {}
            videos.append(GeneratedVideo(index=i, prompt=prompt, pipeline_prompt=record.get("pipeline_prompt"),
                                         path=mp4, sidecar=sidecar, skipped=done, record=record, seed=seed))
    return videos


def _sidecar(v: GeneratedVideo, fed: str, expansion: dict | None, frames: np.ndarray, seconds: float,
             tokens: int | None, *, cfg: GenerateConfig, spec, device: str, model_rec: dict[str, Any],
             settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON sidecar of one generated video."""
    return {
        "sidecar_version": SIDECAR_VERSION,
        "file": v.path.name,
        "prompt": v.prompt,
        "pipeline_prompt": fed,
        "expansion": expansion,
        "seed": v.seed,
        "generator_device": device,
        "process": dict(zip(("rank", "world_size"), process_share()[:2])),
        **model_rec,
        "settings": settings,
        "negative_prompt": settings["negative_prompt"],
        "frames": int(frames.shape[0]),
        "fps": settings["fps"],
        "duration_s": round(frames.shape[0] / settings["fps"], 6),
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "prompt_tokens": tokens,
        "max_text_tokens": spec.max_text_tokens,
        "truncated": bool(tokens is not None and tokens > spec.max_text_tokens),
        "seconds": round(seconds, 6),
        "versions": dict(_versions()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
