"""Dense, time-aware video captioning (ShareGPT4Video's DiffSW) for text-to-video training data."""

from densecap.errors import CaptionerError, ConfigError, VideoError

__version__ = "0.1.0"
__all__ = ["CaptionerError", "ConfigError", "VideoError", "__version__"]
