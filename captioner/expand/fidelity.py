"""Checks that an expansion keeps what the prompt asks for: its quoted text, the camera moves and
visual styles it names, its content words (subject, action, setting) and what it rules out ("no
people"); and whether a prompt is English at all (a translated prompt's words cannot be looked for).
Each check returns ``None`` or the reason sent back to the model (see :mod:`captioner.expand.checks`).
"""

from __future__ import annotations

import re
import unicodedata

from captioner.text import FUNCTION_WORDS
from captioner.text import lower_words as _words

__all__ = [
    "CAMERA_AND_STYLE_TERMS",
    "PERSON_WORDS",
    "check_coverage",
    "check_exclusions",
    "check_named_terms",
    "check_quotes",
    "content_words",
    "excluded_terms",
    "is_english_prompt",
    "named_terms",
    "quoted_spans",
]

# Function words of other languages written in Latin script (French, German, Spanish, Italian, Portuguese,
# Dutch), leaving out those that are English words too ("a", "in", "die", "no", "son", "van", "pour"...):
# a prompt with more of these than English function words is not English.
_FOREIGN_FUNCTION_WORDS = frozenset(
    """
    un une le la les des du au aux sur sous dans avec et est sont par qui que ce cette ces sa ses leur
    ein eine einen einem einer der das den dem und mit durch auf im ist sind unter zum zur vom von bei nach aus
    el los las en por y al del es una unos unas sobre entre bajo hacia su sus muy
    il lo gli nel nella della delle dei degli che tra fra sotto sulla sul e
    um uma os das dos nas nos pela pelo com sob
    een het de op met voor naar
    """.split()
)

# Words that name people: excluded when a prompt says "no people", "nobody", "empty", ...
PERSON_WORDS = frozenset(
    """
    person people persons man men woman women boy boys girl girls child children kid kids baby babies
    human humans figure figures pedestrian pedestrians crowd crowds someone somebody anyone anybody
    passerby passersby visitor visitors tourist tourists worker workers customer customers rider riders
    driver drivers player players athlete athletes dancer dancers couple family families guy guys lady
    ladies gentleman gentlemen individual individuals
    """.split()
)

# words that frame a prompt rather than say what is in the video
_FRAMING_WORDS = frozenset("says say saying reads reading written video clip shot scene showing shows show style".split())

_NEGATORS = frozenset("no not without nobody none nor never neither absent empty free devoid lacking zero".split())

# Camera moves, shots and visual styles, each with the spellings that count as the same term.
CAMERA_AND_STYLE_TERMS: dict[str, tuple[str, ...]] = {
    # camera moves and shots
    "dolly zoom": ("dolly zoom", "vertigo effect"),
    "dolly": ("dolly", "dollies", "dollying"),
    "pan": ("pan", "pans", "panning", "panned"),
    "tilt": ("tilt", "tilts", "tilting", "tilted"),
    "zoom": ("zoom", "zooms", "zooming", "zoomed"),
    "orbit": ("orbit", "orbits", "orbiting", "circles around", "arc shot"),
    "tracking shot": ("tracking shot", "tracking", "tracks", "follows", "following"),
    "crane shot": ("crane shot", "crane"),
    "drone shot": ("drone shot", "drone", "aerial", "bird's-eye", "birds-eye", "bird's eye"),
    "aerial": ("aerial", "drone", "bird's-eye", "bird's eye", "from above"),
    "handheld": ("handheld", "hand-held", "hand held"),
    "static shot": ("static shot", "static", "fixed camera", "locked-off", "still camera", "no camera movement"),
    "close-up": ("close-up", "close up", "closeup"),
    "extreme close-up": ("extreme close-up", "extreme close up", "extreme closeup", "macro"),
    "wide shot": ("wide shot", "wide-angle", "wide angle", "establishing shot"),
    "low angle": ("low angle", "low-angle", "from below"),
    "high angle": ("high angle", "high-angle", "from above"),
    "first-person": ("first-person", "first person", "pov", "point of view", "point-of-view"),
    "slow motion": ("slow motion", "slow-motion", "slow-mo", "slowmo"),
    "time-lapse": ("time-lapse", "timelapse", "time lapse"),
    "hyperlapse": ("hyperlapse", "hyper-lapse"),
    "fisheye": ("fisheye", "fish-eye", "fish eye"),
    "split screen": ("split screen", "split-screen"),
    # visual styles
    "anime": ("anime", "manga"),
    "cartoon": ("cartoon", "animated"),
    "watercolor": ("watercolor", "watercolour"),
    "oil painting": ("oil painting", "oil-painting", "painted in oils"),
    "black and white": ("black and white", "black-and-white", "monochrome", "grayscale", "greyscale"),
    "sepia": ("sepia",),
    "claymation": ("claymation", "clay animation", "stop-motion", "stop motion"),
    "stop motion": ("stop motion", "stop-motion", "claymation"),
    "pixel art": ("pixel art", "pixel-art", "8-bit", "pixelated"),
    "3d render": ("3d render", "3d-rendered", "3d rendered", "cgi", "3d animation", "3d"),
    "film noir": ("film noir", "noir"),
    "cyberpunk": ("cyberpunk",),
    "steampunk": ("steampunk",),
    "vintage": ("vintage", "retro", "old film"),
    "35mm film": ("35mm", "35 mm", "film grain"),
    "vhs": ("vhs",),
    "cinematic": ("cinematic",),
    "photorealistic": ("photorealistic", "photo-realistic", "realistic"),
    "sketch": ("sketch", "pencil drawing", "line drawing"),
    "low poly": ("low poly", "low-poly"),
    "ukiyo-e": ("ukiyo-e", "woodblock"),
    "van gogh": ("van gogh",),
}


