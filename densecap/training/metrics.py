"""``metrics.jsonl``: one JSON object per logged step (``{"step": N, ...}``), appended and flushed as
training goes. A resumed run first drops the lines after its checkpoint's step (a crashed run went
past its last checkpoint, and those steps are trained again), so the file never holds a step twice."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from densecap.files import write_json_atomic

__all__ = ["MetricsLog"]


class MetricsLog:
    """The metrics file of a run folder. ``start(step)`` once (None or 0: a fresh run), then
    ``append(row)``; ``close()`` (or ``with``) at the end."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fh: IO[str] | None = None

    def read(self) -> list[dict[str, Any]]:
        """Every whole line's object (a line cut by a crash is skipped)."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def start(self, resume_step: int | None) -> None:
        """A fresh run (``resume_step`` None or 0) starts an empty file; a resumed one keeps the lines of
        the steps up to ``resume_step``."""
        rows = [r for r in self.read() if int(r.get("step", 0)) <= resume_step] if resume_step else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, row: dict[str, Any]) -> None:
        """One line, flushed (a crash loses at most the line being written)."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- closed by close()
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
