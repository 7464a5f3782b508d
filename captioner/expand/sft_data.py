"""The expander's training data: (short prompt, dense caption) pairs from a ``captioner pairs`` file
(or its chat/ShareGPT SFT export), split into trained and held-out pairs, and each turned into the
conversation the expander sends at inference plus the caption as the reply, tokenised with the model's
chat template with labels on the reply (and its end-of-turn token) only."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densecap.errors import CaptionerError

__all__ = ["IGNORE_INDEX", "EncodedExample", "ExpanderTrainingError", "TrainingPair", "collate", "encode_conversation", "end_of_turn_ids",
           "load_training_pairs", "split_pairs", "training_messages"]

IGNORE_INDEX = -100


class ExpanderTrainingError(CaptionerError):
    """Training the expander cannot go on (bad data, a template that cannot be masked, a refused resume)."""


@dataclass(frozen=True)
class TrainingPair:
    id: str
    prompt: str
    caption: str


_PAIRS_HINT = "pass the pairs .jsonl written by `captioner pairs` (or its --sft chat export)"
_PROMPT_TAGS = re.compile(r"^\s*<prompt>(.*)</prompt>\s*$", re.DOTALL | re.IGNORECASE)


def _first_object(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return json.loads(line)
    except FileNotFoundError:
        raise ExpanderTrainingError(f"{path}: pairs file not found") from None
    except IsADirectoryError:
        raise ExpanderTrainingError(f"{path}: is a folder; {_PAIRS_HINT}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExpanderTrainingError(f"{path}:1: not a JSON line; {_PAIRS_HINT}") from None
    return None


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _load_chat_rows(path: Path) -> list[TrainingPair]:
    """``{"messages": [{"role", "content"}, ...]}`` or ``{"conversations": [{"from", "value"}, ...]}``
    rows (``captioner pairs --sft``): the last user turn is the short prompt, the last assistant turn
    the caption; the row's own system turn is replaced by the expansion prompt's."""
    roles = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
    out: list[TrainingPair] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExpanderTrainingError(f"{where}: not valid JSON ({exc.msg})") from None
            turns = obj.get("messages", obj.get("conversations")) if isinstance(obj, dict) else None
            if not isinstance(turns, list):
                raise ExpanderTrainingError(f"{where}: expected a 'messages' list like the lines before; {_PAIRS_HINT}")
            prompt = caption = None
            for t in turns:
                if not isinstance(t, dict):
                    raise ExpanderTrainingError(f"{where}: every turn must be an object")
                role = roles.get(str(t.get("role", t.get("from"))))
                text = _text_of(t.get("content", t.get("value")))
                if role == "user" and text:
                    prompt = text
                elif role == "assistant" and text:
                    caption = text
            if not prompt or not caption or not prompt.strip() or not caption.strip():
                raise ExpanderTrainingError(f"{where}: needs a non-empty user turn (short prompt) and assistant "
                                            "turn (caption)")
            m = _PROMPT_TAGS.match(prompt)
            prompt = (m.group(1) if m else prompt).strip()
            caption = caption.strip()
            pid = hashlib.sha256(f"{prompt}\0{caption}".encode()).hexdigest()[:20]
            out.append(TrainingPair(pid, prompt, caption))
    return out


def load_training_pairs(path: str | Path) -> list[TrainingPair]:
    """The (short prompt, caption) pairs of a ``captioner pairs`` file (read with
    :func:`captioner.pairs.sft.load_pairs`) or of its chat/ShareGPT SFT export. Errors name the file."""
    from captioner.pairs.sft import load_pairs

    path = Path(path)
    first = _first_object(path)
    if first is None:
        raise ExpanderTrainingError(f"{path}: no pairs in the file")
    if isinstance(first, dict) and ("messages" in first or "conversations" in first) and "caption" not in first:
        pairs = _load_chat_rows(path)
    else:
        try:
            pairs = [TrainingPair(p.id, p.prompt, p.caption) for p in load_pairs(path)]
        except ExpanderTrainingError:
            raise
        except CaptionerError as exc:
            raise ExpanderTrainingError(f"{exc}; {_PAIRS_HINT}") from None
    if not pairs:
        raise ExpanderTrainingError(f"{path}: no pairs in the file")
    return pairs


def split_pairs(pairs: Sequence[TrainingPair], fraction: float, seed: int) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """(train, held out): ``round(fraction * n)`` pairs (at least one when ``fraction > 0``, never all)
    ranked by a hash of the seed and the pair id, each part in file order."""
    n = len(pairs)
    if fraction <= 0 or n < 2:
        return list(pairs), []
    n_eval = min(n - 1, max(1, round(fraction * n)))
    ranked = sorted(range(n), key=lambda i: (hashlib.sha256(f"{seed}\0{pairs[i].id}".encode()).hexdigest(), i))
    held = set(ranked[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def training_messages(expander, prompt: str, caption: str) -> list[dict[str, str]]:
    """The conversation for one pair: exactly what ``expander`` sends for ``prompt`` with no examples
    (:meth:`~captioner.expand.Expander.conversation`), then ``caption`` as the assistant's reply."""
    conv = expander.conversation(prompt, [])
    return [{"role": m.role, "content": m.text} for m in conv] + [{"role": "assistant", "content": caption}]


def _render(tokenizer, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    # the hf backend tokenises the rendered prompt the same way at inference
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_conversation(tokenizer, messages: list[dict[str, str]], *, end_ids: set[int] | frozenset[int] = frozenset(),
                        name: str = "the model") -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a conversation whose last message is the assistant's reply.

    The labels are ``-100`` on the prompt (the conversation up to the reply, rendered with
    ``add_generation_prompt=True``) and on anything the template writes after the reply's last
    end-of-turn token (``end_ids``, e.g. the newline after ``<|im_end|>``)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's reply")
    prefix = _render(tokenizer, messages[:-1], generation_prompt=True)
    full = _render(tokenizer, messages, generation_prompt=False)
    if len(full) <= len(prefix) or full[: len(prefix)] != prefix:
        at = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), min(len(prefix), len(full)))
        raise ExpanderTrainingError(
            f"{name}: the chat template's prompt (add_generation_prompt=True, {len(prefix)} tokens) is not a prefix "
            f"of the tokenised conversation with the reply ({len(full)} tokens; they differ at token {at}), so the "
            "reply's tokens cannot be told apart for the loss; use a model whose template renders the "
            "assistant turn after its generation prompt"
        )
    reply = full[len(prefix):]
    ends = [i for i, t in enumerate(reply) if t in end_ids]
    keep = ends[-1] + 1 if ends else len(reply)
    labels = [IGNORE_INDEX] * len(prefix) + reply[:keep] + [IGNORE_INDEX] * (len(reply) - keep)
    return full, labels


@dataclass
class EncodedExample:
    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids (``pad_id``), attention_mask, labels (``-100``)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def end_of_turn_ids(tokenizer, model_config_eos: Any = None) -> set[int]:
    ids: set[int] = set()
    for v in (tokenizer.eos_token_id, model_config_eos):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids
