"""The chat-backend interface that captioning and prompt expansion code against.

A conversation is a list of :class:`Message`; a message's content is a tuple of text strings and
PIL images, in order. Backends turn many conversations into one reply each
(:meth:`ChatBackend.generate`), batching or parallelising internally.

Where a backend needs a single string for a message (a text-only model, a text-only message to a
server), the text parts are concatenated as they are, with no separator, exactly as chat templates
concatenate consecutive text parts.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Union

from PIL import Image

__all__ = [
    "ChatBackend",
    "Conversation",
    "Message",
    "Part",
    "ROLES",
    "check_seeds",
    "chunked",
    "prepare_image",
]

ROLES = ("system", "user", "assistant")

Part = Union[str, Image.Image]


@dataclass(frozen=True)
class Message:
    """One chat message: a role and its text/image parts, in order."""

    role: str
    content: tuple[Part, ...]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {', '.join(ROLES)}; got {self.role!r}")
        content = self.content
        if isinstance(content, (str, Image.Image)):
            content = (content,)
        content = tuple(content)
        for part in content:
            if not isinstance(part, (str, Image.Image)):
                raise TypeError(f"message parts must be str or PIL.Image.Image; got {type(part).__name__}")
        if self.role != "user" and any(isinstance(p, Image.Image) for p in content):
            raise ValueError(f"only user messages may contain images (got one in a {self.role} message)")
        object.__setattr__(self, "content", content)

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", (text,))

    @classmethod
    def user(cls, *parts: Part) -> Message:
        return cls("user", tuple(parts))

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls("assistant", (text,))

    @property
    def images(self) -> list[Image.Image]:
        """The image parts, in order."""
        return [p for p in self.content if isinstance(p, Image.Image)]

    @property
    def has_images(self) -> bool:
        return any(isinstance(p, Image.Image) for p in self.content)

    @property
    def text(self) -> str:
        """The text parts concatenated (images left out)."""
        return "".join(p for p in self.content if isinstance(p, str))


Conversation = list[Message]


class ChatBackend(ABC):
    """A chat model: many conversations in, one reply string per conversation out."""

    name: str

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """Reply to each conversation; the result has the same length and order as the input.

        ``max_new_tokens`` overrides the configured limit for this call. ``seeds`` (one per
        conversation) replaces the configured seed per conversation, so that each reply depends only
        on its conversation and its seed (several sampled candidates of one prompt). Raises
        :class:`~captioner.errors.BackendError` when the model or server fails.
        """

    @abstractmethod
    def describe(self) -> dict:
        """What produced the text, for records: backend, model, revision and sampling settings.

        Never contains secrets.
        """

    @property
    @abstractmethod
    def supports_images(self) -> bool:
        """Whether messages may contain images."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model / connections. Safe to call more than once."""

    # -- usage accounting (for pricing a corpus) -------------------------------------------------
    def _count_usage(self, requests: int, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Add to the running totals; implementations call this after each answered request batch."""
        lock = self.__dict__.setdefault("_usage_lock", threading.Lock())
        with lock:
            usage = self.__dict__.setdefault("_usage", {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
            usage["requests"] += requests
            usage["prompt_tokens"] += int(prompt_tokens or 0)
            usage["completion_tokens"] += int(completion_tokens or 0)

    def usage(self) -> dict[str, int]:
        """Totals since the backend was built: answered requests, prompt and generated tokens
        (as counted by the model's tokenizer, or as reported by the server)."""
        lock = self.__dict__.setdefault("_usage_lock", threading.Lock())
        with lock:
            return dict(self.__dict__.get("_usage", {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}))

    def __enter__(self) -> ChatBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_seeds(seeds: Sequence[int] | None, n: int, backend: str) -> list[int] | None:
    """``seeds`` as a list of ints, checked to hold one seed per conversation."""
    if seeds is None:
        return None
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"{backend} backend: {len(seeds)} seeds for {n} conversations (need one each)")
    return seeds


def chunked(items: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    """Yield ``(start, items[start:start+size])`` for consecutive chunks."""
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def prepare_image(image: Image.Image, max_side: int | None) -> Image.Image:
    """RGB copy of ``image``, downscaled (aspect kept) so its longer side is at most ``max_side``."""
    img = image
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            # flatten transparency onto white rather than black
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            img = background
        else:
            img = img.convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        w, h = img.size
        scale = max_side / max(w, h)
        new_size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(new_size, Image.Resampling.BICUBIC)
    return img
