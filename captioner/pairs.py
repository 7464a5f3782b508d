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
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from captioner.backends import BackendConfig, HFBackendConfig, OpenAIBackendConfig
from captioner.backends.base import ChatBackend, Message
from captioner.prompts import load_prompts
from densecap.config import StrictModel
from densecap.errors import BackendError, CaptionerError, ConfigError
from densecap.files import lock_output, write_json_atomic

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

DEFAULT_WRITER = "Qwen/Qwen2.5-7B-Instruct"
META_FORMAT = "densecap-pairs"
META_FORMAT_VERSION = 1
SFT_FORMATS = ("chat", "sharegpt")
PAIR_KEYS = ("id", "prompt", "caption")

# Keys of a pairs prompt file, with the placeholders each may use (``examples`` is checked apart).
PAIRS_SCHEMA: dict[str, dict[str, set[str]]] = {
    "pairs": {
        "system": {"min_words", "max_words"},
        "user": {"caption"},
        "retry": {"reason", "min_words", "max_words"},
        "sft_system": set(),
    }
}


# ---------------------------------------------------------------------------------------- config


class PairsConfig(StrictModel):
    """Config of ``captioner pairs`` (configs/pairs/*.yaml)."""

    writer: BackendConfig = Field(default_factory=lambda: HFBackendConfig(model=DEFAULT_WRITER))
    prompts: str = Field("pairs-v1", description="built-in prompt name or path to a prompt YAML file")
    batch_size: int = Field(16, ge=1, description="captions per model call (and per durable write)")
    max_new_tokens: int = Field(64, ge=1, description="token budget of one answer")
    min_words: int = Field(4, ge=1, description="fewest words of a short prompt")
    max_words: int = Field(20, ge=1, description="most words of a short prompt")
    max_retries: int = Field(2, ge=0, description="times a refused answer is asked again, with the reason")
    reject_first_sentence: bool = Field(
        True, description="refuse a prompt that is the caption's first sentence word for word (copied, not summarised)"
    )
    seed: int = Field(0, description="sampling seed of the writer (replaces writer.seed); greedy decoding needs none")
    retry_failed: bool = Field(False, description="on a rerun, try again the captions listed in PAIRS.errors.jsonl")
    fsync: bool = Field(True, description="fsync every line written (safe against power loss)")

    @model_validator(mode="after")
    def _check_window(self) -> PairsConfig:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")
        return self

    def writer_config(self) -> HFBackendConfig | OpenAIBackendConfig:
        """The writer's backend config with ``seed`` applied."""
        return self.writer.model_copy(update={"seed": self.seed})


# --------------------------------------------------------------------------------------- prompts


def load_pairs_prompts(name_or_path: str | Path = "pairs-v1") -> dict[str, Any]:
    """Load and check a pairs prompt file; errors name the file and the key."""
    data = load_prompts(name_or_path, schema=PAIRS_SCHEMA)
    where = data["_path"]
    p = data["pairs"]
    if "{caption}" not in p["user"]:
        raise ConfigError(f"{where}: pairs.user must contain {{caption}} (the dense caption to shorten)")
    examples = p.get("examples") or []
    if not isinstance(examples, list):
        raise ConfigError(f"{where}: pairs.examples must be a list of mappings with 'caption' and 'prompt'")
    for i, ex in enumerate(examples):
        ok = (
            isinstance(ex, dict)
            and set(ex) == {"caption", "prompt"}
            and all(isinstance(ex[k], str) and ex[k].strip() for k in ("caption", "prompt"))
        )
        if not ok:
            raise ConfigError(
                f"{where}: pairs.examples[{i}] must be a mapping with exactly the non-empty strings 'caption' and 'prompt'"
            )
    p["examples"] = examples
    return data


def default_sft_system(prompts: str | Path = "pairs-v1") -> str:
    """The expander's instruction (the system turn of SFT data) of a pairs prompt file."""
    return load_pairs_prompts(prompts)["pairs"]["sft_system"].strip()


def build_request(caption: str, prompts: dict[str, Any], min_words: int = 4, max_words: int = 20) -> list[Message]:
    """The conversation asking for the short prompt of ``caption``: system, few-shot turns, the caption."""
    p = prompts["pairs"]
    messages = [Message.system(p["system"].format(min_words=min_words, max_words=max_words).strip())]
    for ex in p["examples"]:
        messages.append(Message.user(p["user"].format(caption=ex["caption"].strip())))
        messages.append(Message.assistant(ex["prompt"].strip()))
    messages.append(Message.user(p["user"].format(caption=caption.strip())))
    return messages


