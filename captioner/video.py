"""Reading frames from video files. Moved to :mod:`densecap.video` (the core shared with t2v); this
name stays for compatibility."""

from densecap.video import *  # noqa: F401,F403
from densecap.video import __all__  # noqa: F401
