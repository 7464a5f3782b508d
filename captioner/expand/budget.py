"""The token budget of the video model's text encoder, counted with that model's own tokenizer.

A text-to-video pipeline truncates its prompt at a fixed token count (Wan: 512 UMT5 tokens, CogVideoX:
226 T5 tokens, LTX-Video: 128), silently cutting the end of a caption, often mid-sentence; CogVideoX's
prompt-embedding path refuses over-long prompts outright. :class:`TokenBudget` counts tokens exactly
as the pipeline's tokenizer call does (special tokens included) and, when a caption is over, trims it
at a sentence boundary, never inside a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from captioner.text import split_sentences
from densecap.errors import ConfigError

__all__ = ["TokenBudget", "split_sentences"]  # split_sentences: re-exported, it lived here


@dataclass
class TokenBudget:
    """Counts tokens of a text as the target pipeline's tokenizer does; ``max_tokens`` is the encoder's
    limit (special tokens included, like the pipeline's ``max_sequence_length``)."""

    tokenizer: Any
    max_tokens: int
    name: str

    @classmethod
    def from_pretrained(
        cls, ref: str, max_tokens: int, *, subfolder: str | None = None, revision: str | None = None
    ) -> TokenBudget:
        """Load a tokenizer with ``AutoTokenizer.from_pretrained`` (a pipeline folder or hub id with
        ``subfolder="tokenizer"``, or a tokenizer's own folder/id)."""
        from transformers import AutoTokenizer

        kw: dict[str, Any] = {}
        if subfolder:
            kw["subfolder"] = subfolder
        if revision:
            kw["revision"] = revision
        try:
            tok = AutoTokenizer.from_pretrained(ref, **kw)
        except (OSError, ValueError) as exc:
            where = f"{ref}" + (f" (subfolder {subfolder})" if subfolder else "")
            raise ConfigError(f"target tokenizer {where}: cannot load ({exc})") from None
        if max_tokens < 8:
            raise ConfigError(f"target.max_tokens must be at least 8, got {max_tokens}")
        name = f"{ref}/{subfolder}" if subfolder else ref
        return cls(tokenizer=tok, max_tokens=int(max_tokens), name=name)

    def count(self, text: str) -> int:
        """Tokens of ``text``, special tokens (e.g. T5's ``</s>``) included, whitespace normalised as the
        Wan and CogVideoX pipelines do before tokenizing."""
        text = " ".join(text.split())
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def fits(self, text: str) -> bool:
        return self.count(text) <= self.max_tokens

    def trim(self, text: str) -> str | None:
        """The longest run of whole leading sentences that fits, or ``None`` when not even the first
        sentence does."""
        sentences = split_sentences(text)
        kept = ""
        for sentence in sentences:
            candidate = f"{kept} {sentence}".strip()
            if not self.fits(candidate):
                break
            kept = candidate
        return kept or None

    def describe(self) -> dict:
        return {"tokenizer": self.name, "max_tokens": self.max_tokens}
