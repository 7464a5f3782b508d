"""Append-only JSONL files that survive a killed writer: every line is written with a single ``write``
of the whole line, then flushed and fsynced, so a crash leaves at most one partial line at the end;
readers skip it and writers cut it off before appending."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from densecap.errors import CaptionerError
from densecap.paths import write_failure

__all__ = ["JsonlAppender", "iter_jsonl", "json_objects", "repair_partial_tail"]


def _complete_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every newline-terminated line; a trailing partial line is ignored."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                return  # partial last line of a killed writer
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                yield n, text


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file written by :class:`JsonlAppender` (a torn last line is skipped)."""
    path = Path(path)
    for n, text in _complete_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CaptionerError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        yield obj


def json_objects(text: str, path: str | Path, error: type[CaptionerError] = CaptionerError) -> Iterator[tuple[str, dict]]:
    """``("PATH:LINE", object)`` for each non-blank line of a user's JSONL file (``text``, as read with
    :func:`densecap.files.read_utf8`); a line that is not JSON, or not a JSON object, raises ``error``
    naming the file and line. Lines end at ``\n`` only, as editors number them."""
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


class JsonlAppender:
    """Appends whole lines to a JSONL file, durably; repairs a torn last line on open.

    A write that fails (a full disk, a quota) is cut back off the file, so the lines written before stay
    whole, and raised as a :class:`CaptionerError` naming the file and the reason."""

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            repair_partial_tail(self.path)
            self._fh = self.path.open("ab", buffering=0)  # unbuffered: a failed write is never retried at close
        except OSError as exc:
            raise CaptionerError(write_failure(self.path, exc)) from None
        self.fsync = fsync

    def append(self, obj: dict[str, Any]) -> None:
        line = memoryview((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        fd = self._fh.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while line:
                line = line[os.write(fd, line):]
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # no torn line: what was written before stays whole
            raise CaptionerError(f"{write_failure(self.path, exc)}; the lines written before are kept") from None

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def repair_partial_tail(path: Path) -> None:
    """Cut a partial last line (no trailing newline) left by a killed writer."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        pos = size
        chunk = 4096
        while pos > 0:
            step = min(chunk, pos)
            fh.seek(pos - step)
            data = fh.read(step)
            if pos == size and data.endswith(b"\n"):
                return
            nl = data.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos - step + nl + 1)
                return
            pos -= step
        fh.truncate(0)
