"""Sharded JSONL output of corpus runs: append-only, crash-safe, resumable.

Layout of a run folder::

    DIR/run.json              the run's config and config key (written first)
    DIR/records/part-*.jsonl  one caption record per line (CaptionRecord JSON)
    DIR/errors.jsonl          one line per failed clip: path, clip, stage, error
    DIR/summary.json          counts, throughput and per-stage wall time (rewritten as the run goes)

Every line is written with a single ``write`` of the whole line followed by flush + fsync, so a
killed process leaves at most one partial line at the end of a file; readers skip such a line and
writers cut it off before appending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from captioner.record import CaptionRecord
from densecap.errors import CaptionerError
from densecap.jsonl import JsonlAppender, iter_jsonl, repair_partial_tail  # noqa: F401  (kept importable here)

RECORDS_DIR = "records"
ERRORS_FILE = "errors.jsonl"


def record_files(run_dir: str | Path) -> list[Path]:
    return sorted((Path(run_dir) / RECORDS_DIR).glob("part-*.jsonl"))


def iter_records(run_dir: str | Path) -> Iterator[CaptionRecord]:
    """Every caption record of a run folder (or of a single JSONL/JSON record file), in file order."""
    path = Path(run_dir)
    if path.is_file():
        if path.suffix == ".jsonl":
            for obj in iter_jsonl(path):
                yield CaptionRecord.model_validate(obj)
        else:
            from captioner.record import load_record

            yield load_record(path)
        return
    if not path.is_dir():
        raise CaptionerError(f"{path}: no such run folder or record file")
    files = record_files(path)
    if not files:
        raise CaptionerError(f"{path}: no records found (expected {RECORDS_DIR}/part-*.jsonl from `captioner run`)")
    for f in files:
        for obj in iter_jsonl(f):
            yield CaptionRecord.model_validate(obj)
