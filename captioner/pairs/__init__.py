"""(short prompt, dense caption) pairs mined from a captioned corpus: ``captioner pairs``.

At inference a user types a short prompt, but the video model was fine-tuned on long dense
captions. Like ShareGPT4Video's re-captioner, trained "in reverse", we ask a text model to write,
for each dense caption of a corpus, the short prompt a user would have typed to get that video.
The pairs are retrieved as few-shot examples by the prompt expander (:func:`load_pairs`) and can
be exported as chat-format SFT data to fine-tune an expander (:func:`export_sft`).

Input (:func:`read_captions`): a ``captioner run`` folder, a record ``.json``, a JSONL shard of
records, an export's ``captions.jsonl`` / ``metadata.jsonl`` (key ``caption``), ``metadata.csv``
(column ``caption``), or a dataset folder holding one of these. Each caption gets a stable id: a hash
of the video path, clip range and caption text (the text alone when there is no video), so a
caption that changes is a new item and a rerun skips the finished ones.

Each answer is cleaned (wrapping quotes, ``Prompt:`` labels, whitespace) and checked
(:func:`check_prompt`: one line, one sentence, word count in ``[min_words, max_words]``, no "The
video shows", no unprintable characters or repeated phrases (a model stuck in a loop), not the
caption's first sentence copied); a refused answer is asked again with the
reason appended to the conversation, up to ``max_retries`` times, then recorded in
``PAIRS.errors.jsonl`` instead of a pair.

Output ``PAIRS`` (JSONL, one line per pair, fsynced as answers arrive)::

    {"id": str, "prompt": str, "caption": str, "source": {"video", "start", "end"} | null,
     "attempts": int, "model": {...}}

next to ``PAIRS.meta.json`` (writer model, prompt version, word window, ...; a rerun with other
values is refused, naming them) and ``PAIRS.errors.jsonl``. For ``pairs.jsonl`` these are
``pairs.meta.json`` and ``pairs.errors.jsonl``.

This package module runs the writer (:class:`PairWriter`, :func:`mine_pairs`); the config and prompt
file are :mod:`captioner.pairs.config`, the answer checks :mod:`captioner.pairs.checks`, reading the
input captions :mod:`captioner.pairs.reading`, the PAIRS file :mod:`captioner.pairs.output`, and reading
pairs back and the SFT export :mod:`captioner.pairs.sft`; their names are importable from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.backends.base import ChatBackend, Message

# the config, checks, input, output and SFT export live in the submodules; importable from here
from captioner.pairs.checks import check_prompt, clean_prompt, first_sentence  # noqa: F401 (re-exported)
from captioner.pairs.config import (  # noqa: F401 (re-exported)
    DEFAULT_WRITER,
    PAIRS_SCHEMA,
    PairsConfig,
    build_request,
    default_sft_system,
    load_pairs_prompts,
)
from captioner.pairs.output import (  # noqa: F401 (re-exported)
    META_FORMAT,
    META_FORMAT_VERSION,
    PairsOutput,
    meta_settings,
    sidecar_paths,
)
from captioner.pairs.reading import (  # noqa: F401 (re-exported)
    DATASET_FILES,
    CaptionInput,
    CaptionItem,
    item_id,
    read_captions,
)
from captioner.pairs.sft import PAIR_KEYS, SFT_FORMATS, Pair, export_sft, load_pairs, sft_row  # noqa: F401 (re-exported)
from densecap.errors import BackendError, CaptionerError

log = logging.getLogger(__name__)

__all__ = [
    "SFT_FORMATS",
    "CaptionInput",
    "CaptionItem",
    "Pair",
    "PairWriter",
    "PairsConfig",
    "PairsResult",
    "build_request",
    "check_prompt",
    "clean_prompt",
    "default_sft_system",
    "export_sft",
    "item_id",
    "load_pairs",
    "load_pairs_prompts",
    "mine_pairs",
    "read_captions",
    "sidecar_paths",
]


# ---------------------------------------------------------------------------------------- writer


@dataclass
class Outcome:
    """What became of one caption: its prompt (None when every answer was refused), and the tries."""

    item: CaptionItem
    prompt: str | None
    answers: list[str]
    reasons: list[str]

    @property
    def attempts(self) -> int:
        return len(self.answers)


class PairWriter:
    """The text model that writes short prompts, built from a :class:`PairsConfig` (loaded once)."""

    def __init__(self, config: PairsConfig, backend: ChatBackend | None = None, prompts: dict[str, Any] | None = None):
        self.config = config
        self.prompts = prompts if prompts is not None else load_pairs_prompts(config.prompts)
        self._ref = config.writer.model if backend is None else None
        self._own = backend is None
        if backend is None:
            from captioner.backends import build_backend

            backend = build_backend(config.writer_config())
        self.backend = backend

    def describe(self) -> dict:
        info = dict(self.backend.describe())
        if self._ref is not None:
            info["model"] = self._ref  # as the config names it (tiny://llm, a hub id, a path)
        return info

    def run(self, items: Sequence[CaptionItem]) -> Iterator[Outcome]:
        """Ask for the prompts of ``items`` in one batch; yield each outcome once it is final (after
        every round of answers), so callers can write as answers arrive."""
        cfg = self.config
        p = self.prompts["pairs"]
        convs = {i: build_request(it.caption, self.prompts, cfg.min_words, cfg.max_words) for i, it in enumerate(items)}
        outcomes = {i: Outcome(it, None, [], []) for i, it in enumerate(items)}
        pending = list(convs)
        while pending:
            answers = self.backend.generate([convs[i] for i in pending], max_new_tokens=cfg.max_new_tokens)
            if len(answers) != len(pending):
                raise CaptionerError(f"the writer returned {len(answers)} answers for {len(pending)} requests")
            still = []
            for i, answer in zip(pending, answers):
                out = outcomes[i]
                out.answers.append(answer)
                text, reason = check_prompt(
                    answer, caption=out.item.caption, min_words=cfg.min_words, max_words=cfg.max_words,
                    reject_first_sentence=cfg.reject_first_sentence,
                )
                if reason is None:
                    out.prompt = text
                    yield out
                    continue
                out.reasons.append(reason)
                if out.attempts > cfg.max_retries:
                    yield out
                    continue
                again = p["retry"].format(reason=reason, min_words=cfg.min_words, max_words=cfg.max_words).strip()
                convs[i] = [*convs[i], Message.assistant(answer.strip()), Message.user(again)]
                still.append(i)
            pending = still

    def close(self) -> None:
        if self._own:
            self.backend.close()

    def __enter__(self) -> PairWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class PairsResult:
    out: Path
    meta: Path
    errors: Path
    read: int = 0  # captions in the input, empty ones and duplicates included
    empty: int = 0
    duplicates: int = 0
    done_before: int = 0  # already in PAIRS
    failed_before: int = 0  # in PAIRS.errors.jsonl, not retried (retry_failed=false)
    new: int = 0
    failed: int = 0
    left: int = 0  # not attempted because of ``limit``
    answers: int = 0  # model answers this run (retries included)
    total_pairs: int = 0  # pairs in PAIRS after the run
    usage: dict[str, int] = field(default_factory=dict)
    model: dict[str, Any] | None = None


def mine_pairs(
    captions: str | Path | CaptionInput,
    out: str | Path,
    config: PairsConfig,
    *,
    backend: ChatBackend | None = None,
    limit: int | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> PairsResult:
    """Write the short prompt of every caption of ``captions`` not yet in ``out``; see the module doc.

    ``backend``: use this chat backend instead of building ``config.writer`` (not closed here).
    ``limit``: attempt at most this many new captions. ``progress``: a tqdm bar, or a callback
    ``(finished, total)`` called after each caption. A backend failure stops the run (the pairs
    already written are kept, and a rerun resumes); refused answers only fail their caption.
    """
    prompts = load_pairs_prompts(config.prompts)
    inp = captions if isinstance(captions, CaptionInput) else read_captions(captions)
    with PairsOutput(out, config, prompts) as output:
        result = PairsResult(
            out=output.path, meta=output.meta_path, errors=output.errors_path,
            read=inp.read, empty=inp.empty, duplicates=inp.duplicates,
        )
        todo: list[CaptionItem] = []
        for item in inp.items:
            if item.id in output.done:
                result.done_before += 1
            elif item.id in output.failed and not config.retry_failed:
                result.failed_before += 1
            else:
                todo.append(item)
        if limit is not None:
            result.left = max(0, len(todo) - limit)
            todo = todo[: max(0, limit)]
        if todo:
            _write_all(todo, output, config, prompts, backend, result, progress)
        result.total_pairs = len(output.done)
    return result


def _write_all(
    todo: list[CaptionItem], output: PairsOutput, config: PairsConfig, prompts: dict[str, Any],
    backend: ChatBackend | None, result: PairsResult, progress: bool | Callable[[int, int], None],
) -> None:
    from tqdm.auto import tqdm

    writer = PairWriter(config, backend=backend, prompts=prompts)  # loads the model
    bar = None
    if not callable(progress):
        bar = tqdm(total=len(todo), unit="caption", desc="pairs", disable=not progress, dynamic_ncols=True)
    finished = 0
    try:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            for outcome in writer.run(batch):
                result.answers += outcome.attempts
                if outcome.prompt is not None:
                    output.write_pair(outcome.item, outcome.prompt, outcome.attempts, writer.describe())
                    result.new += 1
                else:
                    output.write_error(outcome.item, outcome.reasons, outcome.answers)
                    result.failed += 1
                finished += 1
                if bar is not None:
                    bar.update(1)
                else:
                    progress(finished, len(todo))
    except BackendError as exc:
        raise BackendError(
            f"{exc} ({result.new} new pairs were written to {output.path} before the failure; "
            "run the same command again to resume)"
        ) from exc
    finally:
        result.usage = writer.backend.usage()
        result.model = writer.describe()
        writer.close()
        if bar is not None:
            bar.close()
