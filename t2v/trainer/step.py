"""One optimizer step and what follows it.

:func:`train_step`: for each of ``gradient_accumulation_steps`` micro-batches, a batch of one bucket
gives a VAE posterior and the text conditioning; the spec samples latents, noise levels and noise from
the run's generator, the transformer predicts, the spec's loss is back-propagated. Then clipping, the
optimizer and LR-schedule step, the EMA update. A non-finite loss or gradient norm stops the run with
an error naming the step, the batch and the last good checkpoint.

:func:`after_step`: the metrics line, the checkpoint, validation, and an early stop
(``stop_after_step``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from densecap.training import MetricsLog
from t2v.trainer.checkpoint import last_checkpoint_text, save_checkpoint
from t2v.trainer.state import Run, TrainingError, TrainResult
from t2v.trainer.validation import validate

__all__ = ["StepOutcome", "after_step", "batches", "train_step"]

log = logging.getLogger("t2v.train")


@dataclass
class StepOutcome:
    """What one optimizer step measured."""

    step: int
    loss: float
    grad_norm: float
    seconds: float
    epoch: int | None


def batches(loader, sampler) -> Iterator[dict]:
    """Batches forever, epoch after epoch (the sampler moves to the next epoch at each end)."""
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise TrainingError(f"epoch {sampler.epoch} has no batches for this process")


def _micro_batch_loss(run: Run, batch: dict, last: bool, accum: int) -> torch.Tensor:
    """Forward and backward of one micro-batch; the gradients are synchronised on the last one only."""
    spec, c, acc, tcfg = run.spec, run.train_c, run.accelerator, run.cfg.training
    dist, cond = run.source.model_inputs(batch, spec, c)
    with torch.no_grad():
        latents = spec.latents_from_dist(c, dist, run.generator, sample=tcfg.sample_posterior)
    inputs = spec.training_step_inputs(c, latents, cond, generator=run.generator, timestep_cfg=tcfg.timesteps)
    with contextlib.nullcontext() if last else acc.no_sync(run.model):
        with acc.autocast():
            pred = spec.predict(c, inputs, cond)
        loss = spec.loss(pred, inputs)
        acc.backward(loss / accum)  # always: every process joins the gradient sync
    return loss.detach().float()


def _check_finite(run: Run, step: int, losses: torch.Tensor, grad_norm: float, sources: list[str]) -> None:
    acc = run.accelerator
    if not torch.isfinite(losses).all():
        bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
        where = "" if acc.num_processes == 1 else f" on process {', '.join(map(str, bad))}"
        raise TrainingError(
            f"step {step}: the loss is {losses[bad[0]].item()}{where} (non-finite); stopping. "
            f"The last good checkpoint is kept ({last_checkpoint_text(run.out)}); batch: {', '.join(sources[:4])}")
    if not math.isfinite(grad_norm) and getattr(acc, "scaler", None) is None:
        raise TrainingError(
            f"step {step}: the gradient norm is {grad_norm} (non-finite) with a finite loss "
            f"({losses.mean().item():.6g}); stopping. The last good checkpoint is kept "
            f"({last_checkpoint_text(run.out)})")


def train_step(run: Run, stream: Iterator[dict]) -> StepOutcome:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches of ``stream``."""
    acc, tcfg = run.accelerator, run.cfg.training
    t0 = time.perf_counter()
    accum = tcfg.gradient_accumulation_steps
    micro, sources, batch = [], [], None
    for k in range(accum):
        batch = next(stream)
        sources = list(batch.get("source", []))
        micro.append(_micro_batch_loss(run, batch, k == accum - 1, accum))
    step = run.global_step + 1
    losses = acc.gather(torch.stack(micro).mean().reshape(1).to(acc.device))
    grad_norm = acc.clip_grad_norm_(run.params, tcfg.max_grad_norm or float("inf"))
    grad_norm_value = float(grad_norm) if grad_norm is not None else float("nan")
    _check_finite(run, step, losses, grad_norm_value, sources)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.step(run.params)
    run.global_step = step
    run.position = run.sampler.state_dict(after=batch)
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    epoch = int(batch["position"][0]) if batch.get("position") else None
    return StepOutcome(step, float(losses.mean()), grad_norm_value, time.perf_counter() - t0, epoch)


def _log_metrics(run: Run, o: StepOutcome, metrics: MetricsLog | None) -> None:
    rec = {"step": o.step, "loss": o.loss, "lr": float(run.lr_scheduler.get_last_lr()[0]),
           "grad_norm": o.grad_norm, "step_time": round(o.seconds, 6), "epoch": o.epoch}
    if run.ema is not None:
        rec["ema_decay"] = float(getattr(run.ema, "cur_decay_value", 0.0) or 0.0)
    if metrics is not None:
        metrics.append(rec)
    run.accelerator.log({k: v for k, v in rec.items() if k != "step" and v is not None}, step=o.step)


def after_step(run: Run, o: StepOutcome, result: TrainResult, metrics: MetricsLog | None,
               stop_after_step: int | None) -> bool:
    """Metrics, checkpoint and validation as the config says; True when this call stops here
    (``stop_after_step``: a checkpoint is saved, nothing exported)."""
    cfg = run.cfg
    max_steps = cfg.training.max_steps
    result.losses[o.step] = o.loss
    result.global_step = o.step
    if o.step % cfg.logging.every == 0 or o.step == max_steps:
        _log_metrics(run, o, metrics)
    last = o.step == max_steps
    stopping = stop_after_step is not None and o.step >= stop_after_step and not last
    every = cfg.checkpoint.every
    if (every and o.step % every == 0) or (last and cfg.checkpoint.at_end) or stopping:
        result.checkpoints.append(save_checkpoint(run))
    ve = cfg.validation.every
    if (ve and o.step % ve == 0) or (last and cfg.validation.at_end):
        validate(run, o.step)
    if stopping:
        result.stopped_early = True
        log.info("stopping after step %d (stop_after_step); continue with --resume latest", o.step)
    return stopping
