"""Validation during training: the config's prompts (optionally expanded for this model's tokenizer)
rendered with the weights being trained (the EMA weights when kept), written as mp4 under
``OUT/validation/step-N/`` and logged to the trackers. Validation never moves the training RNG."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densecap.devices import torch_dtype
from densecap.paths import slugify
from densecap.training import write_json
from t2v.train_config import TrainConfig
from t2v.trainer.state import MIXED, Run
from t2v.videoio import write_mp4

__all__ = ["expand_validation_prompts", "generate_validation", "log_video", "validate"]

log = logging.getLogger("t2v.train")


def expand_validation_prompts(cfg: TrainConfig, spec, model_id: str, out: Path) -> list[str]:
    """``validation.prompts`` expanded with ``validation.expand`` for this model's tokenizer; the
    expansions go to ``OUT/validation/expansions.json``."""
    from t2v.expansion import expand_for_generation

    expansions = expand_for_generation(cfg.validation.expand, list(cfg.validation.prompts), family=spec.name,
                                       model_id=model_id, revision=cfg.model.revision)
    write_json(out / "validation" / "expansions.json", expansions)
    for e in expansions:
        log.info("validation prompt %r: %s (%s tokens)", e["prompt"][:60], e["status"], e.get("tokens"))
    return [e["text"] for e in expansions]


def validate(run: Run, step: int) -> list[Path]:
    """Generate the validation clips with the current (or EMA) weights; returns the mp4 paths."""
    v, acc = run.cfg.validation, run.accelerator
    if not v.prompts:
        return []
    if run.is_fsdp:
        log.warning("validation is skipped under FSDP (the sharded transformer cannot run a pipeline on one "
                    "process); generate from a checkpoint instead")
        return []
    written: list[Path] = []
    if acc.is_main_process:
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):  # validation never moves the training RNG
            written = generate_validation(run, step)
    acc.wait_for_everyone()
    return written


def generate_validation(run: Run, step: int) -> list[Path]:
    v, acc, spec, c = run.cfg.validation, run.accelerator, run.spec, run.c
    out_dir = run.out / "validation" / f"step-{step}"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    device = acc.device
    extra = None
    if c.text_encoder is None or c.vae is None:  # cache mode: load the encoders for this validation only
        dtype = MIXED[run.cfg.training.mixed_precision]
        extra = spec.load_components(c.model_id, revision=run.cfg.model.revision, dtype=dtype,
                                     vae_dtype=torch_dtype(run.cfg.model.vae_dtype), device=device, transformer=False)
    parts = extra or c
    scheduler = type(c.scheduler).from_config(c.scheduler.config)  # the pipeline's own: training's is untouched
    vc = dataclasses.replace(c, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder, vae=parts.vae,
                             transformer=run.transformer, scheduler=scheduler)
    if run.ema is not None:
        run.ema.store(run.params)
        run.ema.copy_to(run.params)
    run.transformer.eval()
    pipe = None
    written: list[Path] = []
    try:
        pipe = spec.build_pipeline(vc)
        pipe.set_progress_bar_config(disable=True)
        kw: dict[str, Any] = {"num_frames": v.num_frames, "height": v.height, "width": v.width,
                              "num_inference_steps": v.num_inference_steps, "guidance_scale": v.guidance_scale,
                              "output_type": "np"}
        kw.update(spec.pipeline_call_kwargs({**kw, "fps": v.fps}))
        for i, (short, prompt) in enumerate(zip(v.prompts, run.validation_texts or v.prompts)):
            gen = torch.Generator(device=device).manual_seed(v.seed)
            with torch.no_grad(), acc.autocast():
                frames = pipe(prompt=prompt, negative_prompt=v.negative_prompt or None, generator=gen, **kw).frames[0]
            path = out_dir / f"{i:02d}-{slugify(short)}.mp4"
            write_mp4(path, frames, v.fps)
            written.append(path)
            log_video(run, step, i, short, path, np.asarray(frames))
    finally:
        del pipe, vc
        if extra is not None:
            del extra, parts
        if run.ema is not None:
            run.ema.restore(run.params)
        run.transformer.train()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    (out_dir / "prompts.json").write_text(json.dumps(
        {"step": step, "prompts": v.prompts, "pipeline_prompts": run.validation_texts or v.prompts,
         "files": [p.name for p in written], "seed": v.seed,
         "settings": v.model_dump(mode="json"), "ema": run.ema is not None}, indent=2) + "\n", encoding="utf-8")
    log.info("validation at step %d: %d clips in %.1f s -> %s", step, len(written), time.perf_counter() - t0, out_dir)
    return written


def log_video(run: Run, step: int, i: int, prompt: str, path: Path, frames: np.ndarray) -> None:
    acc = run.accelerator
    for name in run.cfg.logging.log_with:
        try:
            tracker = acc.get_tracker(name, unwrap=False)
            if name == "tensorboard":
                arr = frames if frames.dtype == np.uint8 else (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
                picks = sorted({0, len(arr) // 2, len(arr) - 1})
                tracker.log_images({f"validation/{i:02d}": arr[picks]}, step=step, dataformats="NHWC")
            elif name == "wandb":
                import wandb

                tracker.log({f"validation/{i:02d}": wandb.Video(str(path), caption=prompt, format="mp4")}, step=step)
        except Exception as e:  # noqa: BLE001 -- a tracker problem never stops training
            log.warning("could not log validation clip %d to %s: %s", i, name, e)
