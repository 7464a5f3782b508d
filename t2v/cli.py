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


def main() -> None:
    cli(prog_name="t2v")


if __name__ == "__main__":
    main()
