"""The project's error types.

Every failure a user can cause (a bad file, a bad config, an unreachable server) is raised as a
:class:`CaptionerError` whose message says what went wrong and where, so the CLI can print it
without a traceback.
"""

from __future__ import annotations

import os


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
