"""OpenAI-compatible chat-completions servers (vLLM, SGLang, LMDeploy, hosted APIs) over httpx.

Requests run on a thread pool of ``max_in_flight`` workers sharing one connection pool, so at most
``max_in_flight`` requests are ever in flight, whatever the number of conversations or of threads
calling :meth:`OpenAIBackend.generate`. Transient failures (429, 5xx, timeouts, connection errors)
are retried with exponential backoff and full jitter, honouring ``Retry-After``; other 4xx answers
fail at once. The API key is read from the environment on each request and never logged, stored in
records or put in error messages.
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image

from captioner.backends import OpenAIBackendConfig
from captioner.backends.base import ChatBackend, Conversation, Message, check_seeds, prepare_image
from captioner.errors import BackendError

log = logging.getLogger(__name__)

__all__ = ["OpenAIBackend", "encode_image"]

_ERROR_TEXT_LIMIT = 300


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


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


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
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            follow_redirects=False,
        )
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="openai-backend")
        self._closed = False
        self._server_info: dict[str, Any] = {}
        self._lock = threading.Lock()

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

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.cfg
        if retry_after is not None:
            return min(retry_after, cfg.backoff_max_s)
        cap = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** (attempt - 1)))
        return random.uniform(0.0, cap)

    def _complete(self, conv: Conversation, max_new_tokens: int, abort: threading.Event, seed: int | None = None) -> str:
        if abort.is_set():
            raise _Aborted()
        body = self.payload(conv, max_new_tokens, seed)
        attempts = self.cfg.max_retries + 1
        last_error = ""
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                resp = self._client.post(self.url, json=body, headers=self._headers())
            except httpx.TimeoutException as exc:
                last_error = f"timed out after {self.cfg.timeout_s:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last_error = f"connection error ({type(exc).__name__}: {_truncate(str(exc), 200)})"
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    return self._parse(resp)
                text = _truncate(resp.text)
                if status == 429 or status >= 500:
                    last_error = f"HTTP {status}: {text}"
                    retry_after = _retry_after_seconds(resp.headers.get("retry-after"))
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
            f"(max_retries={self.cfg.max_retries}); last error: {last_error}"
        )

    def _parse(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
        except ValueError:
            raise BackendError(
                f"openai backend: {self._where} answered HTTP {resp.status_code} with a body that is not JSON: "
                f"{_truncate(resp.text)}"
            ) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(
                f"openai backend: malformed response from {self._where} (no choices): {_truncate(resp.text)}"
            )
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise BackendError(
                f"openai backend: malformed response from {self._where} (choice without text content): "
                f"{_truncate(resp.text)}"
            )
        if choices[0].get("finish_reason") == "length":
            log.debug("openai backend: a reply was cut at max_tokens")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        self._count_usage(1, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        info = {k: data[k] for k in ("model", "system_fingerprint") if isinstance(data.get(k), str)}
        if info:
            with self._lock:
                if "model" in info:
                    self._server_info["server_model"] = info["model"]
                if "system_fingerprint" in info:
                    self._server_info["system_fingerprint"] = info["system_fingerprint"]
        return content.strip()
