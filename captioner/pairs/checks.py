"""Is a writer's answer a usable short prompt? :func:`check_prompt` cleans it and says why not."""

from __future__ import annotations

import re
import unicodedata

from captioner.text import check_language, first_sentence, sentence_breaks, strip_answer

__all__ = ["check_prompt", "clean_prompt", "first_sentence"]

_META_START = re.compile(
    r"^(?:in\s+)?(?:the|this|a|an)\s+(?:short\s+|brief\s+)?(?:video|clip|footage)\b", re.IGNORECASE
)


def clean_prompt(answer: str) -> str:
    """An answer without code fences, ``Prompt:``-style labels (and a chat opener before them), wrapping
    quotes and outer whitespace; its lines are kept."""
    return strip_answer(answer)


def _words(text: str) -> list[str]:
    return [w for w in text.split() if any(c.isalnum() for c in w)]


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
    sentences = len(sentence_breaks(text)) + 1
    if sentences > 1:
        return text, f"it has {sentences} sentences, but the prompt must be one sentence"
    if reject_first_sentence and caption and _normal(text) == _normal(first_sentence(caption)):
        return text, "it copies the caption's first sentence; sum up the whole video in your own short words"
    return text, None
