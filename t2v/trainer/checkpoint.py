"""A video-training run's checkpoint, on the toolkit's convention (:mod:`densecap.training`: staged in
``.tmp-step-N``, marker written last, renamed to ``step-N``).

One holds the trainable weights (``trainable.safetensors``), the optimizer and LR-scheduler states
(``torch.save``, read back with ``weights_only=True``; one optimizer file per process under FSDP), the
EMA weights, every process's RNG states (``rng-RANK.*``: torch CPU/CUDA, numpy, python and the
generator that draws latents, noise levels and noise), the step, the sampler's position, the grad
scaler and the resolved config (``state.json``). Restoring all of it makes the losses after a resume
equal those of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from densecap.training import (
    commit_checkpoint,
    config_diffs,
    list_checkpoints,
    read_checkpoint_state,
    staging_dir,
    write_json,
)
from densecap.training.rng import load_rng, save_rng
from t2v.train_config import TrainConfig
from t2v.trainer.state import RESUME_KEYS, Run, TrainingError, resolved_config

__all__ = ["check_resume_config", "last_checkpoint_text", "load_rest", "load_trainable", "read_state",
           "save_checkpoint", "trainable_state"]

log = logging.getLogger("t2v.train")


def trainable_state(run: Run) -> dict[str, torch.Tensor]:
    """Full (gathered) trainable weights by parameter name, on CPU. Every process must call it."""
    if run.is_fsdp:
        full = run.accelerator.get_state_dict(run.model)
        names = set(run.named_params)
        return {k: v.detach().to("cpu").contiguous() for k, v in full.items() if k in names}
    return {k: p.detach().to("cpu").contiguous() for k, p in run.named_params.items()}


def _main_process_files(run: Run, tmp: Path, trainable: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    acc = run.accelerator
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
    write_json(tmp / "state.json", {
        "global_step": run.global_step,
        "sampler": run.position,
        "world_size": acc.num_processes,
        "fsdp": run.is_fsdp,
        "ema": ema_info,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": resolved_config(run.cfg),
        "saved_at": time.time(),
    })


def save_checkpoint(run: Run) -> Path:
    """Save the run's state as ``OUT/checkpoints/step-N`` (every process takes part); returns the folder."""
    acc, step = run.accelerator, run.global_step
    root = run.out / "checkpoints"
    tmp = root / f".tmp-step-{step}"
    if acc.is_main_process:
        staging_dir(root, step)
    acc.wait_for_everyone()
    trainable = trainable_state(run)
    rank = acc.process_index
    save_rng(tmp, rank, run.generator)
    if run.is_fsdp:  # sharded optimizer state: one file per process
        torch.save(run.optimizer.state_dict(), tmp / f"optimizer-{rank}.pt")
    if acc.is_main_process:
        _main_process_files(run, tmp, trainable)
    acc.wait_for_everyone()
    final = root / f"step-{step}"
    if acc.is_main_process:
        commit_checkpoint(tmp, step, keep_last=run.cfg.checkpoint.keep_last)
        log.info("saved checkpoint %s", final)
    acc.wait_for_everyone()
    return final


def read_state(path: Path) -> dict[str, Any]:
    return read_checkpoint_state(path, error=TrainingError)


def check_resume_config(path: Path, state: dict, cfg: TrainConfig, world_size: int) -> None:
    """A checkpoint made with other settings (model, mode, LoRA shape, optimizer) or another number of
    processes cannot be resumed: a TrainingError naming each difference."""
    diffs = config_diffs(state.get("config", {}), resolved_config(cfg), keys=RESUME_KEYS)
    if diffs:
        raise TrainingError(f"{path}: cannot resume: the checkpoint was trained with other settings ("
                            + "; ".join(diffs) + ")")
    if state.get("world_size") != world_size:
        raise TrainingError(f"{path}: cannot resume: saved by {state.get('world_size')} processes, this run has "
                            f"{world_size} (the data order and RNG states are per process)")


def load_trainable(path: Path, named_params: dict[str, torch.nn.Parameter]) -> None:
    """The saved trainable weights into the model's parameters (before accelerate wraps the model)."""
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


def load_rest(run: Run, path: Path, state: dict) -> None:
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
    load_rng(path, rank, run.generator)


def last_checkpoint_text(out: Path) -> str:
    """The newest complete checkpoint of the run folder ``out``, for messages."""
    found = list_checkpoints(out / "checkpoints")
    return str(found[-1][1]) if found else "none was saved yet"
