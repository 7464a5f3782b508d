"""Pieces shared by the CLI commands: config resolution and the --config/--set options."""

from __future__ import annotations

from pathlib import Path

import click

from captioner.errors import CaptionerError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config(command: str, value: str | None) -> Path | None:
    """``--config`` takes a file path or a preset name (``tiny`` -> ``configs/<command>/tiny.yaml``)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file() or value.endswith((".yaml", ".yml")) or "/" in value:
        return path
    preset = CONFIGS_DIR / command / f"{value}.yaml"
    if preset.is_file():
        return preset
    known = sorted(p.stem for p in (CONFIGS_DIR / command).glob("*.yaml"))
    raise CaptionerError(
        f"config {value!r}: no such file, and no preset of that name for '{command}'"
        + (f" (presets: {', '.join(known)})" if known else "")
    )


def config_options(func):
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set keyframes.threshold=0.9 (repeatable; values are YAML).",
    )(func)
    func = click.option(
        "--config", "config", metavar="PATH|PRESET", help="YAML config file or preset name (e.g. tiny)."
    )(func)
    return func
