"""Training checkpoints on disk, one convention for every trainer of the toolkit.

A run folder keeps its checkpoints in ``OUT/checkpoints/step-N``. A checkpoint is written into
``checkpoints/.tmp-step-N`` (:func:`staging_dir`), and :func:`commit_checkpoint` writes the marker file
``COMPLETE`` last (the step and the list of files) and renames the folder to ``step-N``: a crash while
saving never leaves a folder that looks complete, and the folders without a marker are passed over
(with a warning). Resuming takes the newest checkpoint whose files can all be read
(:func:`find_checkpoint`): a newer damaged one (a full disk, a kill during a copy) is passed over with
a warning naming it and the one used instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from densecap.config import flatten_dict
from densecap.errors import CaptionerError
from densecap.files import replace_dir, write_json_atomic

__all__ = [
    "CKPT_RE", "MARKER", "checkpoint_problem", "clear_staging", "commit_checkpoint", "config_diffs",
    "find_checkpoint", "list_checkpoints", "pick_checkpoint", "prune_checkpoints", "read_checkpoint_state",
    "staging_dir", "write_json",
]

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
CKPT_RE = re.compile(r"^step-(\d+)$")
_STAGING = (".tmp-step-", ".old-step-")



def checkpoint_problem(folder: str | Path) -> str | None:
    """Why the saved checkpoint ``folder`` cannot be loaded, or None when every file of it reads: each
    safetensors file's header and length, each ``torch.save`` file's zip index, each JSON file. (Tensor
    bytes are not checksummed: a flipped bit inside a tensor is not found.)"""
    import zipfile

    folder = Path(folder)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = f.relative_to(folder)
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="numpy") as fh:
                    fh.keys()
            elif f.suffix == ".pt":
                with zipfile.ZipFile(f) as zf:
                    zf.namelist()
            elif f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 -- SafetensorError, BadZipFile, JSON, OS errors: all "unreadable"
            return f"{name}: {type(exc).__name__}: {exc}".replace("\n", " ")
    return None


def pick_checkpoint(found: list[Path], problem=checkpoint_problem) -> Path | None:
    """The newest of the checkpoint folders ``found`` (oldest first) that can be read; one that cannot
    is passed over with a warning ("checkpoint X is unreadable (reason); resuming from Y"). None when
    ``found`` is empty; a :class:`CaptionerError` when none of them can be read."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(found):
        why = problem(path)
        if why is None:
            for bad, reason in skipped:
                log.warning("checkpoint %s is unreadable (%s); resuming from %s", bad, reason, path)
            return path
        skipped.append((path, why))
    if skipped:
        raise CaptionerError(
            f"{found[-1].parent}: no checkpoint can be read: " + "; ".join(f"{p.name}: {why}" for p, why in skipped)
        )
    return None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    write_json_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the complete checkpoints (``step-N`` folders holding the marker) directly
    under ``root``, oldest first; a ``step-N`` folder without the marker is ignored with a warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir():
            if (p / MARKER).is_file():
                found.append((int(m.group(1)), p))
            else:
                log.warning("%s: no %s marker (an interrupted save?); ignored", p, MARKER)
    return sorted(found)


def _readable(found: list[tuple[int, Path]], error: type[CaptionerError]) -> Path | None:
    try:
        return pick_checkpoint([p for _, p in found])
    except CaptionerError as e:
        raise error(str(e)) from None


def find_checkpoint(out_dir: str | os.PathLike, resume: str, *,
                    error: type[CaptionerError] = CaptionerError) -> Path | None:
    """The checkpoint ``--resume RESUME`` means for the run folder ``out_dir``.

    ``latest``: the newest complete checkpoint of ``out_dir/checkpoints`` that can be read (None when
    there is none). Otherwise a checkpoint folder, or a run folder (its newest readable checkpoint). A
    named checkpoint that is damaged or incomplete, or a run whose checkpoints all are, raises ``error``
    (the trainer's own :class:`CaptionerError` kind) naming the folder and the reason."""
    if resume == "latest":
        return _readable(list_checkpoints(Path(out_dir) / "checkpoints"), error)
    p = Path(resume).expanduser()
    if (p / MARKER).is_file():
        why = checkpoint_problem(p)
        if why is not None:
            raise error(f"{p}: the checkpoint cannot be read ({why})")
        return p
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return _readable(found, error)
    if p.is_dir() and CKPT_RE.match(p.name):
        raise error(f"{p}: checkpoint has no {MARKER} marker: it was not completely saved")
    raise error(f"--resume {resume}: not a checkpoint folder, nor a run folder holding checkpoints")


def staging_dir(root: str | os.PathLike, step: int) -> Path:
    """A new, empty ``root/.tmp-step-N`` to write the checkpoint of ``step`` into."""
    tmp = Path(root) / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: str | os.PathLike, step: int, *, keep_last: int | None = None) -> Path:
    """Mark the staged checkpoint ``tmp`` complete (the marker is written last) and move it to
    ``step-N`` beside it (replacing one of the same step: a step re-reached after resuming from an older
    checkpoint); then keep only the newest ``keep_last`` checkpoints (all when None or 0)."""
    tmp = Path(tmp)
    files = sorted(p.name for p in tmp.iterdir())
    write_json(tmp / MARKER, {"step": step, "files": files})
    final = tmp.parent / f"step-{step}"
    replace_dir(tmp, final)
    prune_checkpoints(tmp.parent, keep_last)
    return final


def prune_checkpoints(root: str | os.PathLike, keep_last: int | None) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints of ``root`` (none when falsy)."""
    if not keep_last:
        return
    for _, p in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def clear_staging(root: str | os.PathLike) -> None:
    """Remove what saves that crashed left under ``root`` (``.tmp-step-N``, ``.old-step-N``)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_STAGING):
                shutil.rmtree(p, ignore_errors=True)


def read_checkpoint_state(path: str | os.PathLike, *, error: type[CaptionerError] = CaptionerError,
                          name: str = "state.json") -> dict[str, Any]:
    """The JSON state file of the complete checkpoint ``path``; ``error`` when it is incomplete or unreadable."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise error(f"{path}: checkpoint has no {MARKER} marker: it was not completely saved")
    try:
        return json.loads((path / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise error(f"{path}: unreadable checkpoint state ({e})") from None


def config_diffs(then: Mapping[str, Any], now: Mapping[str, Any], *, keys: Iterable[str] | None = None,
                 ignored: Iterable[str] = ()) -> list[str]:
    """``"key: A then, B now"`` for each setting (dotted key) that differs between two nested configs:
    only ``keys`` when given, else every key except ``ignored``."""
    a, b = flatten_dict(dict(then)), flatten_dict(dict(now))
    names = list(keys) if keys is not None else sorted((set(a) | set(b)) - set(ignored))
    return [f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in names if a.get(k) != b.get(k)]
