"""Checks of the files a command reads and writes, made before any model is loaded or video decoded.

Each failure is a :class:`~densecap.errors.CaptionerError` whose message names the path and the
problem, so the CLIs print one ``error:`` line instead of a traceback after minutes of lost work.
The checks create nothing: a command that fails them leaves no trace on disk.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from densecap.errors import CaptionerError

__all__ = ["slugify", "check_input", "check_input_file", "check_output_dir", "check_output_file", "write_failure", "write_or_keep"]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_failure(path: str | os.PathLike, exc: OSError) -> str:
    """The one-line message of a write that failed: ``PATH: cannot write (No space left on device)``."""
    return f"{path}: cannot write ({_reason(exc)})"


def check_input(path: str | os.PathLike, what: str = "input") -> Path:
    """``path`` exists (a file or a folder) and can be read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CaptionerError(f"{p}: {what} not found")
    try:
        if p.is_dir():
            os.listdir(p)
        else:
            open(p, "rb").close()
    except OSError as exc:
        raise CaptionerError(f"{p}: cannot read the {what} ({_reason(exc)})") from None
    return p


def check_input_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """``path`` is a readable regular file (not a folder)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise CaptionerError(f"{p}: is a folder, not a {what}")
    if p.exists() and not p.is_file():
        raise CaptionerError(f"{p}: not a regular file, so not a {what}")
    return check_input(p, what)


def _check_writable(target: Path, start: Path) -> None:
    """The nearest existing folder at or above ``start`` is a folder in which a file can be created:
    tested by creating and removing one (permission bits say nothing to root or on read-only mounts)."""
    base = start
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise CaptionerError(f"{target}: cannot be created: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise CaptionerError(f"{target}: cannot write in {base} (permission denied)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CaptionerError(f"{target}: cannot write in {base} ({_reason(exc)})") from None


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` can be written as a file: it is not a folder, and its folder exists and is writable or
    can be created."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise CaptionerError(f"{p}: is a folder; the output is a file (give a file name)")
    _check_writable(p, p.parent)
    return p


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` can be used as an output folder: it is not a file, and it is (or can be created as) a
    writable folder."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CaptionerError(f"{p}: is a file; the output is a folder")
    _check_writable(p, p)
    return p


def write_or_keep(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    """Write ``text`` to ``path`` (atomically); when that fails, finished work is not lost: it is kept in
    a new file in the current folder (else the system's temporary folder) and the error says where."""
    from densecap.files import normal_mode, write_json_atomic

    path = Path(path)
    try:
        return write_json_atomic(path, text)
    except OSError as exc:
        problem = f"{path}: cannot write the {what} ({_reason(exc)}{f': {exc.filename}' if exc.filename else ''})"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            fd, kept = tempfile.mkstemp(prefix=f"{path.stem}.", suffix=path.suffix or ".json", dir=folder)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            normal_mode(kept)  # mkstemp makes it owner-only
        except OSError:
            Path(kept).unlink(missing_ok=True)
            continue
        raise CaptionerError(f"{problem}; it was saved to {kept} instead")
    raise CaptionerError(f"{problem}, nor in the current or the temporary folder; the {what} is lost")


def slugify(text: str, n: int = 40) -> str:
    """A file-name-safe short form of ``text``: lower case, runs of other characters as ``-``, at most
    ``n`` characters (``prompt`` when nothing is left)."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].strip("-") or "prompt"
