"""An expansion and how it was made (:class:`Expansion`, what ``t2v expand`` prints and sidecars
record), and the on-disk cache of finished expansions (:class:`ExpansionCache`)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from captioner.text import word_count

__all__ = ["CACHE_FORMAT", "Expansion", "ExpansionCache"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class Expansion:
    """One prompt's expansion and how it was made (what ``t2v expand`` prints and sidecars record)."""

    prompt: str
    text: str
    status: str  # "expanded" | "passthrough" | "fallback"
    reason: str | None = None
    tokens: int | None = None
    max_tokens: int | None = None
    tokenizer: str | None = None
    trimmed: bool = False
    attempts: int = 0
    similarity: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    prompt_version: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    key: str = ""
    cached: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def status_bits(self) -> list[str]:
        """Short facts for a status line: status, words, tokens / limit, tries, trimming, similarity, cached."""
        bits = [self.status, f"{word_count(self.text)} words"]
        if self.tokens is not None:
            bits.append(f"{self.tokens}/{self.max_tokens} tokens" if self.max_tokens else f"{self.tokens} tokens")
        if self.attempts:
            bits.append(f"{self.attempts} {'try' if self.attempts == 1 else 'tries'}")
        if self.trimmed:
            bits.append("trimmed at a sentence boundary")
        if self.similarity is not None:
            bits.append(f"similarity {self.similarity:.3f}")
        if self.cached:
            bits.append("cached")
        return bits

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Expansion:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


class ExpansionCache:
    """Finished expansions on disk, one JSON file per key (``DIR/ab/abcdef....json``), written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Expansion | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable cached expansion %s (%s)", path, exc)
            return None
        if data.get("format") != CACHE_FORMAT or data.get("key") != key:
            return None
        return Expansion.from_dict(data["expansion"])

    def put(self, key: str, expansion: Expansion) -> None:
        from densecap.files import write_json_atomic

        record = {"format": CACHE_FORMAT, "key": key, "expansion": expansion.to_dict() | {"cached": False}}
        write_json_atomic(self._path(key), json.dumps(record, ensure_ascii=False, indent=1) + "\n")
