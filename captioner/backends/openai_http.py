"""The HTTP transport of the OpenAI backend: one request attempt bounded in time and size.

:class:`Deadline` cuts an attempt off ``timeout_s`` after it starts, whatever the server sends meanwhile
(httpx only bounds each network operation); :func:`post` reads a reply up to a byte cap
(:func:`reply_byte_limit`) and an error reply up to 16 KiB; :func:`retry_after_seconds` reads a
``Retry-After`` header. The retry policy and the mapping of answers to errors are the backend's
(:mod:`captioner.backends.openai`).
"""

from __future__ import annotations

import email.utils
import logging
import socket
import threading
import time

import httpx

log = logging.getLogger(__name__)

__all__ = [
    "ERROR_BODY_BYTES",
    "REPLY_BYTES_PER_TOKEN",
    "REPLY_OVERHEAD_BYTES",
    "Deadline",
    "ReplyTooLarge",
    "post",
    "reply_byte_limit",
    "retry_after_seconds",
]

ERROR_BODY_BYTES = 16 * 1024  # of an error reply, read for its message; the rest is not read
REPLY_BYTES_PER_TOKEN = 64  # JSON-escaped text, with room for servers' extra fields (reasoning, logprobs)
REPLY_OVERHEAD_BYTES = 64 * 1024


def reply_byte_limit(max_new_tokens: int, configured: int | None = None) -> int:
    """Largest reply body read for a request of ``max_new_tokens``: ``configured`` (the config's
    ``max_reply_bytes``) or 64 bytes per token + 64 KiB."""
    if configured is not None:
        return int(configured)
    return REPLY_BYTES_PER_TOKEN * int(max_new_tokens) + REPLY_OVERHEAD_BYTES


def retry_after_seconds(value: str | None) -> float | None:
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


class Deadline:
    """The deadline of one request attempt: connect, send and the whole reply within ``seconds``.

    httpx's timeouts bound each network operation, not the request, so a server that drips a byte a
    second (in the headers or the body) never trips them. Here the httpcore ``trace`` extension hands
    over the socket of the attempt's connection when it is made, and a timer shuts that socket down
    when the time is up: the blocked read or write fails at once. (The client keeps no idle
    connections, so every attempt makes its own and its socket is always known.)"""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            for s in self._socks:
                s.close()  # our duplicate; the connection itself is closed by httpx
            self._socks.clear()

    def trace(self, event: str, info: dict) -> None:
        """httpx ``trace`` extension callback (called in the requesting thread)."""
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        try:
            dup = sock.dup()  # survives a TLS wrap of the original, which takes over its descriptor
        except OSError as exc:  # out of descriptors: the per-operation timeouts still hold
            log.warning("openai backend: cannot watch a connection for the request deadline (%s)", exc)
            return
        with self._lock:
            self._socks.append(dup)
            if self.expired:
                _shutdown(dup)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._socks:
                _shutdown(s)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer or by httpx


class ReplyTooLarge(Exception):
    """A successful reply is larger than the cap of its request."""


def post(
    client: httpx.Client, url: str, body: dict, headers: dict[str, str], cap: int, deadline: Deadline
) -> tuple[int, bytes, httpx.Headers]:
    """One attempt, POST ``body`` as JSON to ``url`` under ``deadline``: (status, body, headers). A
    success's body is read whole, up to ``cap`` bytes (beyond: :class:`ReplyTooLarge`, nothing more is
    read); an error's only its first 16 KiB."""
    with client.stream("POST", url, json=body, headers=headers, extensions={"trace": deadline.trace}) as resp:
        ok = 200 <= resp.status_code < 300
        limit = cap if ok else ERROR_BODY_BYTES
        declared = resp.headers.get("content-length", "")
        if ok and declared.isdigit() and int(declared) > cap:
            raise ReplyTooLarge()
        buf = bytearray()
        for chunk in resp.iter_bytes():
            buf += chunk
            if len(buf) > limit:
                if ok:
                    raise ReplyTooLarge()
                del buf[limit:]
                break
        return resp.status_code, bytes(buf), resp.headers
