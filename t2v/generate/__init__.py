"""Text-to-video generation with a family's diffusers pipeline: ``t2v generate``.

    t2v generate --config CFG (--prompt TEXT ... | --prompts FILE) [--out DIR] [--run DIR | --lora PATH]

The model is the family's pipeline class (``WanPipeline``, ``CogVideoXPipeline``, ``LTXPipeline``) loaded
with ``from_pretrained`` from a hub id, a local folder or ``tiny://NAME``, optionally with

* a fine-tuned transformer (``model.transformer``: a folder saved by ``t2v train`` in full mode,
  loaded with the family's transformer class and handed to ``from_pretrained(transformer=...)``);
* a LoRA in diffusers' format (``model.lora``: a folder holding ``pytorch_lora_weights.safetensors`` or
  a ``.safetensors`` file), loaded with ``load_lora_weights`` and weighted with ``set_adapters``;
* or a trainer output folder (``model.run``): its ``base_model.json`` gives family, id and revision,
  and its ``lora/`` or ``transformer/`` is used as above.

For every prompt the pipeline runs with a fresh ``torch.Generator(device).manual_seed(seed)`` (the same
seed for every prompt, so a prompt's video does not depend on its position in the list; with
``videos_per_prompt: N``, N videos per prompt with seeds ``seed`` ... ``seed+N-1``, files ``-seedS``) and
``output_type="np"``; the frames go to ``OUT/{i:03d}-{slug}.mp4`` and a JSON sidecar of the same stem
records the prompt, the prompt actually fed to the pipeline (after an optional expansion), the model,
LoRA (with the sha256 of its file), every setting, timings and library versions.

Resuming. The sidecar is written last (mp4 first, both atomically), so it marks a finished video. A
prompt whose mp4 and sidecar exist and whose sidecar was made with the same *content settings* is
skipped: the prompt, the seed, the model (family, id, revision, the LoRA's sha256 and scale, the
transformer folder), frames, size, steps, guidance, negative prompt, fps, dtypes, the family's extra
call arguments and the expansion config (and, without an expansion config, the text fed to the
pipeline). Settings that change how, not what, is computed (device, CPU offload, VAE tiling and
slicing, attention backend) are recorded but not compared. A sidecar made with other content settings
is an error naming the file, unless ``overwrite`` is set.

Shapes are checked with the family's :meth:`~t2v.families.base.ModelSpec.check_shape`, and paths,
LoRA files and attention backends are checked, before any model is loaded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from densecap.devices import process_share, resolve_device
from densecap.files import file_sha256
from densecap.paths import check_output_dir, slugify
from t2v.generate.config import (
    FAMILY_DEFAULTS,
    GenerateConfig,
    GenerateError,
    GenerateModelConfig,
    load_generate_config,
    resolved_settings,
)
from t2v.generate.config import Dtype as Dtype
from t2v.generate.model_source import LORA_FILE as LORA_FILE
from t2v.generate.model_source import ResolvedModel, resolve_model
from t2v.generate.outputs import SIDECAR_VERSION as SIDECAR_VERSION
from t2v.generate.outputs import GeneratedVideo, _plan, _sidecar, _write_json_atomic
from t2v.generate.pipeline import ADAPTER_NAME as ADAPTER_NAME
from t2v.generate.pipeline import (
    _prompt_tokens,
    generator_device,
    load_pipeline,
    pipeline_kwargs,
    run_pipeline,
)
from t2v.generate.prompts import _check_expansions, _expand, read_prompts
from t2v.videoio import write_mp4

__all__ = [
    "FAMILY_DEFAULTS",
    "GenerateConfig",
    "GenerateError",
    "GenerateModelConfig",
    "GeneratedVideo",
    "ResolvedModel",
    "generate_videos",
    "load_generate_config",
    "load_pipeline",
    "pipeline_kwargs",
    "file_sha256",
    "generator_device",
    "read_prompts",
    "resolve_device",
    "resolve_model",
    "resolved_settings",
    "run_pipeline",
    "slugify",
]

log = logging.getLogger(__name__)

# The pipeline is loaded and called, and the mp4 and sidecar written, through this module's names
# (load_pipeline, run_pipeline, write_mp4, ...), so patching them here (tests, benchmarks) takes effect.


def generate_videos(
    cfg: GenerateConfig,
    prompts: Sequence[str],
    out_dir: str | os.PathLike | None = None,
    *,
    expansions: Sequence[dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
    pipeline=None,
    progress_bar: bool = False,
    call_kwargs: dict[str, Any] | None = None,
) -> list[GeneratedVideo]:
    """Generate one video per prompt into ``out_dir`` (default ``cfg.out_dir``); see the module doc.

    ``expansions``: one dict per prompt with at least ``"text"``, the prompt fed to the pipeline (the
    dict is recorded whole in the sidecar). Without it, ``cfg.expand`` (when set) expands the prompts
    that are not already done with :func:`t2v.expansion.expand_for_generation`. ``progress`` gets one
    line per video. ``pipeline``: an already loaded pipeline for ``cfg`` (e.g. from :func:`load_pipeline`;
    loaded here, only if some video is to be made, when not given; ``progress_bar``: show the pipeline's
    per-step progress bar then). ``call_kwargs``: more pipeline-call arguments, not part of the settings
    (e.g. ``callback_on_step_end``, which the web page uses for its time limit). Returns the videos in
    prompt order, skipped ones included.
    """
    from t2v.families import get_family

    prompts = _check_prompts(prompts)
    if expansions is not None:
        expansions = _check_expansions(expansions, len(prompts), "expansions")
    say = progress or (lambda _m: None)
    out = check_output_dir(out_dir if out_dir is not None else cfg.out_dir)
    resolved = resolve_model(cfg)
    spec = get_family(resolved.family)
    settings = resolved_settings(cfg, resolved.family)
    out.mkdir(parents=True, exist_ok=True)
    model_rec = resolved.record()

    videos = _plan(cfg, prompts, out, expansions, model_rec, settings)
    todo = _assign(videos, say)
    if not todo:
        return videos
    todo_expansions = _todo_expansions(cfg, prompts, todo, expansions, resolved, say)
    if pipeline is None:
        pipe, device = load_pipeline(cfg, resolved, progress_bar=progress_bar), resolve_device(cfg.device)
    else:
        pipe, device = pipeline, generator_device(pipeline)
    kwargs = {**pipeline_kwargs(settings), **(call_kwargs or {})}
    for v, exp in zip(todo, todo_expansions):
        _make_video(v, exp, pipe, kwargs, device, cfg=cfg, spec=spec, model_rec=model_rec, settings=settings,
                    say=say)
        say(f"[{videos.index(v) + 1}/{len(videos)}] wrote {v.path} ({v.seconds:.1f} s)")
    return videos


def _check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """``prompts`` as a list (a single string: one prompt), each a non-empty string."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise GenerateError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise GenerateError(f"prompt {i}: must be a non-empty string, got {p!r}")
    return prompts


