"""The project's error types. Moved to :mod:`densecap.errors` (the core shared with t2v); this name stays for compatibility."""

from densecap.errors import (  # noqa: F401
    AuthError,
    BackendError,
    CaptionerError,
    ConfigError,
    FatalBackendError,
    UnsupportedInputError,
    VideoError,
    redact,
)

__all__ = ['AuthError', 'BackendError', 'CaptionerError', 'ConfigError', 'FatalBackendError', 'UnsupportedInputError', 'VideoError', 'redact']
