"""``captioner export``: caption records -> a training dataset folder."""

from __future__ import annotations

from pathlib import Path

import click

from densecap.cli import config_options
from densecap.config import resolve_config


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@click.option(
    "--caption", "caption", type=click.Choice(["summary", "first", "resummary"]), default="summary", show_default=True,
    help="Which caption: the record's summary, its first-frame caption, or a re-summary (needs --config).",
)
@click.option(
    "--format", "formats", multiple=True, default=("jsonl",), show_default=True, metavar="LIST",
    help="Comma-separated: jsonl (captions.jsonl), metadata-csv or metadata-jsonl (datasets' videofolder "
    "layout), prompts-txt (prompts.txt + videos.txt). Repeatable.",
)
@click.option(
    "--videos", "videos", type=click.Choice(["link", "copy", "none"]), default=None,
    help="How metadata/prompts formats reach the videos: symlinks (default) or copies under OUT/videos/, "
    "or none (paths as they are; videofolder then refuses videos outside OUT).",
)
@click.option("--start", "start", type=float, help="With --caption resummary: range start (record time, s).")
@click.option("--end", "end", type=float, help="With --caption resummary: range end (record time, s).")
@config_options
def command(
    source: Path,
    out_dir: Path,
    caption: str,
    formats: tuple[str, ...],
    videos: str | None,
    start: float | None,
    end: float | None,
    config: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Export the captions of a run folder (or a record file) as a training dataset.

    Writes OUT/captions.jsonl (video, start, end, caption, source) and, on request, metadata.csv or
    metadata.jsonl (file_name, caption, start, end; load with datasets' "videofolder") and
    prompts.txt + videos.txt. --config/--set configure the text model of --caption resummary
    (presets in configs/summarize/).
    """
    from captioner.export import (
        describe_skips,
        export_dataset,
        parse_formats,
        stale_metadata,
    )
    from densecap.errors import CaptionerError
    from densecap.paths import check_input, check_output_dir

    fmts = parse_formats(formats)
    if (config or overrides) and caption != "resummary":
        raise CaptionerError("--config/--set configure the re-summarising model: they need --caption resummary")
    check_output_dir(out_dir)
    summarizer = None
    if caption == "resummary" and config is not None:
        from captioner.resummary import Resummarizer, SummarizeConfig
        from densecap.config import load_config

        check_input(source, "run folder or record file")  # before the model loads (else export_dataset says it)
        summarizer = Resummarizer(load_config(SummarizeConfig, resolve_config("summarize", config), overrides))
    try:
        result = export_dataset(
            source, out_dir, caption=caption, formats=fmts, videos=videos, resummarize=summarizer, start=start, end=end
        )
    finally:
        if summarizer is not None:
            summarizer.close()
    click.echo(
        f"exported {result.exported} clips of {result.videos} videos from {result.records} records "
        f"(skipped: {describe_skips(result)})"
    )
    if result.linked or result.copied:
        click.echo(f"videos under {out_dir / 'videos'}: {result.linked} linked, {result.copied} copied")
    if result.clip_ranges_in_prompts_txt:
        click.echo(
            f"warning: {result.clip_ranges_in_prompts_txt} captions are of clip ranges, but videos.txt names whole "
            "files; the ranges are in captions.jsonl / metadata (start, end)",
            err=True,
        )
    for path in stale_metadata(result):
        click.echo(
            f"warning: {path} is from an earlier export; datasets' folder loaders refuse a folder with two "
            "metadata files: remove it",
            err=True,
        )
    for path in result.files:
        click.echo(f"wrote {path}")
