"""Pairs read back from a PAIRS file (:func:`load_pairs`) and written as chat-format SFT data
(:func:`export_sft`) to fine-tune a prompt expander."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.pairs.config import default_sft_system
from captioner.pairs.reading import iter_numbered
from densecap.errors import CaptionerError
from densecap.files import write_json_atomic

__all__ = ["PAIR_KEYS", "SFT_FORMATS", "Pair", "export_sft", "load_pairs", "sft_row"]

SFT_FORMATS = ("chat", "sharegpt")
PAIR_KEYS = ("id", "prompt", "caption")


@dataclass(frozen=True)
class Pair:
    """A (short prompt, dense caption) pair; ``source`` is ``{"video", "start", "end"}`` or None."""

    id: str
    prompt: str
    caption: str
    source: dict[str, Any] | None = field(default=None, hash=False)


def load_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a PAIRS file, in file order. Errors name the file and line; an unfinished last
    line (a writer at work) is skipped."""
    path = Path(path)
    if not path.exists():
        raise CaptionerError(f"{path}: pairs file not found")
    pairs: list[Pair] = []
    first_line: dict[str, int] = {}
    for n, obj in iter_numbered(path, read_unterminated=True):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise CaptionerError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in PAIR_KEYS if k not in obj]
        if missing:
            raise CaptionerError(
                f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} "
                f"(a pair needs {', '.join(PAIR_KEYS)})"
            )
        for k in PAIR_KEYS:
            if not isinstance(obj[k], str) or not obj[k].strip():
                raise CaptionerError(f"{where}: {k!r} must be a non-empty string")
        source = obj.get("source")
        if source is not None and not isinstance(source, dict):
            raise CaptionerError(f"{where}: 'source' must be an object or null")
        if obj["id"] in first_line:
            raise CaptionerError(f"{where}: duplicate id {obj['id']!r} (first on line {first_line[obj['id']]})")
        first_line[obj["id"]] = n
        pairs.append(Pair(obj["id"], obj["prompt"].strip(), obj["caption"].strip(), source))
    return pairs


def sft_row(pair: Pair, system_prompt: str, format: str = "chat") -> dict[str, Any]:
    """One SFT example: the expander's instruction, the short prompt (user), the dense caption (assistant)."""
    if format == "chat":
        turns = [("system", system_prompt), ("user", pair.prompt), ("assistant", pair.caption)]
        return {"messages": [{"role": r, "content": c} for r, c in turns if r != "system" or c]}
    if format == "sharegpt":
        turns = [("system", system_prompt), ("human", pair.prompt), ("gpt", pair.caption)]
        return {"conversations": [{"from": r, "value": c} for r, c in turns if r != "system" or c]}
    raise CaptionerError(f"unknown SFT format {format!r}; choose from {', '.join(SFT_FORMATS)}")


def export_sft(
    pairs: Iterable[Pair], out_path: str | Path, system_prompt: str | None = None, *, format: str = "chat"
) -> Path:
    """Write ``pairs`` as SFT JSONL (atomically): ``{"messages": [system, user, assistant]}`` per line
    (``chat``, what TRL's SFTTrainer reads), or ``{"conversations": [{"from", "value"}, ...]}``
    (``sharegpt``). ``system_prompt``: None = the ``sft_system`` of pairs-v1; "" = no system turn."""
    if format not in SFT_FORMATS:
        raise CaptionerError(f"unknown SFT format {format!r}; choose from {', '.join(SFT_FORMATS)}")
    system = default_sft_system() if system_prompt is None else system_prompt.strip()
    rows = [sft_row(p, system, format) for p in pairs]
    if not rows:
        raise CaptionerError(f"{out_path}: no pairs to export")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return write_json_atomic(out_path, text)