# ---------------------------------------------------------------------------------------- checks

_FENCE = re.compile(r"^```[\w-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
# "Prompt:", "Short prompt:", "**Prompt:**", "Here is the short prompt for this video:", "Sure! Here's a prompt:"
_PREFIX = re.compile(
    r"^(?:sure|okay|ok|certainly)?[\s,.!]*"
    r"(?:here\s+is|here's)?\s*(?:the|a|my|your)?\s*"
    r"[*_#>]*\s*"
    r"(?:(?:short|user|text-to-video|video|final|suggested|revised|new|concise)\s+)*"
    r"(?:prompt|caption)\b"
    r"(?:\s*\([^)\n]{0,40}\))?"  # "Prompt (12 words):"
    r"(?:\s+(?:for|of|that|which|a\s+user|users?)\b[^:：\n]{0,50}?)?"  # "prompt for this video:"
    r"\s*[*_]*\s*(?:[:：]|\s[-–—]\s)\s*[*_]*\s*",
    re.IGNORECASE,
)
_WRAPPERS = (("**", "**"), ('"', '"'), ("“", "”"), ("„", "“"), ("‘", "’"), ("«", "»"), ("`", "`"), ("'", "'"), ("*", "*"))
_CLOSERS = "\"'”“’»`*"
_META_START = re.compile(
    r"^(?:in\s+)?(?:the|this|a|an)\s+(?:short\s+|brief\s+)?(?:video|clip|footage)\b", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9])")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "mt", "ft", "jr", "sr", "vs", "no", "etc", "e.g", "i.e", "approx"}


def _unwrap(text: str) -> str:
    """``text`` without one pair of wrapping quotes / emphasis marks (moving a final period inside)."""
    tail = ""
    if len(text) >= 3 and text[-1] in ".!?" and text[-2] in _CLOSERS:
        text, tail = text[:-1], text[-1]
    for opening, closing in _WRAPPERS:
        if len(text) < len(opening) + len(closing) or not (text.startswith(opening) and text.endswith(closing)):
            continue
        inner = text[len(opening) : -len(closing)]
        if opening == "'":
            # apostrophes inside words (dog's) are fine; a quote next to a space is another quotation
            if re.search(r"(?:^|\s)'|'(?:\s|$)", inner):
                continue
        elif opening in inner or closing in inner:
            continue  # "a" and "b": two quotations, not one wrapped answer
        inner = inner.strip()
        if tail and inner and inner[-1] not in ".!?":
            inner += tail
        return inner
    return text + tail


def clean_prompt(answer: str) -> str:
    """An answer without code fences, ``Prompt:``-style labels, wrapping quotes and outer whitespace."""
    text = answer.strip()
    for _ in range(6):
        before = text
        m = _FENCE.match(text)
        if m:
            text = m.group(1).strip()
        text = _PREFIX.sub("", text, count=1).strip()
        text = _unwrap(text).strip()
        if text == before:
            break
    return text


def _words(text: str) -> list[str]:
    return [w for w in text.split() if any(c.isalnum() for c in w)]


def _sentence_breaks(text: str) -> list[int]:
    """Positions where a new sentence starts (abbreviations and initials are not sentence ends)."""
    breaks = []
    for m in _SENTENCE_END.finditer(text):
        if text[m.start()] == ".":
            before = text[: m.start()].split()
            last = before[-1].lower().lstrip("(\"'“‘") if before else ""
            if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                continue
        breaks.append(m.end())
    return breaks


def _unprintable(char: str) -> bool:
    return char == "\ufffd" or unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


