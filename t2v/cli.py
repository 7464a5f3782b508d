"""The ``t2v`` command."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="densecap-t2v")
def cli() -> None:
    """Fine-tune and drive text-to-video diffusion models on dense captions."""


@cli.command()
def env() -> None:
    """Report library versions and accelerators available for training and generation."""
    import accelerate
    import diffusers
    import torch
    import transformers

    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    try:
        import xformers  # noqa: F401

        report["xformers"] = xformers.__version__
    except ImportError:
        report["xformers"] = None
    click.echo(json.dumps(report, indent=2))


@cli.command("make-tiny")
@click.argument("out_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), help="Same as OUT_DIR.")
@click.option("--force", is_flag=True, help="Rebuild even if the pipelines exist.")
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(["wan", "cogvideox", "ltx"]),
    help="Build only this family (repeatable); all by default.",
)
def make_tiny_cmd(out_dir: Path | None, out: Path | None, force: bool, families: tuple[str, ...]) -> None:
    """Build tiny random text-to-video pipelines (Wan, CogVideoX, LTX) for tests and offline use.

    With no OUT_DIR they go to the t2v folder of the default tiny folder
    ($DENSECAP_TINY_DIR/t2v or ~/.cache/densecap-t2v/tiny/t2v), where tiny://wan,
    tiny://cogvideox and tiny://ltx model references point.
    """
    from t2v.tiny import make_tiny

    paths = make_tiny(out_dir or out, force=force, families=list(families) or None)
    for name, path in paths.items():
        click.echo(f"{name}: {path}")


# --------------------------------------------------------------------------------------------------
# t2v prepare (latent caching)


@cli.command()
@click.option("--config", "config", metavar="PATH|PRESET", help="YAML config file or preset name (e.g. tiny).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set data.fps=8 (repeatable; values are YAML).")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Cache folder (overrides cache_dir).")
def prepare(config: str | None, overrides: tuple[str, ...], out: Path | None) -> None:
    """Precompute VAE latents and text embeddings of a captioned dataset into a latent cache.

    Writes OUT/cache.json, OUT/index.jsonl, OUT/shards/*.safetensors, OUT/empty_prompt.safetensors
    and OUT/errors.jsonl. Rerunning with the same settings adds only what is missing; a folder
    prepared with other settings is refused.
    """
    import sys

    from captioner.clitools import resolve_config
    from captioner.configbase import load_config
    from captioner.errors import CaptionerError
    from t2v.cache import PrepareConfig, cache_size, nbytes_text, prepare_cache

    try:
        if config is None:
            raise CaptionerError("give --config (a YAML file, or a preset: tiny, wan)")
        cfg = load_config(PrepareConfig, resolve_config("prepare", config), overrides)
        result = prepare_cache(cfg, out, progress=click.echo)
    except CaptionerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for e in result.errors[:5]:
        click.echo(f"failed ({e['stage']}): {e['source']}: {e['reason']}", err=True)
    if len(result.errors) > 5:
        click.echo(f"... and {len(result.errors) - 5} more failures", err=True)
    click.echo(f"{result.summary()} in {result.seconds:.1f}s")
    if result.stale:
        click.echo(f"{result.stale} stale samples dropped from the index")
    if result.failed:
        click.echo(f"failures: {result.cache_dir / 'errors.jsonl'}")
    click.echo(f"cache: {result.cache_dir} ({nbytes_text(cache_size(result.cache_dir))})")


# --------------------------------------------------------------------------------------------------
# t2v train (the trainer)


@cli.command("train")
@click.option("--config", "config", metavar="PATH|PRESET", help="YAML config file or preset name (e.g. tiny).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set training.max_steps=100 (repeatable; values are YAML).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder of the run.")
@click.option("--resume", "resume", metavar="latest|PATH",
              help="Continue from the newest checkpoint of --out (latest), or from a checkpoint / run folder.")
@click.option("--stop-after-step", "stop_after_step", type=int, metavar="N",
              help="End after global step N with a checkpoint (continue later with --resume latest).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def train_cmd(config: str | None, overrides: tuple[str, ...], out: Path, resume: str | None,
              stop_after_step: int | None, debug: bool) -> None:
    """Fine-tune a text-to-video model (LoRA or full) on captioned clips or a latent cache.

    Writes OUT/lora/ (or OUT/transformer/), OUT/checkpoints/step-N/, OUT/validation/step-N/*.mp4,
    OUT/metrics.jsonl, OUT/logs/, OUT/README.md, OUT/train_config.yaml and OUT/base_model.json.
    For several GPUs: accelerate launch -m t2v.train --config CFG --out OUT (same options).
    """
    import logging
    import sys

    from captioner.errors import CaptionerError
    from t2v.train import run_from_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = run_from_args(config, out, overrides, resume, stop_after_step)
    except CaptionerError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if result.stopped_early:
        click.echo(f"stopped after step {result.global_step}; continue with --resume latest")
    else:
        click.echo(f"trained {result.global_step} steps: {result.lora_dir or result.transformer_dir}")


def main() -> None:
    cli(prog_name="t2v")


if __name__ == "__main__":
    main()
