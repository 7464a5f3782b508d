"""Training checkpoints: find the newest one that can be read (a damaged newest one is passed over
with a warning)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from densecap.errors import CaptionerError

log = logging.getLogger(__name__)



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
