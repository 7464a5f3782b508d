"""The ``t2v`` command."""

from __future__ import annotations

import json
import platform

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


def main() -> None:
    cli(prog_name="t2v")


if __name__ == "__main__":
    main()
