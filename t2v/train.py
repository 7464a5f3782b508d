"""The trainer: LoRA or full fine-tuning of a text-to-video transformer, for every family behind
:class:`t2v.families.base.ModelSpec`.

    t2v train --config CFG --out DIR [--set KEY=VALUE ...] [--resume latest|PATH]
    accelerate launch [--num_processes N ...] -m t2v.train --config CFG --out DIR

Per optimizer step, for each of ``gradient_accumulation_steps`` micro-batches: a batch of one bucket
(:class:`t2v.buckets.BucketBatchSampler`) gives a VAE posterior and the text conditioning, either
encoded on the fly by the frozen VAE and text encoder (``data.path``) or read from a latent cache
(``data.cache_dir``, made by ``t2v prepare``: the VAE and text encoder are then not loaded); the spec
samples latents, noise levels and noise from the run's generator, the transformer predicts, the
spec's loss is back-propagated. Then clipping, the optimizer and LR-schedule step, the EMA update.

Output folder ``DIR``::

    train_config.yaml    the resolved config          base_model.json   the base model it was trained from
    metrics.jsonl        step, loss, lr, grad_norm, step_time, epoch (one line per logged step)
    logs/                tensorboard (or wandb) runs   validation/step-N/*.mp4
    checkpoints/step-N/  resumable state (see below)   lora/ or transformer/   the result
    README.md            model card: base model, data, every setting

Checkpoints are written into ``checkpoints/.tmp-step-N`` and renamed to ``step-N`` after a marker
file (``COMPLETE``) is written last, so a crash while saving never leaves one that looks complete;
the newest ``checkpoint.keep_last`` are kept. One holds the trainable weights (safetensors), the
optimizer and LR-scheduler states (``torch.save``, read back with ``weights_only=True``), the EMA
weights, every process's RNG states (torch CPU/CUDA, numpy, python, and the generator that draws
latents, noise levels and noise), the step and the sampler's position. ``--resume`` restores all of
it, so the losses after a resume equal those of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densecap.checkpoints import checkpoint_problem, pick_checkpoint
from densecap.cli import configure_output
from densecap.config import flatten_dict
from densecap.errors import CaptionerError, ConfigError
from densecap.files import lock_output, normal_mode, replace_dir
from densecap.files import write_json_atomic as write_text_atomic  # it writes any text
from densecap.paths import check_output_dir
from t2v.train_config import TrainConfig
from t2v.videoio import write_mp4

__all__ = [
    "TrainResult",
    "TrainingError",
    "find_checkpoint",
    "list_checkpoints",
    "load_train_config",
    "main",
    "resolved_config",
    "run_from_args",
    "train",
]

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
CKPT_RE = re.compile(r"^step-(\d+)$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MIXED = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# config keys that must not change when a run is resumed (the data is checked by the sampler)
_RESUME_KEYS = ("model.family", "model.id", "model.revision", "training.mode", "lora.rank", "lora.alpha",
                "lora.target_modules", "optimizer.name")


class TrainingError(CaptionerError):
    """Training cannot start or go on: a bad setting, a checkpoint that does not fit, a non-finite loss."""


@dataclass
class TrainResult:
    """What a :func:`train` call did."""

    out_dir: Path
    global_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss, steps run by this call
    stopped_early: bool = False  # ended by stop_after_step (no final export)
    resumed_from: Path | None = None
    lora_dir: Path | None = None
    transformer_dir: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)  # saved by this call


# ----------------------------------------------------------------------------------------------
# config


def load_train_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The config from a YAML file (or a ``configs/train/`` preset name) plus ``KEY=VALUE`` overrides."""
    from densecap.config import load_config, resolve_config

    return load_config(TrainConfig, resolve_config("train", path) if path is not None else None, list(overrides))


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """Every setting, defaults included, as plain data that loads back into the same config."""
    data = cfg.model_dump(mode="json")
    if data["data"].get("buckets") is not None:
        data["data"].pop("num_frames", None)  # only sets the default bucket; refused next to buckets
    return data




# ----------------------------------------------------------------------------------------------
# checkpoints on disk


def list_checkpoints(ckpt_root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step-N`` folders holding the marker) under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir():
            if (p / MARKER).is_file():
                found.append((int(m.group(1)), p))
            else:
                log.warning("%s: no %s marker (an interrupted save?); ignored", p, MARKER)
    return sorted(found)


def find_checkpoint(out_dir: str | os.PathLike, resume: str) -> Path | None:
    """``latest``: the newest complete checkpoint of ``out_dir`` that can be read (None when there is
    none); otherwise a checkpoint folder, or a run folder (its newest readable checkpoint). A newer
    checkpoint whose files are damaged is passed over with a warning naming it, the reason and the one
    used instead; a named checkpoint folder that is damaged, or a run whose checkpoints all are, is a
    TrainingError."""
    if resume == "latest":
        return _readable(list_checkpoints(Path(out_dir) / "checkpoints"))
    p = Path(resume).expanduser()
    if (p / MARKER).is_file():
        why = checkpoint_problem(p)
        if why is not None:
            raise TrainingError(f"{p}: the checkpoint cannot be read ({why})")
        return p
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return _readable(found)
    if p.is_dir() and CKPT_RE.match(p.name):
        raise TrainingError(f"{p}: checkpoint has no {MARKER} marker: it was not completely saved")
    raise TrainingError(f"--resume {resume}: not a checkpoint folder, nor a run folder holding checkpoints")


