"""Shared by the benchmark scripts: machine description and writing a section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine(*libraries: str) -> str:
    """``CPU, N usable cores, Python x.y, <libraries>, OS release`` for the figures' caption."""
    parts = [f"{cpu_model()}", f"{usable_cores()} usable CPU cores (shared with other jobs)", f"Python {platform.python_version()}"]
    parts += list(libraries)
    parts.append(f"{platform.system()} {platform.release()}")
    return ", ".join(parts)


def write_section(heading: str, text: str, path: Path = DOCS) -> None:
    """Replace the ``heading`` section of ``path`` (up to the next ``## ``) with ``text``, or append it."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if heading in old:
        head, rest = old.split(heading, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        new = head.rstrip() + "\n\n" + text.rstrip() + "\n" + ("\n" + tail if tail else "")
    else:
        new = old.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(new, encoding="utf-8")
