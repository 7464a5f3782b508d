"""The prompts of ``t2v generate``: reading a prompts file (text or JSONL) and the prompt expansions fed to
the pipeline (made with :func:`t2v.expansion.expand_for_generation`, or given, and checked)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from t2v.generate.config import GenerateConfig, GenerateError


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: one per line (blank lines and lines starting with ``#`` skipped), or, for a
    ``.jsonl`` file, one JSON object per line with a ``prompt`` string. Errors name the file and line."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenerateError(f"{p}: prompts file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenerateError(f"{p}: cannot read the prompts file ({e})") from None
    prompts: list[str] = []
    jsonl = p.suffix.lower() == ".jsonl"
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or (not jsonl and stripped.startswith("#")):
            continue
        if not jsonl:
            prompts.append(stripped)
            continue
        try:
            row = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise GenerateError(f"{p}:{no}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise GenerateError(f"{p}:{no}: expected a JSON object with a \"prompt\" key")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise GenerateError(f"{p}:{no}: \"prompt\" must be a non-empty string, got {row['prompt']!r}")
        prompts.append(row["prompt"].strip())
    if not prompts:
        raise GenerateError(f"{p}: no prompts in the file")
    return prompts


def _expand(cfg: GenerateConfig, prompts: list[str], family: str, model_id: str,
            revision: str | None = None) -> list[dict[str, Any]]:
    """Expansions of ``prompts`` for this video model (:func:`t2v.expansion.expand_for_generation`: the
    pipeline's own tokenizer bounds their length)."""
    from t2v import expansion

    result = expansion.expand_for_generation(cfg.expand, list(prompts), family=family, model_id=model_id,
                                             overrides=(), revision=revision)
    return _check_expansions(result, len(prompts), f"expand ({cfg.expand})")


def _check_expansions(expansions: Any, n: int, source: str) -> list[dict[str, Any]]:
    items = list(expansions) if expansions is not None else []
    if len(items) != n:
        raise GenerateError(f"{source}: {len(items)} expansions for {n} prompts")
    for i, e in enumerate(items):
        if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not e["text"].strip():
            raise GenerateError(f"{source}: expansion {i} must be a dict with a non-empty \"text\", got {e!r}")
    return items