def _readable(found: list[tuple[int, Path]]) -> Path | None:
    """The newest checkpoint of ``found`` that can be read (a damaged newer one is passed over, with a
    warning); a TrainingError when none can be."""
    try:
        return pick_checkpoint([p for _, p in found])
    except CaptionerError as e:
        raise TrainingError(str(e)) from None


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")



def _rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    info = {
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": [py[0], list(py[1]), py[2]],
        "generator_device": str(generator.device),
    }
    return tensors, info


def _set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    generator.set_state(tensors["generator"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    n = info["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, state, gauss = info["python"]
    random.setstate((version, tuple(state), gauss))


# ----------------------------------------------------------------------------------------------
# data sources: a latent posterior + conditioning per batch, from videos or from a latent cache


class _VideoSource:
    """Videos decoded and encoded on the fly by the frozen VAE and text encoder."""

    needs_encoders = True

    def __init__(self, cfg: TrainConfig) -> None:
        from t2v.data import VideoTextDataset, collate, read_samples

        self.cfg = cfg
        data_cfg = cfg.data
        self.dataset = VideoTextDataset(read_samples(data_cfg.path), data_cfg)
        self.collate = collate
        if self.dataset.skipped:
            log.warning("%d clips skipped; first: %s: %s", len(self.dataset.skipped), *self.dataset.skipped[0])

    @staticmethod
    def config_buckets(cfg: TrainConfig) -> list[tuple[int, int, int]]:
        return cfg.data.bucket_list()

    def buckets(self) -> dict[tuple[int, int, int], int]:
        return self.dataset.bucket_counts()

    def frame_rate(self) -> float | None:
        return self.cfg.data.fps

    def describe(self) -> dict[str, Any]:
        return {"source": "videos (encoded on the fly)", "path": str(Path(self.cfg.data.path).expanduser().resolve()),
                "num_samples": len(self.dataset), "skipped": len(self.dataset.skipped),
                "buckets": {"x".join(map(str, b)): n for b, n in self.buckets().items()}}

    def model_inputs(self, batch: dict, spec, c) -> tuple[dict, dict]:
        dist = spec.encode_video(c, batch["video"])
        cond = spec.encode_prompts(c, batch["caption"])
        return dist, cond


class _CacheSource:
    """Latents and conditioning read from a latent cache (``t2v prepare``); no encoders loaded."""

    needs_encoders = False

    def __init__(self, cfg: TrainConfig) -> None:
        from t2v.cache import CachedLatentDataset, collate_cached

        self.cfg = cfg
        self.dataset = CachedLatentDataset(
            cfg.data.cache_dir, cfg.model.family, caption_dropout=cfg.data.caption_dropout, seed=cfg.data.seed
        )
        self.dataset.check_compatible(cfg.model.family, cfg.model.resolved_id())
        if cfg.data.caption_dropout > 0:
            self.dataset.empty_cond()  # fail now, not at the first dropped caption, if it was not cached
        self.collate = collate_cached

    def buckets(self) -> dict[tuple[int, int, int], int]:
        return self.dataset.bucket_counts()

    def frame_rate(self) -> float | None:
        return self.dataset.info["keyed_on"]["data"].get("fps")

    def describe(self) -> dict[str, Any]:
        keyed = self.dataset.info["keyed_on"]["data"]
        return {"source": "latent cache", "cache_dir": str(Path(self.cfg.data.cache_dir).expanduser().resolve()),
                "path": keyed.get("path"), "num_samples": len(self.dataset),
                "buckets": {"x".join(map(str, b)): n for b, n in self.buckets().items()}}

    def model_inputs(self, batch: dict, spec, c) -> tuple[dict, dict]:
        device = _device_of(c)
        dist = {"mean": batch["mean"].to(device), "logvar": batch["logvar"].to(device)}
        cond = {k: v.to(device) for k, v in batch["cond"].items()}
        return dist, cond


def _device_of(c) -> torch.device:
    return next(c.transformer.parameters()).device


# ----------------------------------------------------------------------------------------------
# the model as the spec sees it during training


class _Forward:
    """The transformer for :meth:`ModelSpec.predict`: calls go through the accelerate wrapper (DDP
    gradient sync, autocast), attributes (``config``, ``device``, ``dtype``) come from the model."""

    def __init__(self, wrapped: torch.nn.Module, model: torch.nn.Module) -> None:
        self.__dict__["_wrapped"] = wrapped
        self.__dict__["_model"] = model

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_model"], name)


@dataclass
class _Run:
    """Everything the loop, checkpoints and validation share."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    spec: Any
    c: Any  # Components (unwrapped transformer)
    source: Any
    sampler: Any
    model: Any  # the prepared (wrapped) transformer
    transformer: torch.nn.Module  # unwrapped
    named_params: dict[str, torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    generator: torch.Generator
    global_step: int = 0
    position: dict | None = None  # sampler state after the last trained batch
    validation_texts: list[str] | None = None  # expanded validation prompts (validation.expand)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.named_params.values())

    @property
    def is_fsdp(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP


# ----------------------------------------------------------------------------------------------
# setup


def _check_shapes(spec, buckets, cfg: TrainConfig) -> None:
    for f, h, w in buckets:
        try:
            spec.check_shape(f, h, w)
        except ValueError as e:
            raise TrainingError(f"data bucket ({f}, {h}, {w}): {e}") from None
    v = cfg.validation
    if v.prompts:
        try:
            spec.check_shape(v.num_frames, v.height, v.width)
        except ValueError as e:
            raise TrainingError(f"validation ({v.num_frames} frames, {v.height}x{v.width}): {e}") from None


def _make_accelerator(cfg: TrainConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    # Another Accelerator of this process (an earlier train() call) fixed the mixed precision; the
    # distributed set-up (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    trackers = list(dict.fromkeys(cfg.logging.log_with))
    if "wandb" in trackers:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise TrainingError("logging.log_with: wandb needs the wandb package (pip install wandb)")
    # Several processes and no GPU (e.g. accelerate launch --multi_gpu on a CPU machine): accelerate
    # sets up gloo only when told to use the CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        return Accelerator(
            cpu=cpu,
            mixed_precision=cfg.training.mixed_precision,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        )
    except (ValueError, RuntimeError) as e:
        raise TrainingError(f"training.mixed_precision={cfg.training.mixed_precision}: {e}") from None


def _make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]):
    o = cfg.optimizer
    kw = {"lr": o.lr, "betas": tuple(o.betas), "weight_decay": o.weight_decay, "eps": o.eps}
    if o.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError("optimizer.name: adamw8bit needs bitsandbytes (pip install bitsandbytes), "
                                "which is not installed; use adamw") from None
        return bnb.optim.AdamW8bit(params, **kw)
    return torch.optim.AdamW(params, **kw)


def _make_scheduler(cfg: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    o = cfg.optimizer
    name = "constant_with_warmup" if o.scheduler == "constant" and o.warmup_steps > 0 else o.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=o.warmup_steps,
                         num_training_steps=cfg.training.max_steps, num_cycles=o.num_cycles, power=o.power)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rank_seed(seed: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed % 2**64, rank, stream]).generate_state(1, dtype=np.uint64)[0] % 2**63)


# ----------------------------------------------------------------------------------------------
# checkpoint save / load


def _trainable_state(run: _Run) -> dict[str, torch.Tensor]:
    """Full (gathered) trainable weights by parameter name, on CPU. Every process must call it."""
    if run.is_fsdp:
        full = run.accelerator.get_state_dict(run.model)
        names = set(run.named_params)
        return {k: v.detach().to("cpu").contiguous() for k, v in full.items() if k in names}
    return {k: p.detach().to("cpu").contiguous() for k, p in run.named_params.items()}


def _save_checkpoint(run: _Run) -> Path:
    from safetensors.torch import save_file

    acc, step = run.accelerator, run.global_step
    root = run.out / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    trainable = _trainable_state(run)
    rank = acc.process_index
    tensors, info = _rng_state(run.generator)
    save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    _write_json_atomic(tmp / f"rng-{rank}.json", info)
    if run.is_fsdp:  # sharded optimizer state: one file per process
        torch.save(run.optimizer.state_dict(), tmp / f"optimizer-{rank}.pt")
    if acc.is_main_process:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        if not run.is_fsdp:
            torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(run.lr_scheduler.state_dict(), tmp / "scheduler.pt")
        ema_info = None
        if run.ema is not None:
            ema_state = run.ema.state_dict()
            save_file({f"shadow.{i:06d}": t.detach().to("cpu").contiguous()
                       for i, t in enumerate(ema_state.pop("shadow_params"))}, str(tmp / "ema.safetensors"))
            ema_info = ema_state
        scaler = getattr(acc, "scaler", None)
        _write_json_atomic(tmp / "state.json", {
            "global_step": step,
            "sampler": run.position,
            "world_size": acc.num_processes,
            "fsdp": run.is_fsdp,
            "ema": ema_info,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "config": resolved_config(run.cfg),
            "saved_at": time.time(),
        })
    acc.wait_for_everyone()
    if acc.is_main_process:
        files = sorted(p.name for p in tmp.iterdir())
        _write_json_atomic(tmp / MARKER, {"step": step, "files": files})
        replace_dir(tmp, final)  # an existing step-N: re-reached after resuming from an older checkpoint
        _prune_checkpoints(root, run.cfg.checkpoint.keep_last)
    acc.wait_for_everyone()
    if acc.is_main_process:
        log.info("saved checkpoint %s", final)
    return final


def _prune_checkpoints(root: Path, keep_last: int | None) -> None:
    if not keep_last:
        return
    found = list_checkpoints(root)
    for _, p in found[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def _read_checkpoint_state(path: Path) -> dict[str, Any]:
    if not (path / MARKER).is_file():
        raise TrainingError(f"{path}: checkpoint has no {MARKER} marker: it was not completely saved")
    try:
        return json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"{path}: unreadable checkpoint state ({e})") from None


def _check_resume_config(path: Path, state: dict, cfg: TrainConfig, world_size: int) -> None:
    then, now = flatten_dict(state.get("config", {})), flatten_dict(resolved_config(cfg))
    diffs = [f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in _RESUME_KEYS if then.get(k) != now.get(k)]
    if diffs:
        raise TrainingError(f"{path}: cannot resume: the checkpoint was trained with other settings ("
                            + "; ".join(diffs) + ")")
    if state.get("world_size") != world_size:
        raise TrainingError(f"{path}: cannot resume: saved by {state.get('world_size')} processes, this run has "
                            f"{world_size} (the data order and RNG states are per process)")


def _load_trainable(path: Path, named_params: dict[str, torch.nn.Parameter]) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(path / "trainable.safetensors"))
    missing = sorted(set(named_params) - set(sd))
    extra = sorted(set(sd) - set(named_params))
    if missing or extra:
        raise TrainingError(f"{path}: trainable weights do not fit the model (missing {missing[:3]}, "
                            f"unexpected {extra[:3]})")
    with torch.no_grad():
        for name, p in named_params.items():
            t = sd[name]
            if t.shape != p.shape:
                raise TrainingError(f"{path}: {name} has shape {tuple(t.shape)}, the model {tuple(p.shape)}")
            p.copy_(t.to(device=p.device, dtype=p.dtype))


def _load_rest(run: _Run, path: Path, state: dict) -> None:
    """Optimizer, scheduler, EMA, scaler, RNG, generator, step and sampler position (after prepare)."""
    from safetensors.torch import load_file

    acc = run.accelerator
    rank = acc.process_index
    opt_file = path / (f"optimizer-{rank}.pt" if state.get("fsdp") else "optimizer.pt")
    run.optimizer.load_state_dict(torch.load(opt_file, map_location="cpu", weights_only=True))
    run.lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    if run.ema is not None:
        if state.get("ema") is None:
            raise TrainingError(f"{path}: the checkpoint has no EMA weights (it was trained with ema.enabled: false)")
        shadow = load_file(str(path / "ema.safetensors"))
        ema_state = dict(state["ema"])
        device = run.params[0].device if run.params else "cpu"
        ema_state["shadow_params"] = [shadow[k].to(device) for k in sorted(shadow)]
        run.ema.load_state_dict(ema_state)
    scaler = getattr(acc, "scaler", None)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    run.global_step = int(state["global_step"])
    run.position = state.get("sampler")
    if run.position is not None:
        run.sampler.load_state_dict(run.position)
    tensors = load_file(str(path / f"rng-{rank}.safetensors"))
    info = json.loads((path / f"rng-{rank}.json").read_text(encoding="utf-8"))
    _set_rng_state(tensors, info, run.generator)


# ----------------------------------------------------------------------------------------------
# validation


_write_mp4 = write_mp4  # the mp4 writer lives in t2v.videoio (shared with t2v generate)


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.lower()).strip("-")
    return s[:n].strip("-") or "prompt"


def _expand_validation_prompts(cfg: TrainConfig, spec, model_id: str, out: Path) -> list[str]:
    """``validation.prompts`` expanded with ``validation.expand`` for this model's tokenizer; the
    expansions go to ``OUT/validation/expansions.json``."""
    from t2v.expansion import expand_for_generation

    expansions = expand_for_generation(cfg.validation.expand, list(cfg.validation.prompts), family=spec.name,
                                       model_id=model_id, revision=cfg.model.revision)
    _write_json_atomic(out / "validation" / "expansions.json", expansions)
    for e in expansions:
        log.info("validation prompt %r: %s (%s tokens)", e["prompt"][:60], e["status"], e.get("tokens"))
    return [e["text"] for e in expansions]


def _validate(run: _Run, step: int) -> list[Path]:
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
            written = _generate_validation(run, step)
    acc.wait_for_everyone()
    return written


def _generate_validation(run: _Run, step: int) -> list[Path]:
    v, acc, spec, c = run.cfg.validation, run.accelerator, run.spec, run.c
    out_dir = run.out / "validation" / f"step-{step}"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    device = acc.device
    extra = None
    if c.text_encoder is None or c.vae is None:  # cache mode: load the encoders for this validation only
        dtype = _MIXED[run.cfg.training.mixed_precision]
        extra = spec.load_components(c.model_id, revision=run.cfg.model.revision, dtype=dtype,
                                     vae_dtype=_DTYPES[run.cfg.model.vae_dtype], device=device, transformer=False)
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
            path = out_dir / f"{i:02d}-{_slug(short)}.mp4"
            _write_mp4(path, frames, v.fps)
            written.append(path)
            _log_video(run, step, i, short, path, np.asarray(frames))
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


def _log_video(run: _Run, step: int, i: int, prompt: str, path: Path, frames: np.ndarray) -> None:
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


# ----------------------------------------------------------------------------------------------
# outputs


def loadable_model_ref(model_id: str) -> str:
    """What ``DiffusionPipeline.from_pretrained`` accepts for ``model_id``: the absolute local folder
    for a ``tiny://`` reference or a local path, the hub id unchanged."""
    from t2v.tiny import resolve_t2v_model

    resolved = resolve_t2v_model(model_id)
    return str(Path(resolved).resolve()) if Path(resolved).exists() else resolved


def _write_base_model(out: Path, cfg: TrainConfig, spec, model_id: str) -> None:
    _write_json_atomic(out / "base_model.json", {
        "model_id": model_id,  # as given in the config (e.g. tiny://wan)
        # what plain diffusers loads: DiffusionPipeline.from_pretrained(this, revision=revision)
        "pretrained_model_name_or_path": loadable_model_ref(model_id),
        "revision": cfg.model.revision,
        "family": spec.name,
        "pipeline_class": spec.pipeline_class_name,
        "mode": cfg.training.mode,
        "output": "lora" if cfg.training.mode == "lora" else "transformer",
    })


def _model_card(run: _Run, model_id: str, data: dict, final_loss: float | None) -> str:
    import yaml

    cfg, spec = run.cfg, run.spec
    lora = cfg.training.mode == "lora"
    settings = yaml.safe_dump(resolved_config(cfg), sort_keys=False)
    buckets = ", ".join(f"{b}: {n}" for b, n in data.get("buckets", {}).items())
    if lora:
        usage = (f"```python\nimport torch\nfrom diffusers import {spec.pipeline_class_name}\n\n"
                 f"pipe = {spec.pipeline_class_name}.from_pretrained(\"{loadable_model_ref(model_id)}\")\n"
                 f"pipe.load_lora_weights(\"{run.out / 'lora'}\")\n```\n")
        what = (f"A LoRA (rank {cfg.lora.rank}, alpha {cfg.lora.alpha or cfg.lora.rank}) on "
                f"{', '.join(cfg.lora.target_modules or spec.lora_target_modules)} of the transformer, "
                "in diffusers' format (`lora/pytorch_lora_weights.safetensors`)")
    else:
        cls = type(run.transformer).__name__
        usage = (f"```python\nfrom diffusers import {spec.pipeline_class_name}, {cls}\n\n"
                 f"transformer = {cls}.from_pretrained(\"{run.out / 'transformer'}\")\n"
                 f"pipe = {spec.pipeline_class_name}.from_pretrained(\"{loadable_model_ref(model_id)}\", "
                 "transformer=transformer)\n```\n")
        what = "A fully fine-tuned transformer (`transformer/`, diffusers format)"
    lines = [
        "---",
        f"base_model: {model_id}",
        "library_name: diffusers",
        "tags:",
        "- text-to-video",
        f"- {spec.name}",
        f"- {'lora' if lora else 'full-fine-tune'}",
        "---",
        "",
        f"# {run.out.name}",
        "",
        f"{what}, fine-tuned from `{model_id}` ({spec.name} family) with densecap-t2v's trainer for "
        f"{run.global_step} steps" + (f" (final loss {final_loss:.4g})." if final_loss is not None else "."),
        "",
        "## Data",
        "",
        f"- source: {data.get('source')}",
        f"- path: `{data.get('path')}`" + (f" (cache `{data['cache_dir']}`)" if data.get("cache_dir") else ""),
        f"- samples: {data.get('num_samples')}",
        f"- buckets (frames x height x width: samples): {buckets}",
        "",
        "## Use",
        "",
        usage,
        "## Settings",
        "",
        "```yaml",
        settings.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _export(run: _Run, model_id: str, data: dict, final_loss: float | None) -> tuple[Path | None, Path | None]:
    from t2v.lora import save_lora

    acc, cfg = run.accelerator, run.cfg
    dtype = _DTYPES[cfg.training.save_dtype]
    lora_dir = transformer_dir = None
    trainable = _trainable_state(run) if run.is_fsdp else None
    if acc.is_main_process:
        if run.ema is not None:
            run.ema.copy_to(run.params)
        if cfg.training.mode == "lora":
            lora_dir = run.out / "lora"
            from t2v.lora import lora_state_dict

            sd = None
            if trainable is not None:  # FSDP: gathered weights, renamed to peft's names
                sd = {k.replace(".default.", "."): v for k, v in trainable.items()}
            else:
                sd = lora_state_dict(run.transformer)
            save_lora(lora_dir, run.transformer, run.spec, dtype=dtype, comfy=cfg.lora.comfy, state_dict=sd)
        else:
            transformer_dir = run.out / "transformer"
            model = run.transformer
            if trainable is not None:
                _load_trainable_into(model, trainable)
            _cast_for_save(model, dtype)
            tmp = run.out / ".tmp-transformer"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            normal_mode(tmp)  # safetensors writes owner-only files
            shutil.rmtree(transformer_dir, ignore_errors=True)
            os.replace(tmp, transformer_dir)
        write_text_atomic(run.out / "README.md", _model_card(run, model_id, data, final_loss))
    acc.wait_for_everyone()
    return lora_dir, transformer_dir


def _cast_for_save(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the weights to ``dtype``, except the modules the model class keeps in float32 (as
    ``from_pretrained(torch_dtype=...)`` does)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not keep.intersection(name.split(".")):
            t.data = t.data.to(dtype)


def _load_trainable_into(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in sd.items():
            if k in params:
                params[k].copy_(v.to(params[k].device, params[k].dtype))


# ----------------------------------------------------------------------------------------------
# the run


def _batches(loader, sampler) -> Iterator[dict]:
    """Batches forever, epoch after epoch (the sampler moves to the next epoch at each end)."""
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise TrainingError(f"epoch {sampler.epoch} has no batches for this process")


def _prepare_output(out: Path, resume: str | None, is_main: bool, held: contextlib.ExitStack) -> None:
    if not is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(lock_output(out, "t2v train"))  # one run per folder, until train() returns
    ckpts = out / "checkpoints"
    if resume is None and list_checkpoints(ckpts):
        raise TrainingError(f"{out} already holds checkpoints of a run: pass --resume latest to continue it, "
                            "or choose another --out")
    if ckpts.is_dir():  # leftovers of saves that crashed
        for p in ckpts.iterdir():
            if p.name.startswith((".tmp-step-", ".old-step-")):
                shutil.rmtree(p, ignore_errors=True)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (a crashed run went past its last checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str | None = None,
    stop_after_step: int | None = None,
) -> TrainResult:
    """Run (or continue) a training run into ``out_dir``; see the module doc.

    ``resume``: ``"latest"`` (the newest complete checkpoint of ``out_dir`` that can be read, passing
    over a damaged newer one with a warning; a fresh start when there is none) or a checkpoint / run
    folder. ``stop_after_step``: end this call after that global step as an interruption would (a
    checkpoint is saved there, nothing is exported), e.g. for time-limited jobs that are continued with
    ``resume="latest"``. ``out_dir`` is locked (``out_dir/.lock``) for the length of the call: a
    second run on it stops with an error naming the holder's pid.
    """
    with contextlib.ExitStack() as held:
        return _train(cfg, out_dir, resume=resume, stop_after_step=stop_after_step, held=held)


def _train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: str | None, stop_after_step: int | None,
           held: contextlib.ExitStack) -> TrainResult:
    import yaml
    from torch.utils.data import DataLoader

    from t2v.buckets import BucketBatchSampler
    from t2v.families import get_family

    out = check_output_dir(Path(out_dir).expanduser().resolve())
    spec = get_family(cfg.model.family)
    model_id = cfg.model.resolved_id()
    tcfg = cfg.training
    if cfg.data.cache_dir is None:
        _check_shapes(spec, _VideoSource.config_buckets(cfg), cfg)

    accelerator = _make_accelerator(cfg, out)
    is_main = accelerator.is_main_process
    _prepare_output(out, resume, is_main, held)
    accelerator.wait_for_everyone()
    ckpt_path = find_checkpoint(out, resume) if resume is not None else None
    ckpt_state = None
    if ckpt_path is not None:
        ckpt_state = _read_checkpoint_state(ckpt_path)
        _check_resume_config(ckpt_path, ckpt_state, cfg, accelerator.num_processes)
    elif resume is not None and resume != "latest":
        raise TrainingError(f"--resume {resume}: no checkpoint found")
    elif resume == "latest":
        log.info("--resume latest: %s has no checkpoint yet; starting from step 0", out)

    # validation prompts are expanded before the video model is loaded (the expander's language model and
    # the video model are never in memory together); the expansion cache makes a resume cheap
    validation_texts = None
    if is_main and cfg.validation.prompts and cfg.validation.expand:
        validation_texts = _expand_validation_prompts(cfg, spec, model_id, out)

    if torch.cuda.is_available() and tcfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # data ------------------------------------------------------------------------------------
    source = _CacheSource(cfg) if cfg.data.cache_dir is not None else _VideoSource(cfg)
    _check_shapes(spec, list(source.buckets()), cfg)  # the cache's buckets are known only now
    spec.use_data_frame_rate(source.frame_rate())
    sampler = BucketBatchSampler(source.dataset, tcfg.batch_size, seed=cfg.data.seed, shuffle=True,
                                 drop_last=cfg.data.drop_last, num_replicas=accelerator.num_processes,
                                 rank=accelerator.process_index)
    if len(sampler.epoch_batches(0)) == 0:
        raise TrainingError(f"the dataset has {len(source.dataset)} samples: not enough for one batch of "
                            f"{tcfg.batch_size} on each of {accelerator.num_processes} processes"
                            + (" (data.drop_last drops the smaller batches)" if cfg.data.drop_last else ""))
    loader = DataLoader(source.dataset, batch_sampler=sampler, collate_fn=source.collate,
                        num_workers=cfg.data.num_workers, pin_memory=accelerator.device.type == "cuda",
                        prefetch_factor=2 if cfg.data.num_workers else None,
                        persistent_workers=cfg.data.num_workers > 0,
                        # spawn, not fork: a forked worker can inherit a PyAV reader the parent has
                        # not collected yet, and freeing it there hangs on decoder threads that do
                        # not exist in the child
                        multiprocessing_context="spawn" if cfg.data.num_workers else None,
                        generator=torch.Generator())  # not the global RNG (resume exactness)
    data_info = source.describe()

    # model -----------------------------------------------------------------------------------
    from accelerate.utils import set_seed

    set_seed(tcfg.seed)  # the same initial weights (LoRA init) on every process
    weight_dtype = _MIXED[tcfg.mixed_precision]
    device = accelerator.device
    # Frozen weights in the autocast dtype; a fully trained transformer keeps float32 master weights
    # (loaded as such, not rounded through the autocast dtype).
    full_fp32 = tcfg.mode == "full" and weight_dtype != torch.float32
    c = spec.load_components(
        model_id, revision=cfg.model.revision, dtype=weight_dtype, vae_dtype=_DTYPES[cfg.model.vae_dtype],
        device=device, text_encoder=source.needs_encoders, vae=source.needs_encoders, transformer=not full_fp32,
    )
    if full_fp32:
        c.transformer = spec.load_components(model_id, revision=cfg.model.revision, dtype=torch.float32,
                                             device=device, text_encoder=False, vae=False).transformer
    transformer = c.transformer
    if tcfg.mode == "lora":
        from t2v.lora import add_lora

        try:
            add_lora(transformer, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                     target_modules=cfg.lora.target_modules or list(spec.lora_target_modules), init=cfg.lora.init)
            if cfg.lora.comfy:  # fail now, not after training, when the layout cannot name every layer
                from t2v.lora import lora_state_dict, to_comfy

                to_comfy(lora_state_dict(transformer), spec)
        except ValueError as e:
            raise TrainingError(f"lora: {e}") from None
    else:
        transformer.requires_grad_(True)
    if tcfg.gradient_checkpointing:
        if not getattr(transformer, "_supports_gradient_checkpointing", False):
            raise TrainingError(f"{type(transformer).__name__} does not support gradient checkpointing")
        transformer.enable_gradient_checkpointing()
    transformer.train()
    named_params = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    params = list(named_params.values())
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in transformer.parameters())
    if is_main:
        log.info("%s: training %s of %s transformer weights (%s)", model_id, f"{n_train:,}", f"{n_all:,}", tcfg.mode)

    optimizer = _make_optimizer(cfg, params)
    lr_scheduler = _make_scheduler(cfg, optimizer)
    ema = None
    if cfg.ema.enabled:
        from diffusers.training_utils import EMAModel

        e = cfg.ema
        ema = EMAModel(params, decay=e.decay, min_decay=e.min_decay, update_after_step=e.update_after_step,
                       use_ema_warmup=e.warmup, inv_gamma=e.inv_gamma, power=e.power)
    if ckpt_path is not None:
        _load_trainable(ckpt_path, named_params)  # before prepare: wrappers see the loaded weights
    model, optimizer = accelerator.prepare(transformer, optimizer)
    train_c = dataclasses.replace(c, transformer=_Forward(model, transformer))

    rank = accelerator.process_index
    _seed_everything(_rank_seed(tcfg.seed, rank, 1))  # per-process dropout etc.
    generator = torch.Generator(device=device).manual_seed(_rank_seed(tcfg.seed, rank, 2))
    run = _Run(cfg=cfg, out=out, accelerator=accelerator, spec=spec, c=c, source=source, sampler=sampler,
               model=model, transformer=transformer, named_params=named_params, optimizer=optimizer,
               lr_scheduler=lr_scheduler, ema=ema, generator=generator, validation_texts=validation_texts)
    if ckpt_path is not None:
        _load_rest(run, ckpt_path, ckpt_state)
        log.info("resumed from %s at step %d", ckpt_path, run.global_step)

    metrics_path = out / "metrics.jsonl"
    if is_main:
        write_text_atomic(out / "train_config.yaml", yaml.safe_dump(resolved_config(cfg), sort_keys=False))
        _write_base_model(out, cfg, spec, model_id)
        if ckpt_path is not None:
            _trim_metrics(metrics_path, run.global_step)
        elif metrics_path.exists():
            metrics_path.unlink()
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                for k, v in flatten_dict(resolved_config(cfg)).items()}
        accelerator.init_trackers(cfg.logging.project, config=flat,
                                  init_kwargs={"wandb": {"name": cfg.logging.run_name or out.name}})
    if is_main:
        log.info("data: %s", json.dumps(data_info))

    result = TrainResult(out_dir=out, global_step=run.global_step, resumed_from=ckpt_path)
    if run.global_step >= tcfg.max_steps:
        log.info("step %d: already at training.max_steps (%d)", run.global_step, tcfg.max_steps)
    accum = tcfg.gradient_accumulation_steps
    timestep_cfg = tcfg.timesteps
    stream = _batches(loader, sampler)
    last_loss = None
    scaler = getattr(accelerator, "scaler", None)
    closing = contextlib.ExitStack()
    metrics_fh = closing.enter_context(open(metrics_path, "a", encoding="utf-8")) if is_main else None  # noqa: SIM115
    try:
        while run.global_step < tcfg.max_steps:
            t0 = time.perf_counter()
            micro = []
            sources: list[str] = []
            batch = None
            for k in range(accum):
                batch = next(stream)
                sources = list(batch.get("source", []))
                dist, cond = source.model_inputs(batch, spec, train_c)
                with torch.no_grad():
                    latents = spec.latents_from_dist(train_c, dist, generator, sample=tcfg.sample_posterior)
                inputs = spec.training_step_inputs(train_c, latents, cond, generator=generator,
                                                   timestep_cfg=timestep_cfg)
                sync = contextlib.nullcontext() if k == accum - 1 else accelerator.no_sync(model)
                with sync:
                    with accelerator.autocast():
                        pred = spec.predict(train_c, inputs, cond)
                    loss = spec.loss(pred, inputs)
                    micro.append(loss.detach().float())
                    accelerator.backward(loss / accum)  # always: every process joins the gradient sync
            step_no = run.global_step + 1
            local = torch.stack(micro).mean()
            losses = accelerator.gather(local.reshape(1).to(device))
            if not torch.isfinite(losses).all():
                bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
                where = "" if accelerator.num_processes == 1 else f" on process {', '.join(map(str, bad))}"
                raise TrainingError(
                    f"step {step_no}: the loss is {losses[bad[0]].item()}{where} (non-finite); stopping. "
                    f"The last good checkpoint is kept ({_last_ckpt_text(out)}); batch: {', '.join(sources[:4])}")
            grad_norm = accelerator.clip_grad_norm_(params, tcfg.max_grad_norm or float("inf"))
            grad_norm_value = float(grad_norm) if grad_norm is not None else float("nan")
            if not math.isfinite(grad_norm_value) and scaler is None:
                raise TrainingError(
                    f"step {step_no}: the gradient norm is {grad_norm_value} (non-finite) with a finite loss "
                    f"({losses.mean().item():.6g}); stopping. The last good checkpoint is kept "
                    f"({_last_ckpt_text(out)})")
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            run.global_step = step_no
            run.position = sampler.state_dict(after=batch)
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            step_time = time.perf_counter() - t0
            last_loss = float(losses.mean())
            result.losses[step_no] = last_loss
            result.global_step = step_no
            if step_no % cfg.logging.every == 0 or step_no == tcfg.max_steps:
                rec = {"step": step_no, "loss": last_loss, "lr": float(lr_scheduler.get_last_lr()[0]),
                       "grad_norm": grad_norm_value, "step_time": round(step_time, 6),
                       "epoch": int(batch["position"][0]) if batch.get("position") else None}
                if ema is not None:
                    rec["ema_decay"] = float(getattr(ema, "cur_decay_value", 0.0) or 0.0)
                if metrics_fh is not None:
                    metrics_fh.write(json.dumps(rec) + "\n")
                    metrics_fh.flush()
                accelerator.log({k: v for k, v in rec.items() if k != "step" and v is not None}, step=step_no)
            last = step_no == tcfg.max_steps
            stopping = stop_after_step is not None and step_no >= stop_after_step and not last
            every = cfg.checkpoint.every
            if (every and step_no % every == 0) or (last and cfg.checkpoint.at_end) or stopping:
                result.checkpoints.append(_save_checkpoint(run))
            ve = cfg.validation.every
            if (ve and step_no % ve == 0) or (last and cfg.validation.at_end):
                _validate(run, step_no)
            if stopping:
                result.stopped_early = True
                log.info("stopping after step %d (stop_after_step); continue with --resume latest", step_no)
                return result
        if not result.stopped_early:
            result.lora_dir, result.transformer_dir = _export(run, model_id, data_info, last_loss)
        return result
    finally:
        closing.close()
        for tracker in getattr(accelerator, "trackers", []):
            with contextlib.suppress(Exception):
                tracker.finish()


def _last_ckpt_text(out: Path) -> str:
    found = list_checkpoints(out / "checkpoints")
    return str(found[-1][1]) if found else "none was saved yet"


# ----------------------------------------------------------------------------------------------
# command line (python -m t2v.train / accelerate launch -m t2v.train)


def run_from_args(config: str | None, out: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (),
                  resume: str | None = None, stop_after_step: int | None = None) -> TrainResult:
    """What ``t2v train`` and ``python -m t2v.train`` do."""
    # the trainer's lines (data, checkpoints, validation) are these commands' progress: shown by default
    log.setLevel(min(logging.INFO, logging.getLogger().level))
    if config is None:
        raise ConfigError("--config is required (a YAML file or a preset name such as tiny)")
    cfg = load_train_config(config, overrides)
    return train(cfg, out, resume=resume, stop_after_step=stop_after_step)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m t2v.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config file or preset name (configs/train/NAME.yaml)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable; values are YAML)")
    parser.add_argument("--resume", default=None, metavar="latest|PATH", help="continue from a checkpoint")
    parser.add_argument("--stop-after-step", type=int, default=None, metavar="N",
                        help="end after global step N, saving a checkpoint (continue later with --resume latest)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show info logs, and the libraries' progress bars and warnings")
    args = parser.parse_args(argv)
    configure_output(debug=args.debug, verbose=args.verbose)
    try:
        result = run_from_args(args.config, args.out, args.overrides, args.resume, args.stop_after_step)
    except CaptionerError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(json.dumps({"out_dir": str(result.out_dir), "global_step": result.global_step,
                      "stopped_early": result.stopped_early,
                      "lora_dir": str(result.lora_dir) if result.lora_dir else None,
                      "transformer_dir": str(result.transformer_dir) if result.transformer_dir else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
