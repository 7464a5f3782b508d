"""Setting a training run up: the output folder (locked; an existing run is continued only with
``--resume``), the checkpoint to resume from, the accelerator, the data (source, bucket sampler,
loader), the model (+ LoRA, gradient checkpointing), optimizer, LR schedule and EMA, and the files a
run writes first (``train_config.yaml``, ``base_model.json``, the metrics file, the trackers)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densecap.config import flatten_dict
from densecap.devices import torch_dtype
from densecap.files import lock_output
from densecap.files import write_json_atomic as write_text_atomic  # it writes any text
from densecap.training import MetricsLog, clear_staging, find_checkpoint, list_checkpoints
from t2v.train_config import TrainConfig
from t2v.trainer.checkpoint import check_resume_config, load_rest, load_trainable, read_state
from t2v.trainer.export import write_base_model
from t2v.trainer.sources import make_source
from t2v.trainer.state import MIXED, Forward, Run, TrainingError, resolved_config
from t2v.trainer.validation import expand_validation_prompts

__all__ = ["check_shapes", "make_accelerator", "prepare_output", "rank_seed", "setup", "start_outputs"]

log = logging.getLogger("t2v.train")


def check_shapes(spec, buckets, cfg: TrainConfig) -> None:
    """Every data bucket and the validation size fit the family (e.g. frame counts of 4k+1)."""
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


def make_accelerator(cfg: TrainConfig, out: Path):
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


def _make_ema(cfg: TrainConfig, params: list[torch.nn.Parameter]):
    if not cfg.ema.enabled:
        return None
    from diffusers.training_utils import EMAModel

    e = cfg.ema
    return EMAModel(params, decay=e.decay, min_decay=e.min_decay, update_after_step=e.update_after_step,
                    use_ema_warmup=e.warmup, inv_gamma=e.inv_gamma, power=e.power)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, stream: int) -> int:
    """A seed of its own for each process and stream, derived from the run's seed."""
    return int(np.random.SeedSequence([seed % 2**64, rank, stream]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def prepare_output(out: Path, resume: str | None, is_main: bool, held: contextlib.ExitStack) -> None:
    """Lock ``out`` (one run per folder) and refuse to start over an existing run without ``--resume``."""
    if not is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(lock_output(out, "t2v train"))  # one run per folder, until train() returns
    ckpts = out / "checkpoints"
    if resume is None and list_checkpoints(ckpts):
        raise TrainingError(f"{out} already holds checkpoints of a run: pass --resume latest to continue it, "
                            "or choose another --out")
    clear_staging(ckpts)  # leftovers of saves that crashed


def _resume_point(out: Path, resume: str | None, cfg: TrainConfig, world_size: int) -> tuple[Path | None, dict | None]:
    ckpt_path = find_checkpoint(out, resume, error=TrainingError) if resume is not None else None
    if ckpt_path is not None:
        state = read_state(ckpt_path)
        check_resume_config(ckpt_path, state, cfg, world_size)
        return ckpt_path, state
    if resume is not None and resume != "latest":
        raise TrainingError(f"--resume {resume}: no checkpoint found")
    if resume == "latest":
        log.info("--resume latest: %s has no checkpoint yet; starting from step 0", out)
    return None, None


def _data(cfg: TrainConfig, spec, accelerator) -> tuple[Any, Any, Any]:
    """The batch source, the bucket sampler (resumable, sharded per process) and the loader."""
    from torch.utils.data import DataLoader

    from t2v.buckets import BucketBatchSampler

    tcfg = cfg.training
    source = make_source(cfg)
    check_shapes(spec, list(source.buckets()), cfg)  # the cache's buckets are known only now
    spec.use_data_frame_rate(source.frame_rate())
    sampler = BucketBatchSampler(source.dataset, tcfg.batch_size, seed=cfg.data.seed, shuffle=True,
                                 drop_last=cfg.data.drop_last, num_replicas=accelerator.num_processes,
                                 rank=accelerator.process_index)
    if len(sampler.epoch_batches(0)) == 0:
        raise TrainingError(f"the dataset has {len(source.dataset)} samples: not enough for one batch of "
                            f"{tcfg.batch_size} on each of {accelerator.num_processes} processes"
                            + (" (data.drop_last drops the smaller batches)" if cfg.data.drop_last else ""))
    workers = cfg.data.num_workers
    loader = DataLoader(source.dataset, batch_sampler=sampler, collate_fn=source.collate,
                        num_workers=workers, pin_memory=accelerator.device.type == "cuda",
                        prefetch_factor=2 if workers else None, persistent_workers=workers > 0,
                        # spawn, not fork: a forked worker can inherit a PyAV reader the parent has
                        # not collected yet, and freeing it there hangs on decoder threads that do
                        # not exist in the child
                        multiprocessing_context="spawn" if workers else None,
                        generator=torch.Generator())  # not the global RNG (resume exactness)
    return source, sampler, loader


def _trainable_transformer(cfg: TrainConfig, spec, transformer) -> None:
    """Make the transformer trainable as ``training.mode`` says: LoRA layers added, or every weight."""
    if cfg.training.mode == "lora":
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
    if cfg.training.gradient_checkpointing:
        if not getattr(transformer, "_supports_gradient_checkpointing", False):
            raise TrainingError(f"{type(transformer).__name__} does not support gradient checkpointing")
        transformer.enable_gradient_checkpointing()
    transformer.train()


def _model(cfg: TrainConfig, spec, model_id: str, source, device) -> Any:
    """The family's components, with the transformer made trainable."""
    from accelerate.utils import set_seed

    tcfg = cfg.training
    set_seed(tcfg.seed)  # the same initial weights (LoRA init) on every process
    weight_dtype = MIXED[tcfg.mixed_precision]
    # Frozen weights in the autocast dtype; a fully trained transformer keeps float32 master weights
    # (loaded as such, not rounded through the autocast dtype).
    full_fp32 = tcfg.mode == "full" and weight_dtype != torch.float32
    c = spec.load_components(
        model_id, revision=cfg.model.revision, dtype=weight_dtype, vae_dtype=torch_dtype(cfg.model.vae_dtype),
        device=device, text_encoder=source.needs_encoders, vae=source.needs_encoders, transformer=not full_fp32,
    )
    if full_fp32:
        c.transformer = spec.load_components(model_id, revision=cfg.model.revision, dtype=torch.float32,
                                             device=device, text_encoder=False, vae=False).transformer
    _trainable_transformer(cfg, spec, c.transformer)
    return c


def setup(cfg: TrainConfig, out: Path, resume: str | None, held: contextlib.ExitStack) -> tuple[Run, Path | None]:
    """Everything up to the first step; returns the run and the checkpoint it resumed from (or None)."""
    from t2v.families import get_family

    spec = get_family(cfg.model.family)
    model_id = cfg.model.resolved_id()
    if cfg.data.cache_dir is None:
        check_shapes(spec, cfg.data.bucket_list(), cfg)
    accelerator = make_accelerator(cfg, out)
    prepare_output(out, resume, accelerator.is_main_process, held)
    accelerator.wait_for_everyone()
    ckpt_path, ckpt_state = _resume_point(out, resume, cfg, accelerator.num_processes)
    # validation prompts are expanded before the video model is loaded (the expander's language model and
    # the video model are never in memory together); the expansion cache makes a resume cheap
    validation_texts = None
    if accelerator.is_main_process and cfg.validation.prompts and cfg.validation.expand:
        validation_texts = expand_validation_prompts(cfg, spec, model_id, out)
    if torch.cuda.is_available() and cfg.training.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    source, sampler, loader = _data(cfg, spec, accelerator)
    c = _model(cfg, spec, model_id, source, accelerator.device)
    transformer = c.transformer
    named_params = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    params = list(named_params.values())
    if accelerator.is_main_process:
        log.info("%s: training %s of %s transformer weights (%s)", model_id, f"{sum(p.numel() for p in params):,}",
                 f"{sum(p.numel() for p in transformer.parameters()):,}", cfg.training.mode)
    optimizer = _make_optimizer(cfg, params)
    lr_scheduler = _make_scheduler(cfg, optimizer)
    ema = _make_ema(cfg, params)
    if ckpt_path is not None:
        load_trainable(ckpt_path, named_params)  # before prepare: wrappers see the loaded weights
    model, optimizer = accelerator.prepare(transformer, optimizer)

    rank = accelerator.process_index
    _seed_everything(rank_seed(cfg.training.seed, rank, 1))  # per-process dropout etc.
    generator = torch.Generator(device=accelerator.device).manual_seed(rank_seed(cfg.training.seed, rank, 2))
    run = Run(cfg=cfg, out=out, accelerator=accelerator, spec=spec, model_id=model_id, c=c, source=source,
              sampler=sampler, loader=loader, model=model, transformer=transformer, named_params=named_params,
              optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema, generator=generator,
              train_c=dataclasses.replace(c, transformer=Forward(model, transformer)),
              validation_texts=validation_texts, data_info=source.describe())
    if ckpt_path is not None:
        load_rest(run, ckpt_path, ckpt_state)
        log.info("resumed from %s at step %d", ckpt_path, run.global_step)
    return run, ckpt_path


def start_outputs(run: Run, resumed: bool) -> MetricsLog | None:
    """The files a run writes before its first step (main process): the resolved config, the base model,
    the metrics file (trimmed to the checkpoint's step on resume), the trackers. Returns the metrics log."""
    import yaml

    if not run.is_main:
        return None
    cfg, out = run.cfg, run.out
    write_text_atomic(out / "train_config.yaml", yaml.safe_dump(resolved_config(cfg), sort_keys=False))
    write_base_model(out, cfg, run.spec, run.model_id)
    metrics = MetricsLog(out / "metrics.jsonl")
    metrics.start(run.global_step if resumed else None)
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
            for k, v in flatten_dict(resolved_config(cfg)).items()}
    run.accelerator.init_trackers(cfg.logging.project, config=flat,
                                  init_kwargs={"wandb": {"name": cfg.logging.run_name or out.name}})
    log.info("data: %s", json.dumps(run.data_info))
    return metrics