def _is_latin(word: str) -> bool:
    return all("LATIN" in unicodedata.name(ch, "") for ch in word if ch.isalpha())


def _stem(word: str) -> str:
    """A crude English stem: enough to match ``crashing``/``crashes``/``crash`` and ``dogs``/``dog``."""
    w = word.lower().replace("’", "'").removesuffix("'s")
    for suffix in ("ingly", "edly", "ing", "ied", "ies", "ed", "es", "ly", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w[-1] == w[-2]:  # running -> runn -> run
        w = w[:-1]
    return w.rstrip("e") if len(w) > 3 else w


_QUOTES = [
    re.compile(r'"([^"\n]{1,200})"'),
    re.compile(r"“([^”\n]{1,200})”"),
    re.compile(r"«\s?([^»\n]{1,200}?)\s?»"),
    re.compile(r"„([^“”\n]{1,200})[“”]"),
    # single quotes only around a span (not apostrophes): 'OPEN' but not don't / dogs'
    re.compile(r"(?:(?<=\s)|^)'([^'\n]{1,200})'(?=[\s.,;:!?)]|$)"),
]


def quoted_spans(prompt: str) -> list[str]:
    """The texts the user put in quotation marks, in order, without duplicates."""
    spans: list[str] = []
    for pattern in _QUOTES:
        for m in pattern.finditer(prompt):
            span = m.group(1).strip()
            if span and span not in spans:
                spans.append(span)
    return spans


def check_quotes(prompt: str, text: str) -> str | None:
    for span in quoted_spans(prompt):
        if span not in text:
            return f'the quoted text "{span}" is missing; include it exactly as written, in quotation marks'
    return None


def _has_phrase(words_text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", words_text) is not None


def _normalised(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def named_terms(prompt: str) -> list[str]:
    """Camera and style terms the prompt names (canonical names), longest spelling first so that
    "extreme close-up" is not also reported as "close-up"."""
    low = _normalised(prompt)
    found: list[str] = []
    claimed: list[tuple[int, int]] = []
    spellings = sorted(
        ((s, term) for term, forms in CAMERA_AND_STYLE_TERMS.items() for s in (term, *forms)),
        key=lambda x: -len(x[0]),
    )
    for spelling, term in spellings:
        for m in re.finditer(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", low):
            if any(a <= m.start() < b for a, b in claimed):
                continue
            claimed.append((m.start(), m.end()))
            if term not in found:
                found.append(term)
    return found


def check_named_terms(prompt: str, text: str) -> str | None:
    if not is_english_prompt(prompt):  # "un chat noir" asks for no film noir
        return None
    low = _normalised(text)
    for term in named_terms(prompt):
        forms = CAMERA_AND_STYLE_TERMS[term]
        if not any(_has_phrase(low, f) for f in (term, *forms)):
            return f'the prompt asks for "{term}", which the caption does not mention; keep it'
    return None


def _unquoted(prompt: str) -> str:
    for span in quoted_spans(prompt):
        prompt = prompt.replace(span, " ")
    return prompt


def is_english_prompt(prompt: str) -> bool:
    """False for a prompt in another script, or in a Latin-script language whose function words it uses
    more than English ones ("Un perro corre en la playa", "Ein Hund rennt durch den Schnee")."""
    text = _unquoted(prompt)
    letters = [ch for ch in text if ch.isalpha()]
    if letters and sum(1 for ch in letters if "LATIN" in unicodedata.name(ch, "")) / len(letters) < 0.5:
        return False
    words = _words(text)
    english = sum(1 for w in words if w in FUNCTION_WORDS)
    foreign = sum(1 for w in words if w in _FOREIGN_FUNCTION_WORDS)
    return foreign <= english


def content_words(prompt: str) -> list[str]:
    """The prompt's content words (not function words, not quoted text), lower case, in order; none for a
    prompt in another language (:func:`is_english_prompt`): it is translated, so its words cannot be
    looked for."""
    if not is_english_prompt(prompt):
        return []
    unquoted = _unquoted(prompt)
    out: list[str] = []
    words = _words(unquoted)
    for i, w in enumerate(words):
        if w in FUNCTION_WORDS or w in _FRAMING_WORDS or len(w) < 3 or w in out or not _is_latin(w):
            continue  # a prompt in another script is translated: its words cannot be matched
        if i and words[i - 1] in _NEGATORS:  # "no people": ruled out, not asked for
            continue
        out.append(w)
    return out


def check_coverage(prompt: str, text: str, min_share: float = 0.6) -> str | None:
    """The prompt's content words (its subject, action and setting) survive in the caption."""
    words = content_words(prompt)
    if not words:
        return None
    # a content word also survives as part of a camera/style term the caption names ("drone shot")
    stems = {_stem(w) for w in _words(text)}
    missing = [w for w in words if _stem(w) not in stems]
    if len(words) - len(missing) < min_share * len(words):
        return f"the caption leaves out what the prompt asks for ({', '.join(missing)}); keep the prompt's subject and action"
    return None


# "no camera movement", "without music": exclusions that are not things in the picture
_NOT_OBJECTS = frozenset("camera movement motion sound sounds audio music cut cuts zoom zooming shake transitions".split())

_EXCLUSION = re.compile(
    r"\b(?:no|without|zero|not any|free of|devoid of)\s+(?:other\s+|more\s+|visible\s+)?([a-z][a-z-]+)",
    re.IGNORECASE,
)


def excluded_terms(prompt: str) -> set[str]:
    """What the prompt rules out: the noun after "no"/"without", and people for "nobody", "no one",
    "empty", "deserted", "unpopulated"."""
    low = _normalised(prompt)
    out: set[str] = set()
    for m in _EXCLUSION.finditer(low):
        word = m.group(1)
        if word in FUNCTION_WORDS or word in _NOT_OBJECTS:
            continue
        if _stem(word) in {_stem(p) for p in ("people", "person", "human", "one")} or word in PERSON_WORDS:
            out |= PERSON_WORDS
        else:
            out.add(word)
    if re.search(r"\b(nobody|no one|no-one|empty|deserted|unpopulated|abandoned|uninhabited)\b", low):
        out |= PERSON_WORDS
    return out


def check_exclusions(prompt: str, text: str) -> str | None:
    excluded = excluded_terms(prompt)
    if not excluded:
        return None
    stems = {_stem(w): w for w in excluded}
    words = _words(text)
    for i, w in enumerate(words):
        if _stem(w) in stems and not any(p in _NEGATORS for p in words[max(0, i - 4) : i]):
            return f'the caption shows "{w}" although the prompt rules it out; leave it out'
    return None
