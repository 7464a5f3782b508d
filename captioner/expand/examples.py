"""Few-shot examples for the expander: the (short prompt, dense caption) pairs nearest a user's prompt.

The pairs come from the user's own corpus (``captioner pairs``: an LLM wrote a short prompt for each
training caption), so the examples the expander sees are captions the video model was fine-tuned on,
and its expansions take their style. Without a pairs file, the prompt file's built-in examples are
used the same way. Nearness is the cosine similarity of sentence embeddings (MiniLM by default) of
the short prompts; the embeddings of a pairs file are computed once and kept on disk beside the
expansion cache, keyed by the file's content and the embedding model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from captioner.textembed import TextEmbedder, TextEmbedderConfig
from densecap.errors import ConfigError

__all__ = ["Example", "ExampleIndex", "builtin_examples", "load_examples"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    caption: str


def builtin_examples(prompts: dict) -> list[Example]:
    """The ``examples`` list of a loaded prompt file."""
    items = prompts.get("examples") or []
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("prompt") or not item.get("caption"):
            raise ConfigError(f"{prompts.get('_path')}: examples[{i}] needs 'prompt' and 'caption'")
        out.append(Example(id=f"builtin-{i}", prompt=" ".join(str(item["prompt"]).split()),
                           caption=" ".join(str(item["caption"]).split())))
    return out


def load_examples(path: str | Path) -> list[Example]:
    """Pairs written by ``captioner pairs`` (one JSON object per line with ``id``, ``prompt``, ``caption``)."""
    from captioner.pairs.sft import load_pairs

    return [Example(id=p.id, prompt=p.prompt, caption=p.caption) for p in load_pairs(path)]


def _fingerprint(examples: list[Example], embedder: TextEmbedder) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(embedder.describe() | {"device": None, "dtype": None}, sort_keys=True).encode())
    for e in examples:
        h.update(b"\0" + e.prompt.encode("utf-8"))
    return h.hexdigest()[:24]


class ExampleIndex:
    """Embeddings of the examples' short prompts; :meth:`nearest` returns the ``k`` closest, best first."""

    def __init__(self, examples: list[Example], embedder: TextEmbedder, cache_dir: Path | None = None):
        self.examples = examples
        self.embedder = embedder
        self.source_key = _fingerprint(examples, embedder)
        self.vectors = self._embeddings(cache_dir)

    @classmethod
    def build(cls, examples: list[Example], cfg: TextEmbedderConfig, cache_dir: Path | None = None) -> ExampleIndex:
        return cls(examples, TextEmbedder(cfg), cache_dir)

    def _embeddings(self, cache_dir: Path | None) -> torch.Tensor:
        if not self.examples:
            return torch.zeros((0, self.embedder.dim))
        path = cache_dir / "examples" / f"{self.source_key}.safetensors" if cache_dir else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            try:
                vectors = load_file(str(path))["prompts"]
                if vectors.shape[0] == len(self.examples):
                    return vectors
            except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed
                log.warning("ignoring unreadable example embeddings %s (%s)", path, exc)
        vectors = self.embedder.encode([e.prompt for e in self.examples])
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({"prompts": vectors.contiguous()}, str(tmp))
            tmp.replace(path)
        return vectors

    def nearest(self, prompts: list[str], k: int) -> list[list[Example]]:
        """For each prompt, the ``k`` examples with the most similar short prompts (ties: file order)."""
        if k <= 0 or not self.examples or not prompts:
            return [[] for _ in prompts]
        queries = self.embedder.encode(prompts)
        sims = queries @ self.vectors.T
        k = min(k, len(self.examples))
        top = torch.topk(sims, k, dim=1, sorted=True).indices
        return [[self.examples[int(i)] for i in row.tolist()] for row in top]
