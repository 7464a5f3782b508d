"""``captioner pairs CAPTIONS --out PAIRS``: (short prompt, dense caption) pairs for the prompt expander."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from densecap.cli import config_options
from densecap.config import resolve_config


def _counts(result) -> str:
    text = (
        f"{result.read} captions: {result.new} new pairs, {result.done_before} skipped as done, "
        f"{result.failed} failed, {result.empty} empty"
    )
    extra = []
    if result.duplicates:
        extra.append(f"{result.duplicates} duplicates")
    if result.failed_before:
        extra.append(f"{result.failed_before} skipped as failed before (retry with --set retry_failed=true)")
    if result.left:
        extra.append(f"{result.left} left by --limit")
    return text + (f" ({'; '.join(extra)})" if extra else "")


@click.command("pairs")
@click.argument("captions", type=click.Path(path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Pairs file (.jsonl), created or resumed.")
@config_options
@click.option("--sft", "sft_path", type=click.Path(path_type=Path), help="Also write every pair of OUT as SFT data (JSONL).")
@click.option(
    "--sft-format", "sft_format", type=click.Choice(["chat", "sharegpt"]), default="chat", show_default=True,
    help='chat: {"messages": [{"role", "content"}, ...]} (TRL SFTTrainer); sharegpt: {"conversations": [{"from", "value"}, ...]}.',
)
@click.option("--limit", "limit", type=click.IntRange(min=0), help="Ask about at most N captions not done yet (this run only).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def command(
    captions: Path,
    out_path: Path,
    config: str | None,
    overrides: tuple[str, ...],
    sft_path: Path | None,
    sft_format: str,
    limit: int | None,
    no_progress: bool,
) -> None:
    """Ask a text model for the short prompt a user would type to get each captioned video.

    CAPTIONS: a `captioner run` folder, a record .json or JSONL shard, an export's captions.jsonl /
    metadata.jsonl / metadata.csv, or a dataset folder holding one. Writes OUT (one JSON line per pair:
    id, prompt, caption, source, attempts, model), OUT's .meta.json (settings; a rerun with other
    settings is refused) and .errors.jsonl (captions whose answers were all refused). Run the same
    command again to resume. Exit status: 0 when every caption has a pair, 2 when some failed (see
    the errors file), 1 on an error.
    """
    from captioner.pairs import (
        PairsConfig,
        export_sft,
        load_pairs,
        load_pairs_prompts,
        mine_pairs,
    )
    from densecap.config import load_config
    from densecap.paths import check_output_file

    cfg = load_config(PairsConfig, resolve_config("pairs", config), overrides)
    for path in (out_path, sft_path):
        if path is not None:
            check_output_file(path)
    result = mine_pairs(captions, out_path, cfg, limit=limit, progress=not no_progress)
    click.echo(_counts(result))
    if result.usage:
        u = result.usage
        click.echo(
            f"writer: {u.get('requests', 0)} requests, {u.get('prompt_tokens', 0)} prompt tokens, "
            f"{u.get('completion_tokens', 0)} generated tokens ({result.answers} answers checked)"
        )
    click.echo(f"wrote {result.out} ({result.total_pairs} pairs in all); settings in {result.meta}")
    if result.errors.exists():
        click.echo(f"failed captions: {result.errors}")
    if sft_path is not None:
        pairs = load_pairs(result.out) if result.out.exists() else []
        if pairs:
            system = load_pairs_prompts(cfg.prompts)["pairs"]["sft_system"].strip()
            export_sft(pairs, sft_path, system, format=sft_format)
            click.echo(f"wrote {sft_path} ({len(pairs)} {sft_format} examples)")
        else:
            click.echo(f"warning: {result.out} holds no pairs yet; {sft_path} not written", err=True)
    unpaired = result.failed + result.failed_before
    if unpaired:
        click.echo(f"{unpaired} captions have no pair: see {result.errors}", err=True)
        sys.exit(2)
