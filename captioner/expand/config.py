"""The expansion config (``configs/expand/*.yaml``): which model writes, what it is checked against, and
which video model's tokenizer bounds its length."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from captioner.backends import BackendConfig
from captioner.textembed import TextEmbedderConfig
from densecap.config import StrictModel

__all__ = ["ChecksConfig", "ExamplesConfig", "ExpandConfig", "TargetConfig", "default_cache_dir"]

def default_cache_dir() -> Path:
    env = os.environ.get("DENSECAP_CACHE_DIR")
    base = Path(env).expanduser() if env else Path("~/.cache/densecap-t2v").expanduser()
    return base / "expand"


class TargetConfig(StrictModel):
    """The video model the expansion is for: its tokenizer counts the budget.

    Give ``family`` + ``model`` (a pipeline: hub id, local folder or ``tiny://NAME``; its ``tokenizer``
    subfolder is used, and the family's text-encoder limit unless ``max_tokens`` is set), or
    ``tokenizer`` (any tokenizer id or folder) + ``max_tokens``. With none of them there is no budget.
    """

    # a model family of t2v's registry (t2v.families), checked there when t2v resolves the target;
    # the family's text-encoder limit (its spec's max_text_tokens) is the budget unless max_tokens is set
    family: str | None = None
    model: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    max_tokens: int | None = Field(None, ge=8)

    @model_validator(mode="after")
    def _complete(self) -> TargetConfig:
        if self.tokenizer and self.max_tokens is None:
            raise ValueError("target.tokenizer needs target.max_tokens (the text encoder's limit)")
        if self.model and not self.family:
            raise ValueError("target.model needs target.family (wan, cogvideox, ltx or another t2v family)")
        return self


class ExamplesConfig(StrictModel):
    """Few-shot examples shown to the model as earlier turns: the ``k`` (short prompt, caption) pairs whose
    prompts are nearest the user's (sentence embeddings), from ``pairs`` (``captioner pairs`` output) or,
    without it, from the prompt file's built-in examples."""

    pairs: str | None = Field(None, description="a pairs .jsonl from `captioner pairs`; null: built-in examples")
    k: int = Field(3, ge=0, le=16)
    embedder: TextEmbedderConfig = Field(default_factory=lambda: TextEmbedderConfig(device="cpu", batch_size=64))


class ChecksConfig(StrictModel):
    """What every expansion is checked for (see captioner.expand.checks)."""

    language: Literal["en", "any"] = "en"
    min_words: int = Field(30, ge=1)
    max_words: int = Field(250, ge=1)
    keep_quotes: bool = True
    keep_named_terms: bool = True
    min_coverage: float = Field(0.6, ge=0.0, le=1.0, description="share of the prompt's content words kept")
    exclusions: bool = True
    injections: bool = Field(True, description="a prompt that talks to the model (\"ignore previous instructions\") "
                             "is not sent to it: the original prompt is used")
    max_retries: int = Field(2, ge=0, description="asks again with the reason; then the original prompt is used")

    @model_validator(mode="after")
    def _window(self) -> ChecksConfig:
        if self.min_words > self.max_words:
            raise ValueError(f"checks.min_words ({self.min_words}) is above checks.max_words ({self.max_words})")
        return self


class ExpandConfig(StrictModel):
    """``t2v expand`` / ``t2v generate --expand``: a short prompt -> a detailed caption."""

    expander: BackendConfig
    prompts: str = "expand-v1"
    target_words: int = Field(100, ge=10, le=1000, description="the length asked for in the system prompt")
    max_new_tokens: int = Field(400, ge=1)
    candidates: int = Field(1, ge=1, le=16, description="sampled candidates; the one nearest the prompt is kept")
    passthrough_words: int | None = Field(
        60, ge=1, description="prompts of at least this many words are already detailed: used as they are"
    )
    force: bool = Field(False, description="expand even prompts over passthrough_words")
    seed: int = 0
    target: TargetConfig = Field(default_factory=TargetConfig)
    examples: ExamplesConfig = Field(default_factory=ExamplesConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    chunk_size: int = Field(64, ge=1, description="prompts per model round; each chunk is cached when done")
    cache: bool = True
    cache_dir: str | None = Field(None, description="default: $DENSECAP_CACHE_DIR/expand or ~/.cache/densecap-t2v/expand")

    @model_validator(mode="after")
    def _sampling(self) -> ExpandConfig:
        if self.candidates > 1 and self.expander.temperature == 0.0:
            raise ValueError(
                f"candidates: {self.candidates} needs sampling (expander.temperature > 0); with greedy "
                "decoding every candidate is the same text"
            )
        return self

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
