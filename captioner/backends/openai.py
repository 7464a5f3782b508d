"""OpenAI-compatible chat-completions servers (vLLM, SGLang, LMDeploy, hosted APIs) over httpx.

Requests run on a thread pool of ``max_in_flight`` workers sharing one connection pool, so at most
``max_in_flight`` requests are ever in flight, whatever the number of conversations or of threads
calling :meth:`OpenAIBackend.generate`. Transient failures (429, 5xx, timeouts, connection errors)
are retried with exponential backoff and full jitter, honouring ``Retry-After``; other 4xx answers
fail at once, and 401/403 raise :class:`~captioner.errors.AuthError` (a corpus run stops on it).

Bounds. Each attempt has a deadline of ``timeout_s`` for all of it (connect, send, the whole reply):
httpx only bounds each network operation, so a server sending a byte a second would never trip it;
a timer shuts the attempt's socket down when the deadline passes (every attempt gets its own
connection, so that socket is known). One request therefore takes at most
``(max_retries + 1) * timeout_s + max_retries * backoff_max_s``
(:attr:`OpenAIBackendConfig.worst_case_s`). Replies are streamed and reading stops past
``max_reply_bytes`` (default: 64 bytes per token of ``max_new_tokens`` + 64 KiB), failing the request;
the text handed back is at most 16 characters per token of ``max_new_tokens`` (a longer answer, from a
server that ignores ``max_tokens``, is cut there, as the model's own limit would). Error replies are
read up to 16 KiB. (The attempt itself, deadline and byte caps, is :mod:`captioner.backends.openai_http`.)

Secrets. The API key is read from the environment on each request and never logged or stored in
records; server and library text that goes into an error or a log line passes through
:func:`captioner.errors.redact` (the key, ``Bearer ...`` and ``Authorization: ...`` values removed),
as does a reply's text.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image

from captioner.backends.base import (
    ChatBackend,
    Conversation,
    Message,
    check_seeds,
    prepare_image,
)
from captioner.backends.config import OpenAIBackendConfig
from captioner.backends.openai_http import (  # noqa: F401 (re-exported: REPLY_* and reply_byte_limit lived here)
    REPLY_BYTES_PER_TOKEN,
    REPLY_OVERHEAD_BYTES,
    Deadline,
    ReplyTooLarge,
    post,
    reply_byte_limit,
    retry_after_seconds,
)
from densecap.errors import (
    REDACTED,
    AuthError,
    BackendError,
    UnsupportedInputError,
    redact,
)

log = logging.getLogger(__name__)

__all__ = ["MAX_CHARS_PER_TOKEN", "OpenAIBackend", "encode_image", "reply_byte_limit"]

_ERROR_TEXT_LIMIT = 300
#: The text handed back is cut at this many characters per token of max_new_tokens (a real token is
#: rarely more than 10; a server that ignores max_tokens gets no further).
MAX_CHARS_PER_TOKEN = 16


def encode_image(image: Image.Image, *, max_side: int | None, quality: int) -> str:
    """``data:image/jpeg;base64,...`` URL of ``image`` (RGB, downscaled to ``max_side``)."""
    img = prepare_image(image, max_side)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _safe_url(url: str) -> str:
    """``url`` without user:password (never echo credentials in messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def _truncate(text: str, limit: int = _ERROR_TEXT_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class _Aborted(Exception):
    """Another request of the same generate() call failed; stop retrying."""


class OpenAIBackend(ChatBackend):
    """Chat completions over HTTP. See :class:`OpenAIBackendConfig` for the settings."""

    name = "openai"

    def __init__(self, cfg: OpenAIBackendConfig):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._where = _safe_url(self.url)
        n = cfg.max_in_flight
        self._client = httpx.Client(
            # each network operation within timeout_s; the attempt as a whole too (Deadline)
            timeout=httpx.Timeout(cfg.timeout_s),
            # no idle connections: each attempt opens its own, whose socket its Deadline can shut down
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=0),
            follow_redirects=False,
        )
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="openai-backend")
        self._closed = False
        self._server_info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._images_checked: BackendError | bool = False  # True, or the error to raise again
        self._images_lock = threading.Lock()

    # ------------------------------------------------------------------ interface

    @property
    def supports_images(self) -> bool:
        return True

    def describe(self) -> dict:
        cfg = self.cfg
        info = {
            "backend": self.name,
            "model": cfg.model,
            "revision": None,
            "base_url": _safe_url(cfg.base_url),
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "seed": cfg.seed,
            "jpeg_quality": cfg.jpeg_quality,
            "max_image_side": cfg.max_image_side,
        }
        with self._lock:
            info.update(self._server_info)  # server_model / system_fingerprint as last reported
        return info

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """One request per conversation, at most ``max_in_flight`` at a time; ``seeds`` sets each
        request's ``seed`` (instead of the configured one)."""
        if self._closed:
            raise BackendError("openai backend: generate() called after close()")
        conversations = list(conversations)
        if not conversations:
            return []
        limit = self.cfg.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if limit < 1:
            raise ValueError("max_new_tokens must be >= 1")
        for i, conv in enumerate(conversations):
            if not conv:
                raise BackendError(f"openai backend: conversation {i} is empty")
            for msg in conv:
                if not isinstance(msg, Message):
                    raise BackendError(f"openai backend: conversation {i} holds a {type(msg).__name__}, not a Message")

        seeds = check_seeds(seeds, len(conversations), self.name)
        if self.cfg.check_images and any(m.has_images for conv in conversations for m in conv):
            self._check_images_reach_model()
        abort = threading.Event()
        futures: list[Future] = [
            self._pool.submit(self._complete, conv, limit, abort, None if seeds is None else seeds[i])
            for i, conv in enumerate(conversations)
        ]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            error = next(
                (
                    f.exception()
                    for f in futures
                    if f.done()
                    and not f.cancelled()
                    and f.exception() is not None
                    and not isinstance(f.exception(), _Aborted)
                ),
                None,
            )
            if error is not None:
                raise error
            return [f.result() for f in futures]
        except BaseException:
            # stop the others (pending ones never start, running ones stop retrying) and wait for
            # them, so no request outlives the call
            abort.set()
            for f in futures:
                f.cancel()
            wait(futures)
            raise

    # ------------------------------------------------------------------ internals

    def _check_images_reach_model(self) -> None:
        """Once per backend: the same 1-token request with and without a 448x448 image. A vision model
        counts the image's tokens; a text-only model behind a server that drops image parts (as
        ``transformers serve`` does) counts the same, and a server that refuses images answers 4xx:
        either way an :class:`UnsupportedInputError` names the model and server. A server that
        reports no token usage cannot be checked (logged, and the run goes on)."""
        with self._images_lock:
            if self._images_checked is True:
                return
            if isinstance(self._images_checked, BackendError):
                raise self._images_checked
            where = f"model {self.cfg.model!r} at {self._where}"
            question = "Reply with one word: what colour is this?"
            image = Image.new("RGB", (448, 448), (200, 40, 40))
            abort = threading.Event()
            try:
                counts = []
                for conv in ([Message.user(image, question)], [Message.user(question)]):
                    reply = json.loads(self._send(self.payload(conv, 1, 0), 1, abort))
                    usage = reply.get("usage") if isinstance(reply, dict) else None
                    counts.append(usage.get("prompt_tokens") if isinstance(usage, dict) else None)
            except (BackendError, ValueError) as exc:
                if isinstance(exc, AuthError):
                    raise
                error = UnsupportedInputError(f"openai backend: {where} does not take images: {exc}")
                self._images_checked = error
                raise error from None
            with_image, without = counts
            if not isinstance(with_image, int) or not isinstance(without, int):
                log.info("openai backend: %s reports no token usage; cannot check that it sees images", where)
            elif with_image <= without:
                self._images_checked = UnsupportedInputError(
                    f"openai backend: {where} ignores images: a request with a 448x448 image counted {with_image} "
                    f"prompt tokens, the same request without it {without}. It is a text-only model (or the server "
                    "drops image parts); captioning needs a vision-language model. (check_images: false skips "
                    "this check.)"
                )
                raise self._images_checked
            self._images_checked = True

    def payload(self, conv: Conversation, max_new_tokens: int, seed: int | None = None) -> dict:
        """The JSON body sent for one conversation."""
        cfg = self.cfg
        messages = []
        for msg in conv:
            if msg.has_images:
                parts: list[dict] = []
                for p in msg.content:
                    if isinstance(p, str):
                        parts.append({"type": "text", "text": p})
                    else:
                        url = encode_image(p, max_side=cfg.max_image_side, quality=cfg.jpeg_quality)
                        parts.append({"type": "image_url", "image_url": {"url": url}})
                messages.append({"role": msg.role, "content": parts})
            else:
                messages.append({"role": msg.role, "content": msg.text})
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
        }
        if seed is not None:
            body["seed"] = int(seed)
        elif cfg.seed is not None:
            body["seed"] = cfg.seed
        return body

    def _api_key(self) -> str:
        return os.environ.get(self.cfg.api_key_env, "").strip()

    def _headers(self) -> dict[str, str]:
        # identity: the reply's size on the wire is its size in memory (no decompression to bound)
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _server_text(self, data: bytes | str) -> str:
        """Text from the server or a library, fit for an error message or a log line: the API key and any
        ``Bearer``/``Authorization`` value redacted, whitespace collapsed, at most 300 characters."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return _truncate(redact(text, [self._api_key()]))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.cfg
        if retry_after is not None:
            return min(retry_after, cfg.backoff_max_s)
        cap = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** (attempt - 1)))
        return random.uniform(0.0, cap)

    def _complete(self, conv: Conversation, max_new_tokens: int, abort: threading.Event, seed: int | None = None) -> str:
        if abort.is_set():
            raise _Aborted()
        return self._parse(200, self._send(self.payload(conv, max_new_tokens, seed), max_new_tokens, abort), max_new_tokens)

    def _send(self, body: dict, max_new_tokens: int, abort: threading.Event) -> bytes:
        """POST ``body`` with the retry policy; the body of the successful reply."""
        cfg = self.cfg
        cap = reply_byte_limit(max_new_tokens, cfg.max_reply_bytes)
        attempts = cfg.max_retries + 1
        last_error = ""
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            deadline = Deadline(cfg.timeout_s)
            try:
                with deadline:
                    status, data, headers = post(self._client, self.url, body, self._headers(), cap, deadline)
            except ReplyTooLarge:
                raise BackendError(
                    f"openai backend: {self._where} sent a reply larger than {cap} bytes for "
                    f"max_new_tokens={max_new_tokens} (reading stopped there; not retried; max_reply_bytes "
                    "sets the limit)"
                ) from None
            except httpx.RequestError as exc:  # timeouts, connection and protocol errors, undecodable bodies
                if deadline.expired or isinstance(exc, httpx.TimeoutException):
                    last_error = f"timed out: no complete reply within timeout_s={cfg.timeout_s:g}s"
                else:
                    last_error = f"connection error ({type(exc).__name__}: {self._server_text(str(exc))[:200]})"
            else:
                if deadline.expired:  # the reply may be cut short (a body without a length ends at EOF)
                    last_error = f"timed out: no complete reply within timeout_s={cfg.timeout_s:g}s"
                elif 200 <= status < 300:
                    return data
                else:
                    text = self._server_text(data)
                    if status in (401, 403):
                        key = "set" if self._api_key() else "not set"
                        raise AuthError(
                            f"openai backend: {self._where} refused the request with HTTP {status} "
                            f"({'unauthorized' if status == 401 else 'forbidden'}; not retried; check the API key "
                            f"in ${cfg.api_key_env}, which is {key}): {text}"
                        )
                    if status == 429 or status >= 500:
                        last_error = f"HTTP {status}: {text}"
                        retry_after = retry_after_seconds(headers.get("retry-after"))
                    else:
                        raise BackendError(
                            f"openai backend: POST {self._where} failed with HTTP {status} (not retried): {text}"
                        )
            if attempt == attempts:
                break
            delay = self._delay(attempt, retry_after)
            log.warning(
                "openai backend: POST %s attempt %d/%d failed (%s); retrying in %.2fs",
                self._where,
                attempt,
                attempts,
                last_error,
                delay,
            )
            if abort.wait(delay):
                raise _Aborted()
        raise BackendError(
            f"openai backend: POST {self._where} failed after {attempts} attempt(s) "
            f"(max_retries={cfg.max_retries}); last error: {last_error}"
        )

    def _parse(self, status: int, data: bytes, max_new_tokens: int) -> str:
        try:
            reply = json.loads(data)
        except ValueError:
            raise BackendError(
                f"openai backend: {self._where} answered HTTP {status} with a body that is not JSON: "
                f"{self._server_text(data)}"
            ) from None
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(
                f"openai backend: malformed response from {self._where} (no choices): {self._server_text(data)}"
            )
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if not isinstance(content, str):
            raise BackendError(
                f"openai backend: malformed response from {self._where} (choice without text content): "
                f"{self._server_text(data)}"
            )
        if choices[0].get("finish_reason") == "length":
            log.debug("openai backend: a reply was cut at max_tokens")
        key = self._api_key()
        if key and len(key) >= 4 and key in content:  # a proxy that echoes the request into the answer
            content = content.replace(key, REDACTED)
        max_chars = MAX_CHARS_PER_TOKEN * max_new_tokens
        if len(content) > max_chars:  # the server ignored max_tokens: cut as the limit would have
            log.warning(
                "openai backend: %s answered %d characters for max_new_tokens=%d; cut at %d",
                self._where, len(content), max_new_tokens, max_chars,
            )
            content = content[:max_chars]
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        self._count_usage(1, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        info = {k: reply[k] for k in ("model", "system_fingerprint") if isinstance(reply.get(k), str)}
        if info:
            with self._lock:
                if "model" in info:
                    self._server_info["server_model"] = info["model"]
                if "system_fingerprint" in info:
                    self._server_info["system_fingerprint"] = info["system_fingerprint"]
        return content.strip()
