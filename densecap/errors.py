"""The project's error types.

Every failure a user can cause (a bad file, a bad config, an unreachable server) is raised as a
:class:`CaptionerError` whose message says what went wrong and where, so the CLI can print it
without a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable


class CaptionerError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class VideoError(CaptionerError):
    """A video file cannot be opened or decoded. The message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(CaptionerError):
    """A config file or override is invalid. The message names the file, the key and what is allowed."""


class BackendError(CaptionerError):
    """A language-model backend failed (server unreachable, retries exhausted, bad response)."""


class FatalBackendError(BackendError):
    """A backend failure that every further request would repeat (refused credentials, a model that
    cannot take the input), so a corpus run stops at the first one instead of failing each clip."""


class AuthError(FatalBackendError):
    """A server refused the credentials (HTTP 401/403)."""


class UnsupportedInputError(FatalBackendError):
    """The model behind a backend cannot take what is sent (e.g. images to a text-only model)."""


REDACTED = "[redacted]"

# the value of an ``Authorization`` / ``api-key`` / ``x-api-key`` header or field, as a server, proxy or
# exception may echo it (``Authorization: Bearer ...``, ``"authorization": "..."``, ``api_key=...``),
# then any ``Bearer <token>`` left
_HEADER_VALUE = re.compile(
    r"""(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key)(["']?\s*[:=]\s*["']?)"""
    r"""(?:(?:bearer|basic|token)\s+)?[^"'\s,;}]+"""
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=:-]+")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every value of ``secrets`` (e.g. the API key), every ``Authorization``/``api-key``
    value and every ``Bearer <token>`` replaced by ``[redacted]``: for whatever text from a server or a
    library goes into an error message, a log line or a record."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _HEADER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
