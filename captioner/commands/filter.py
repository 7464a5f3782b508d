"""``captioner filter``: semantic-based data filtering of a captioned manifest (see captioner/filter.py)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from densecap.cli import config_options
from densecap.config import resolve_config


@click.command("filter")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@config_options
def command(manifest: Path, out_dir: Path, config: str | None, overrides: tuple[str, ...]) -> None:
    """Drop clips whose caption nearly repeats an earlier kept clip's.

    MANIFEST is a CSV/TSV/JSONL manifest with a caption column. Writes OUT/kept.jsonl (a manifest of
    the kept clips), OUT/dropped.jsonl (each dropped clip with the kept clip it duplicates and their
    cosine similarity) and OUT/filter_summary.json. Only captions are read: videos are not opened.
    """
    from captioner.filter import FilterConfig, filter_clips, write_filter_outputs
    from captioner.manifest import CAPTION_KEYS, ManifestError, read_manifest
    from densecap.config import load_config
    from densecap.paths import check_output_dir

    t0 = time.perf_counter()
    cfg = load_config(FilterConfig, resolve_config("filter", config), overrides)
    if manifest.is_dir():
        raise ManifestError(f"{manifest}: is a folder; filter needs a manifest file (.csv, .tsv, .jsonl) with captions")
    check_output_dir(out_dir)
    clips = read_manifest(manifest)
    if not any(c.caption and c.caption.strip() for c in clips):
        raise ManifestError(
            f"{manifest}: no clip has a caption (expected a column named one of {', '.join(CAPTION_KEYS)})"
        )
    result = filter_clips(clips, cfg)  # a clip without caption under missing_caption=error names its file:line

    summary = write_filter_outputs(result, out_dir, cfg, source=manifest, started=t0)
    stats = result.stats
    kept_path, dropped_path = summary["outputs"]["kept"], summary["outputs"]["dropped"]
    summary_path = out_dir / "filter_summary.json"
    click.echo(
        f"{stats['total']} clips: kept {stats['kept']}, dropped {stats['dropped_duplicates']} near-duplicates"
        + (f" and {stats['dropped_missing_caption']} without caption" if stats["dropped_missing_caption"] else "")
        + (f" ({stats['missing_caption']} without caption kept)" if stats["missing_caption"] and cfg.missing_caption == "keep" else "")
        + f" at threshold {cfg.threshold:g} in {summary['seconds']:.1f}s"
    )
    click.echo(f"wrote {kept_path}, {dropped_path}, {summary_path}")