def _repeated_phrase(text: str, n: int = 3) -> str | None:
    """The first run of ``n`` words that occurs twice (a model stuck in a loop), or None."""
    words = [w for w in (re.sub(r"[^\w\s]", " ", w.lower()).strip() for w in text.split()) if w]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            return " ".join(gram)
        seen.add(gram)
    return None


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    breaks = _sentence_breaks(text)
    return text[: breaks[0]].strip() if breaks else text


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def check_prompt(
    answer: str,
    *,
    caption: str | None = None,
    min_words: int = 4,
    max_words: int = 20,
    reject_first_sentence: bool = True,
) -> tuple[str, str | None]:
    """``(cleaned prompt, None)`` when the answer is a usable short prompt, else ``(cleaned, reason)``;
    the reason is written to be sent back to the model."""
    text = clean_prompt(answer)
    if not text:
        return text, "the answer is empty"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        return text, f"it has {len(lines)} lines, but the prompt must be a single line"
    text = " ".join(text.split())
    from captioner.expand.checks import check_language

    not_english = check_language(text, "en")
    if not_english:
        return text, not_english.replace("the caption", "the prompt")
    n = len(_words(text))
    if n < min_words:
        return text, f"it has {n} word{'s' if n != 1 else ''}, fewer than {min_words}"
    if n > max_words:
        return text, f"it has {n} words, more than {max_words}"
    if any(_unprintable(c) for c in text):
        return text, "it contains unprintable characters"
    repeated = _repeated_phrase(text)
    if repeated:
        return text, f'it repeats itself ("{repeated}" more than once)'
    m = _META_START.match(text)
    if m:
        return text, f'it starts with "{m.group(0)}"; describe the scene itself instead of talking about the video'
    sentences = len(_sentence_breaks(text)) + 1
    if sentences > 1:
        return text, f"it has {sentences} sentences, but the prompt must be one sentence"
    if reject_first_sentence and caption and _normal(text) == _normal(first_sentence(caption)):
        return text, "it copies the caption's first sentence; sum up the whole video in your own short words"
    return text, None


# ----------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class CaptionItem:
    """One dense caption to pair: its id, text, where its video is, and where it was read."""

    id: str
    caption: str
    source: dict[str, Any] | None = field(default=None, hash=False)  # {"video", "start", "end"} or None
    where: str = ""  # "file:line", for messages


@dataclass
class CaptionInput:
    items: list[CaptionItem]
    read: int = 0  # captions read, empty ones and duplicates included
    empty: int = 0
    duplicates: int = 0


