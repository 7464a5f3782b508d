"""Values read from users' files (manifests, dataset layouts, caption lists), checked the same way
everywhere, with errors that name the file, the line and the field."""

from __future__ import annotations

import math
from typing import Any

from densecap.errors import CaptionerError

__all__ = ["seconds"]


def seconds(value: Any, where: str, name: str, error: type[CaptionerError] = CaptionerError) -> float | None:
    """``value`` as a time in seconds: None when missing or blank; ``error`` naming ``where`` and
    ``name`` for anything but a finite number >= 0 (true/false included, which YAML and JSON would
    otherwise turn into 1 and 0)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise error(f"{where}: {name} must be a number of seconds or empty, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(f"{where}: {name} must be a number of seconds or empty, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise error(f"{where}: {name} must be a finite number of seconds >= 0, got {value!r}")
    return number
