"""Model references in configs: hub ids, local paths, ``tiny://NAME`` for the offline tiny models and
``real://NAME`` for the offline real small model. The core knows the schemes, the folders they live
in and local paths; each side resolves its own names (``captioner.modelrefs.resolve_model_ref`` for
the captioning models, ``t2v.tiny.resolve_t2v_model`` for the video pipelines)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from densecap.errors import ConfigError

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


def resolve_local_ref(ref: str) -> str:
    """A hub id unchanged; a local path (``~``, ``.``, ``/``) expanded, and checked to exist."""
    expanded = os.path.expanduser(ref)
    if expanded != ref or ref.startswith((".", "/")):
        if not Path(expanded).exists():
            raise ConfigError(f"model path {expanded} does not exist")
    return expanded
