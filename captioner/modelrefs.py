"""Model references in configs: hub ids, local paths, and ``tiny://NAME`` for the offline tiny models."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from captioner.errors import ConfigError

log = logging.getLogger(__name__)

TINY_SCHEME = "tiny://"


def tiny_dir() -> Path:
    """The tiny-model folder: ``$DENSECAP_TINY_DIR`` (read at call time) or ``~/.cache/densecap-t2v/tiny``."""
    env = os.environ.get("DENSECAP_TINY_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/densecap-t2v/tiny").expanduser()


def resolve_model_ref(ref: str) -> str:
    """Turn a config's model reference into something ``from_pretrained`` accepts.

    ``tiny://vlm`` names a tiny offline model under the tiny-model folder (``captioner make-tiny``);
    it is built on first use. ``~`` is expanded in local paths. Hub ids pass through unchanged.
    """
    if ref.startswith(TINY_SCHEME):
        from captioner.tiny import make_tiny

        name = ref[len(TINY_SCHEME):]
        paths = make_tiny(tiny_dir())
        if name not in paths:
            raise ConfigError(f"model {ref!r}: unknown tiny model {name!r}; available: {', '.join(sorted(paths))}")
        return str(paths[name])
    expanded = os.path.expanduser(ref)
    if expanded != ref or ref.startswith((".", "/")):
        if not Path(expanded).exists():
            raise ConfigError(f"model path {expanded} does not exist")
    return expanded
