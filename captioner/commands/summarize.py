"""``captioner summarize``: caption a sub-range of a captioned video from its record alone."""

from __future__ import annotations

from pathlib import Path

import click

from densecap.cli import config_options
from densecap.config import resolve_config


@click.command("summarize")
@click.argument("record", type=click.Path(path_type=Path))
@click.option("--start", "start", required=True, type=float, help="Clip start, in seconds of the record's time base.")
@click.option("--end", "end", required=True, type=float, help="Clip end, in seconds of the record's time base.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output JSON file.")
@click.option("--video", "video", help="With a run folder or JSONL shard: the video whose record to use.")
@click.option(
    "--clip-start", "clip_start", type=float,
    help="With --video: which clip record of that video (its start in the source file, seconds).",
)
@config_options
def command(
    record: Path,
    start: float,
    end: float,
    out_path: Path,
    video: str | None,
    clip_start: float | None,
    config: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Caption [START, END] of a captioned video from its differential captions, reading no frames.

    RECORD is a caption record (.json), or a run folder / JSONL shard together with --video. Times are
    those of the record: for a record of a clip they are relative to the clip's start. Writes OUT
    (JSON): the range, the differential captions used, the new caption, prompt version and model.
    """
    from captioner.resummary import (
        Resummarizer,
        SummarizeConfig,
        check_range,
        pick_record,
    )
    from densecap.config import load_config
    from densecap.paths import check_output_file, write_or_keep

    rec, name = pick_record(record, video, clip_start)
    check_range(rec, start, end, name)  # before loading any model
    check_output_file(out_path)
    cfg = load_config(SummarizeConfig, resolve_config("summarize", config), overrides)
    with Resummarizer(cfg) as summarizer:
        (result,) = summarizer([(rec, start, end)], record_paths=[str(record)])
    write_or_keep(out_path, result.to_json(), "summary")
    click.echo(
        f"{len(result.diff_captions)} differential captions in {result.start:g}-{result.end:g}s "
        f"({len(result.context_diff_captions)} before it as context)"
    )
    text = result.summary
    click.echo(f"summary: {text[:300]}{'…' if len(text) > 300 else ''}")
    click.echo(f"wrote {out_path}")