def _assign(videos: list[GeneratedVideo], say: Callable[[str], None]) -> list[GeneratedVideo]:
    """Mark the videos this process makes (several processes of a launch: every world-th video), report
    its skipped ones, and return those it has to make."""
    rank, world, _ = process_share()
    for k, v in enumerate(videos):
        v.assigned = k % world == rank  # several processes (accelerate launch): every world-th video
        if v.skipped and v.assigned:
            say(f"[{k + 1}/{len(videos)}] skipped {v.path} (already generated with these settings)")
    return [v for v in videos if v.assigned and not v.skipped]


def _todo_expansions(cfg: GenerateConfig, prompts: list[str], todo: list[GeneratedVideo],
                     expansions: list[dict[str, Any]] | None, resolved: ResolvedModel,
                     say: Callable[[str], None]) -> list[dict[str, Any] | None]:
    """The expansion of each video to make: the given one, one made now with ``cfg.expand`` (once per
    prompt, shared by its seeds), or ``None`` (the prompt is fed as it is)."""
    if expansions is None and cfg.expand:
        say(f"expanding {len(todo)} prompt(s) with {cfg.expand}")
        indices = sorted({v.index for v in todo})  # one expansion per prompt, shared by its seeds
        made = _expand(cfg, [prompts[i] for i in indices], resolved.family, resolved.id, resolved.revision)
        by_index = dict(zip(indices, made))
        return [by_index[v.index] for v in todo]
    return [expansions[v.index] if expansions is not None else None for v in todo]


def _make_video(v: GeneratedVideo, exp: dict[str, Any] | None, pipe, kwargs: dict[str, Any], device: str, *,
                cfg: GenerateConfig, spec, model_rec: dict[str, Any], settings: dict[str, Any],
                say: Callable[[str], None]) -> None:
    """Run the pipeline for one video, write its mp4 and then its sidecar, and fill in ``v``."""
    fed = exp["text"] if exp else v.prompt
    tokens = _prompt_tokens(pipe, fed)
    if tokens is not None and tokens > spec.max_text_tokens:
        say(f"warning: prompt {v.index} has {tokens} tokens; the {spec.name} pipeline reads the first "
            f"{spec.max_text_tokens}")
    t0 = time.perf_counter()
    frames = run_pipeline(pipe, fed, kwargs, v.seed, device)
    seconds = time.perf_counter() - t0
    record = _sidecar(v, fed, exp, frames, seconds, tokens, cfg=cfg, spec=spec, device=device,
                      model_rec=model_rec, settings=settings)
    write_mp4(v.path, frames, settings["fps"])  # the sidecar last: it marks the video as finished
    _write_json_atomic(v.sidecar, record)
    v.pipeline_prompt, v.frames, v.seconds, v.record = fed, frames, seconds, record
