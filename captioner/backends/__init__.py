"""Chat backends: local transformers models (``hf``) and OpenAI-compatible servers (``openai``).

``build_backend(cfg)`` turns a config section into a :class:`ChatBackend`; the heavy
implementation modules (torch/transformers, httpx) are imported only when a backend is built.
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from captioner.backends.base import ChatBackend, Conversation, Message, prepare_image
from captioner.backends.config import BackendConfig, HFBackendConfig, OpenAIBackendConfig
from densecap.errors import BackendError, ConfigError

__all__ = [
    "BackendConfig",
    "BackendError",
    "ChatBackend",
    "Conversation",
    "HFBackendConfig",
    "Message",
    "OpenAIBackendConfig",
    "build_backend",
    "prepare_image",
]


_ADAPTER: TypeAdapter = TypeAdapter(BackendConfig)


def build_backend(cfg: HFBackendConfig | OpenAIBackendConfig | dict) -> ChatBackend:
    """Build the backend a config describes (a dict is validated first); an ``hf`` model reference is
    resolved first (``tiny://NAME`` and ``real://NAME`` built on first use, ``~`` expanded)."""
    if isinstance(cfg, dict):
        try:
            cfg = _ADAPTER.validate_python(cfg)
        except ValidationError as err:
            raise ConfigError(f"invalid backend config: {err}") from None
    if isinstance(cfg, HFBackendConfig):
        from captioner.backends.hf import HFBackend
        from captioner.modelrefs import REAL_SCHEME, TINY_SCHEME, resolve_model_ref

        # tiny://NAME, real://NAME and ~ resolved here, for every caller; a missing folder is reported by
        # HFBackend (a BackendError naming it). A server's model name (openai) is never resolved: it is
        # not a file here.
        if cfg.model.startswith((TINY_SCHEME, REAL_SCHEME, "~")):
            cfg = cfg.model_copy(update={"model": resolve_model_ref(cfg.model)})
        return HFBackend(cfg)
    if isinstance(cfg, OpenAIBackendConfig):
        from captioner.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg)
    raise ConfigError(f"unknown backend config type {type(cfg).__name__}")
