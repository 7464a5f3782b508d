"""``captioner train-expander PAIRS --out DIR``: fine-tune a small instruct model as the prompt expander."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from densecap.cli import config_options
from densecap.config import resolve_config


def _loss(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


@click.command("train-expander")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@config_options
@click.option("--resume", "resume", metavar="latest|PATH",
              help="Continue from the newest checkpoint in OUT (latest) or a checkpoint folder.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def command(pairs: Path, out_dir: Path, config: str | None, overrides: tuple[str, ...],
            resume: str | None, no_progress: bool) -> None:
    """Fine-tune an instruct model (LoRA) to expand short prompts like the captions of PAIRS.

    PAIRS: the .jsonl written by `captioner pairs` (or its --sft chat export). Each pair is trained as
    the conversation the expander sends at inference (the expansion prompt file, no examples) with
    the caption as the reply. Writes OUT/model (the adapter merged into the base model: load it with
    the hf backend), OUT/adapter, OUT/expand.yaml (a ready expansion config), OUT/metrics.jsonl,
    OUT/README.md and resumable checkpoints in OUT/checkpoints (continue with --resume latest).
    """
    from captioner.expand.finetune import TrainExpanderConfig, train_expander
    from densecap.config import load_config
    from densecap.paths import check_input_file, check_output_dir
    cfg = load_config(TrainExpanderConfig, resolve_config("train-expander", config), overrides)
    check_input_file(pairs, "pairs file")
    check_output_dir(out_dir)
    result = train_expander(pairs, out_dir, cfg, resume=resume, progress=not no_progress)
    if result.resumed_from is not None:
        click.echo(f"resumed from {result.resumed_from}")
    click.echo(
        f"{result.step}/{result.total_steps} steps on {result.train_pairs} pairs ({result.eval_pairs} held out, "
        f"{result.dropped} dropped as longer than max_length {cfg.max_length} tokens); "
        f"train loss {_loss(result.final_loss)}, eval loss {_loss(result.eval_loss)}"
    )
    if result.interrupted:
        click.echo(f"stopped at step {result.step}; continue with --resume latest")
        return
    click.echo(f"model: {result.model_dir}")
    if result.adapter_dir is not None:
        click.echo(f"adapter: {result.adapter_dir}")
    click.echo(f"expansion config: {result.expand_config}")
    click.echo(f"use it: t2v expand \"a red fox jumps into the snow\" --config {shlex.quote(str(result.expand_config))}"
               " [--family wan --model ID]")
