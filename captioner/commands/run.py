"""``captioner run INPUT --out DIR``: caption a corpus (folder or manifest), resumably."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from densecap.cli import config_options
from densecap.config import load_config, resolve_config


@click.command("run")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run folder (created or resumed).")
@config_options
@click.option("--engine", type=click.Choice(["local", "ray"]), help="Execution engine (overrides run.engine).")
@click.option("--workers", type=int, help="Decode worker processes (overrides run.workers).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def command(input_path: Path, out_dir: Path, config: str | None, overrides: tuple[str, ...], engine: str | None,
            workers: int | None, no_progress: bool) -> None:
    """Caption every clip of INPUT (a folder, searched recursively, or a CSV/JSONL manifest).

    Writes DIR/records/part-*.jsonl (one record per clip), DIR/errors.jsonl and DIR/summary.json.
    Run the same command again to resume: finished clips are skipped. Exit status: 0 when every
    clip was captioned, 2 when some failed (see errors.jsonl), 1 on a fatal error.
    """
    from captioner.corpus import RunConfig, run_corpus

    extra = list(overrides)
    if engine:
        extra.append(f"run.engine={engine}")
    if workers is not None:
        extra.append(f"run.workers={workers}")
    cfg = load_config(RunConfig, resolve_config("run", config), extra)
    summary = run_corpus(input_path, cfg, out_dir, progress=not no_progress)
    click.echo(
        f"{summary['captioned']} captioned, {summary['failed']} failed, {summary['already_done']} already done, "
        f"{summary['filtered_out']} filtered out of {summary['input_clips']} clips "
        f"in {summary['wall_seconds']:.1f}s"
    )
    click.echo(f"wrote {out_dir}/records, {out_dir}/errors.jsonl, {out_dir}/summary.json")
    if summary["failed"]:
        click.echo(f"{summary['failed']} clips failed: {json.dumps(summary['failed_by_stage'])}", err=True)
        sys.exit(2)
