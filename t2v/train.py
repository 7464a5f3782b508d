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
import json
import logging
import os
from pathlib import Path

from densecap.cli import configure_output
from densecap.errors import CaptionerError, ConfigError
from densecap.paths import check_output_dir
from densecap.training import list_checkpoints  # public here: t2v.train.list_checkpoints
from t2v.train_config import TrainConfig
from t2v.trainer.export import export, write_base_model
from t2v.trainer.setup import setup, start_outputs
from t2v.trainer.state import TrainingError, TrainResult, load_train_config, resolved_config
from t2v.trainer.step import after_step, batches, train_step

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

_write_base_model = write_base_model  # the name the tests (and older callers) use


def find_checkpoint(out_dir: str | os.PathLike, resume: str) -> Path | None:
    """``latest``: the newest complete checkpoint of ``out_dir`` that can be read (None when there is
    none); otherwise a checkpoint folder, or a run folder (its newest readable checkpoint). A newer
    checkpoint whose files are damaged is passed over with a warning naming it, the reason and the one
    used instead; a named checkpoint folder that is damaged, or a run whose checkpoints all are, is a
    TrainingError."""
    from densecap.training import find_checkpoint as find

    return find(out_dir, resume, error=TrainingError)


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
        out = check_output_dir(Path(out_dir).expanduser().resolve())
        run, resumed_from = setup(cfg, out, resume, held)  # setup
        result = TrainResult(out_dir=out, global_step=run.global_step, resumed_from=resumed_from)
        metrics = start_outputs(run, resumed=resumed_from is not None)
        if metrics is not None:
            held.callback(metrics.close)
        held.callback(_finish_trackers, run.accelerator)
        if run.global_step >= cfg.training.max_steps:
            log.info("step %d: already at training.max_steps (%d)", run.global_step, cfg.training.max_steps)
        stream = batches(run.loader, run.sampler)
        last_loss = None
        while run.global_step < cfg.training.max_steps:
            outcome = train_step(run, stream)  # step
            last_loss = outcome.loss
            if after_step(run, outcome, result, metrics, stop_after_step):  # after-step
                return result
        result.lora_dir, result.transformer_dir = export(run, run.model_id, run.data_info, last_loss)  # finish
        return result


def _finish_trackers(accelerator) -> None:
    for tracker in getattr(accelerator, "trackers", []):
        with contextlib.suppress(Exception):
            tracker.finish()


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
