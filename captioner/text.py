"""Plain-text helpers shared by pairs mining (:mod:`captioner.pairs`) and prompt expansion
(:mod:`captioner.expand`): splitting sentences, cleaning a model's answer, words and the English check.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "ABBREVIATIONS",
    "FUNCTION_WORDS",
    "check_language",
    "first_sentence",
    "lower_words",
    "sentence_breaks",
    "split_sentences",
    "strip_answer",
    "word_count",
]

# ---------------------------------------------------------------------------------------- sentences

# a sentence ends at . ! ? (optionally followed by a closing quote or bracket) before whitespace and a
# capital letter or digit (optionally after an opening quote or bracket)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
#: Words (lower case, without their period) after which a period does not end a sentence. A single
#: letter does not either: an initial ("J. Smith").
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "mt", "ft", "jr", "sr", "vs", "no", "etc", "e.g", "i.e", "approx"}
)


def sentence_breaks(text: str) -> list[int]:
    """Positions in ``text`` where a new sentence starts (abbreviations and initials are not sentence ends)."""
    breaks = []
    for m in _SENTENCE_END.finditer(text):
        if text[m.start()] == ".":
            before = text[: m.start()].split()
            last = before[-1].lower().lstrip("(\"'“‘[") if before else ""
            if last in ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                continue
        breaks.append(m.end())
    return breaks


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (with their final punctuation and closing quotes), not split after common
    abbreviations ("e.g.", "Dr.") or initials ("J. Smith")."""
    pieces: list[str] = []
    start = 0
    for end in sentence_breaks(text):
        pieces.append(text[start:end].strip())
        start = end
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def first_sentence(text: str) -> str:
    """The first sentence of ``text``, whitespace collapsed."""
    text = " ".join(text.split())
    breaks = sentence_breaks(text)
    return text[: breaks[0]].strip() if breaks else text


# ------------------------------------------------------------------------------------------ answers

_FENCE = re.compile(r"^```[\w-]*\s*|\s*```$")
# a chat opener and a label: "Prompt:", "Short prompt:", "**Prompt:**", "Here is the short prompt for
# this video:", "Sure! Here's a prompt:"
_OPENER_AND_LABEL = re.compile(
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
# a bare label: "Caption:", "**Detailed caption:**"
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:caption|detailed caption|expanded prompt|prompt|video caption)\s*(?:\*\*)?\s*:\s*",
    re.IGNORECASE,
)
_WRAPPERS = (("**", "**"), ('"', '"'), ("“", "”"), ("„", "“"), ("‘", "’"), ("«", "»"), ("`", "`"), ("'", "'"), ("*", "*"))
_CLOSERS = "\"'”“’»`*"


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


def strip_answer(answer: str, *, paragraph: bool = False) -> str:
    """The text inside a model's answer: code fences, a leading label and one pair of wrapping quotes or
    emphasis marks removed, as often as they nest (``**Prompt:** "..."``), and outer whitespace.

    ``paragraph=False`` (a one-line answer: a short prompt): a chat opener before the label goes too
    ("Sure! Here is the short prompt for this video:"), and the lines are kept (a second line is for
    the checks to refuse). ``paragraph=True`` (a caption): only a bare label ("Caption:", "**Prompt:**")
    is removed, a chat opener is left for the checks to refuse; markdown emphasis inside is dropped,
    the lines are joined into one paragraph and runs of spaces collapsed.
    """
    label = _LABEL if paragraph else _OPENER_AND_LABEL
    text = answer.strip()
    for _ in range(6):
        before = text
        text = _FENCE.sub("", text).strip()
        text = label.sub("", text, count=1).strip()
        text = _unwrap(text).strip()
        if text == before:
            break
    if paragraph:
        text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
        text = re.sub(r"\s*\n\s*", " ", text)
        text = re.sub(r"[ \t]+", " ", text).strip()
    return text


# ---------------------------------------------------------------------------------- words, language

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)

# Function words: the English words that carry grammar, not content. Used for the language check
# (their share of the words) and to find a prompt's content words (everything else).
FUNCTION_WORDS = frozenset(
    """
    a an the this that these those there here it its it's they them their theirs he him his she her hers
    we us our you your i me my mine who whom whose which what where when why how
    and or but nor so yet if then than as because while although though until unless since whether
    of in on at to from by with without into onto upon over under above below across along around
    through throughout between among behind beside besides beyond near off out up down after before
    during against toward towards within about via per
    is are was were be been being am do does did doing done have has had having will would shall should
    can could may might must
    not no yes very too also just only even still again more most less least much many some any all
    each every both either neither other another such same own few several one
    someone somebody something anyone anybody anything everyone everything
    s t
    """.split()
)


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def lower_words(text: str) -> list[str]:
    """The words of ``text`` (letters, with inner apostrophes), lower case, ``’`` written ``'``."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def check_language(text: str, language: str = "en") -> str | None:
    """English (``en``) or anything (``any``)."""
    if language == "any":
        return None
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return "the caption contains no words"
    latin = sum(1 for ch in letters if "LATIN" in unicodedata.name(ch, ""))
    if latin / len(letters) < 0.95:
        return "the caption is not in English (it uses another script); write it in English"
    words = lower_words(text)
    share = sum(1 for w in words if w in FUNCTION_WORDS) / max(len(words), 1)
    if len(words) >= 8 and share < 0.15:
        return "the caption does not read as English; write it in English"
    return None