def item_id(caption: str, video: str | None = None, start: float | None = None, end: float | None = None) -> str:
    """Stable id of a caption of a clip: a hash of video path, range and text (text alone without a video)."""
    key = json.dumps([video, start, end, caption.strip()], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def _seconds(value: Any, where: str, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise CaptionerError(f"{where}: {name} must be a number of seconds or empty (got {value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CaptionerError(f"{where}: {name} must be a number of seconds or empty (got {value!r})") from None
    if math.isnan(number):
        raise CaptionerError(f"{where}: {name} is not a number")
    return round(number, 6)


def _make_source(video: str | None, start: float | None, end: float | None) -> dict[str, Any] | None:
    if video is None and start is None and end is None:
        return None
    return {"video": video, "start": start, "end": end}


class _Collector:
    def __init__(self) -> None:
        self.out = CaptionInput(items=[])
        self._seen: set[str] = set()

    def add(self, caption: Any, where: str, video: str | None = None, start: float | None = None, end: float | None = None) -> None:
        self.out.read += 1
        if caption is None:
            caption = ""
        if not isinstance(caption, str):
            raise CaptionerError(f"{where}: caption must be a string (got {type(caption).__name__})")
        text = caption.strip()
        if not text:
            self.out.empty += 1
            return
        key = item_id(text, video, start, end)
        if key in self._seen:
            self.out.duplicates += 1
            return
        self._seen.add(key)
        self.out.items.append(CaptionItem(key, text, _make_source(video, start, end), where))


def _video_near(value: Any, folder: Path, where: str) -> str | None:
    """A video path of a dataset file, absolute (relative ones are relative to the file's folder)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CaptionerError(f"{where}: video path must be a string (got {type(value).__name__})")
    path = Path(value).expanduser()
    return os.path.abspath(path if path.is_absolute() else folder / path)


def _iter_numbered(path: Path, *, read_unterminated: bool) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` of each non-blank JSONL line; errors name the file and the line.

    An unfinished last line (no newline) is read when ``read_unterminated`` and it is valid JSON (a
    hand-written file); otherwise it is skipped (a writer at work, or one that was killed).
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise CaptionerError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CaptionerError(f"{path}: is a folder, not a JSONL file") from None
    with fh:
        for n, raw in enumerate(fh, 1):
            torn = not raw.endswith(b"\n")
            if torn and not read_unterminated:
                return
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                if torn:
                    return
                raise CaptionerError(f"{path}:{n}: not UTF-8 text") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                if torn:
                    log.warning("%s:%d: skipped an unfinished last line", path, n)
                    return
                raise CaptionerError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            yield n, obj


def _looks_like_record(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("video"), dict) and "summary" in obj and "keyframes" in obj


def _from_records(path: Path, col: _Collector) -> None:
    from captioner.export import read_source_records

    for s in read_source_records(path):
        r = s.record
        video = os.path.abspath(os.path.expanduser(r.video.path))
        start = None if r.clip is None else round(float(r.clip.start), 6)
        end = None if r.clip is None else round(float(r.clip.end), 6)
        col.add(r.summary, f"{s.file}:{s.line}", video, start, end)


def _from_jsonl(path: Path, col: _Collector) -> None:
    lines = _iter_numbered(path, read_unterminated=True)
    first = next(lines, None)
    lines.close()
    if first is not None and _looks_like_record(first[1]):
        _from_records(path, col)
        return
    for n, obj in _iter_numbered(path, read_unterminated=True):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise CaptionerError(f"{where}: expected a JSON object with a 'caption' key, got {type(obj).__name__}")
        if "caption" not in obj:
            raise CaptionerError(
                f"{where}: no 'caption' key (keys: {', '.join(sorted(obj)) or 'none'}); expected a caption record "
                "or a row of an export's captions.jsonl / metadata.jsonl"
            )
        video = _video_near(obj.get("video") or obj.get("file_name"), path.parent, where)
        col.add(obj["caption"], where, video, _seconds(obj.get("start"), where, "start"), _seconds(obj.get("end"), where, "end"))


def _from_csv(path: Path, col: _Collector) -> None:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            if "caption" not in columns:
                raise CaptionerError(f"{path}: no 'caption' column (columns: {', '.join(columns) or 'none'})")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                video = _video_near(row.get("file_name") or row.get("video"), path.parent, where)
                col.add(
                    row.get("caption"), where, video,
                    _seconds(row.get("start"), where, "start"), _seconds(row.get("end"), where, "end"),
                )
    except UnicodeDecodeError:
        raise CaptionerError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise CaptionerError(f"{path}: not a valid CSV file ({exc})") from None


DATASET_FILES = ("captions.jsonl", "metadata.jsonl", "metadata.csv")


def read_captions(source: str | Path) -> CaptionInput:
    """The dense captions of a run folder, record file or shard, export file or dataset folder."""
    from captioner.shards import RECORDS_DIR, record_files

    path = Path(source)
    col = _Collector()
    if path.is_dir():
        if record_files(path):
            _from_records(path, col)
        else:
            found = next((path / name for name in DATASET_FILES if (path / name).is_file()), None)
            if found is None:
                raise CaptionerError(
                    f"{path}: neither a `captioner run` folder ({RECORDS_DIR}/part-*.jsonl) nor a dataset folder "
                    f"({', '.join(DATASET_FILES)})"
                )
            return read_captions(found)
    elif not path.exists():
        raise CaptionerError(f"{path}: no such file or folder")
    else:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            _from_csv(path, col)
        elif suffix == ".jsonl":
            _from_jsonl(path, col)
        elif suffix == ".json":
            _from_records(path, col)
        else:
            raise CaptionerError(
                f"{path}: unknown caption file type {suffix or '(none)'}; expected a run folder, a record .json, "
                "a .jsonl shard or captions.jsonl / metadata.jsonl, or metadata.csv"
            )
    if col.out.read == 0:
        raise CaptionerError(f"{path}: holds no captions")
    return col.out


# ---------------------------------------------------------------------------------------- output


def sidecar_paths(out: str | Path) -> tuple[Path, Path]:
    """``(meta, errors)`` files of a pairs file: ``pairs.jsonl`` -> ``pairs.meta.json``, ``pairs.errors.jsonl``."""
    out = Path(out)
    stem = out.name.removesuffix(".jsonl")
    return out.with_name(stem + ".meta.json"), out.with_name(stem + ".errors.jsonl")


def meta_settings(cfg: PairsConfig, prompts: dict[str, Any]) -> dict[str, Any]:
    """What shapes the pairs: a PAIRS file is only resumed with the same values."""
    w = cfg.writer
    return {
        "writer_model": w.model,
        "writer_revision": getattr(w, "revision", None),
        "temperature": w.temperature,
        "top_p": w.top_p,
        "seed": cfg.seed,
        "prompts": prompts["version"],
        "min_words": cfg.min_words,
        "max_words": cfg.max_words,
        "reject_first_sentence": cfg.reject_first_sentence,
    }


class PairsOutput:
    """A PAIRS file and its sidecars: settings check, what is done, durable appends."""

    def __init__(self, path: str | Path, cfg: PairsConfig, prompts: dict[str, Any]):
        from densecap.jsonl import repair_partial_tail

        self.path = Path(path)
        if self.path.is_dir():
            raise CaptionerError(f"{self.path}: is a folder; --out names the pairs file (e.g. pairs.jsonl)")
        self.meta_path, self.errors_path = sidecar_paths(self.path)
        self.fsync = cfg.fsync
        self.settings = meta_settings(cfg, prompts)
        self._pairs = None
        self._errors = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one run per PAIRS file: `.PAIRS.lock` beside it, held until close()
        self._lock = lock_output(self.path, "captioner pairs", self.path.with_name(f".{self.path.name}.lock"))
        try:
            self.done = self._ids(self.path)  # an unfinished last line is not counted: it is cut below
            errored = self._ids(self.errors_path)
            self._check_meta(cfg, prompts, has_data=bool(self.done or errored))
            repair_partial_tail(self.path)  # only once the file is known to be ours
            repair_partial_tail(self.errors_path)
            self.path.touch()  # PAIRS exists (maybe empty) once a run has started
            self.failed = errored - self.done
        except BaseException:
            self._lock.release()
            raise

    @staticmethod
    def _ids(path: Path) -> set[str]:
        if not path.exists():
            return set()
        ids: set[str] = set()
        for n, obj in _iter_numbered(path, read_unterminated=False):
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise CaptionerError(f"{path}:{n}: a line without an 'id'; is this a file written by `captioner pairs`?")
            ids.add(obj["id"])
        return ids

    def _check_meta(self, cfg: PairsConfig, prompts: dict[str, Any], has_data: bool) -> None:
        if self.meta_path.exists():
            try:
                meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CaptionerError(f"{self.meta_path}: not valid JSON ({exc}); delete it only if {self.path} is empty") from None
            if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
                raise CaptionerError(f"{self.meta_path}: not a `captioner pairs` meta file")
            before = meta.get("settings") or {}
            changed = [k for k in sorted(set(before) | set(self.settings)) if before.get(k) != self.settings.get(k)]
            if not changed:
                return
            if has_data:
                detail = ", ".join(f"{k}: {before.get(k)!r} -> {self.settings.get(k)!r}" for k in changed)
                raise ConfigError(
                    f"{self.path} holds pairs made with different settings (changed: {detail}); resuming would mix "
                    "pairs made two ways. Use a new --out file, or the original settings."
                )
        elif has_data:
            raise CaptionerError(
                f"{self.path} holds pairs but has no {self.meta_path.name}; it was not written by `captioner pairs` "
                "(or the meta file was deleted): use a new --out file"
            )
        meta = {
            "format": META_FORMAT,
            "format_version": META_FORMAT_VERSION,
            "settings": self.settings,
            "writer": cfg.writer_config().model_dump(mode="json"),
            "prompt_file": prompts.get("_path"),
            "max_new_tokens": cfg.max_new_tokens,
            "max_retries": cfg.max_retries,
            "created": round(time.time(), 3),
        }
        write_json_atomic(self.meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    def _appender(self, which: str):
        from densecap.jsonl import JsonlAppender

        if which == "pairs":
            if self._pairs is None:
                self._pairs = JsonlAppender(self.path, fsync=self.fsync)
            return self._pairs
        if self._errors is None:
            self._errors = JsonlAppender(self.errors_path, fsync=self.fsync)
        return self._errors

    def write_pair(self, item: CaptionItem, prompt: str, attempts: int, model: dict) -> None:
        self._appender("pairs").append(
            {"id": item.id, "prompt": prompt, "caption": item.caption, "source": item.source, "attempts": attempts, "model": model}
        )
        self.done.add(item.id)
        self.failed.discard(item.id)

    def write_error(self, item: CaptionItem, reasons: list[str], answers: list[str]) -> None:
        self._appender("errors").append(
            {
                "id": item.id,
                "where": item.where,
                "source": item.source,
                "caption": item.caption,
                "reason": reasons[-1] if reasons else "",
                "attempts": len(answers),
                "reasons": reasons,
                "last_answer": answers[-1][:1000] if answers else "",
            }
        )
        self.failed.add(item.id)

    def close(self) -> None:
        try:
            for app in (self._pairs, self._errors):
                if app is not None:
                    app.close()
        finally:
            self._lock.release()

    def __enter__(self) -> PairsOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


# ---------------------------------------------------------------------------------- reading, SFT


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
    for n, obj in _iter_numbered(path, read_unterminated=True):
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
