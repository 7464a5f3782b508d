"""Opening a video: the reader "auto" picks, metadata, clips."""

from __future__ import annotations

import logging
import os

import numpy as np

from densecap.errors import VideoError
from densecap.video import settings
from densecap.video import avsource
from densecap.video.avsource import _AVSource
from densecap.video import decord_reader
from densecap.video.decord_reader import DecordReader, _Unusable
from densecap.video.pyav_reader import PyAVReader
from densecap.video.reader import ClipView, VideoInfo, VideoReader, _check_file
from densecap.video.settings import DEFAULT_NUM_THREADS

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# entry points


def open_video(path: str | os.PathLike, backend: str = "auto", max_side: int | None = None,
               num_threads: int = DEFAULT_NUM_THREADS, access: str = "dense") -> VideoReader:
    """Open ``path`` for frame reading.

    ``backend``: "auto" (decord, falling back to PyAV; see the module doc), "decord" or "pyav".
    ``max_side``: frames are resized while decoding so their longer side is <= ``max_side`` (aspect
    kept, both sides even); None keeps the native size. ``num_threads``: decoder threads.
    ``access``: how the caller will read, which "auto" picks the reader by. "dense": runs of
    consecutive frames (training clips), where decord is faster. "sparse": a few frames far apart
    (keyframe candidates, keyframe images, grids), where PyAV is: it decodes no more than needed, opens
    with fewer checks and its memory does not grow with the file (docs/benchmarks.md).
    """
    if backend not in ("auto", *settings.BACKENDS):
        raise ValueError(f"unknown video backend {backend!r}; expected 'auto', 'decord' or 'pyav'")
    if access not in settings.ACCESS:
        raise ValueError(f"unknown access {access!r}; expected one of {', '.join(settings.ACCESS)}")
    if max_side is not None and (not isinstance(max_side, (int, np.integer)) or max_side < 2):
        raise ValueError(f"max_side must be an integer >= 2 or None, got {max_side!r}")
    spath, size = _check_file(path)

    if backend == "pyav":
        return PyAVReader(spath, size, max_side, num_threads)
    if backend == "decord":
        try:
            return DecordReader(spath, size, max_side, num_threads, strict=False)
        except _Unusable as e:
            reason = str(e)
            if "cannot find video stream" in reason:
                raise VideoError(spath, "not a video file (no video stream)") from None
            raise VideoError(spath, f"decord cannot read this file: {reason}") from None

    # auto
    av = avsource._import_av()
    if av is not None and access == "sparse":
        return PyAVReader(spath, size, max_side, num_threads)
    src = None
    if av is not None:
        src = _AVSource(spath, num_threads)  # non-video files fail here with a clear VideoError
        try:
            if src.codec in settings.PYAV_CODECS or src.format_name == "gif" or size > settings.DECORD_MAX_BYTES:
                src.close()
                return PyAVReader(spath, size, max_side, num_threads)
            # first, on a decoder that has decoded nothing yet (as decord's is after it seeks): once
            # it has decoded the file's first frame, the damage may not show (see seek_is_clean)
            if not src.seek_is_clean():
                # decord would return corrupt frames after its seeks; PyAV reads it in forward passes
                log.debug("%s: keyframes are not clean restart points; reading with PyAV", spath)
                src.close()
                return PyAVReader(spath, size, max_side, num_threads, clean_seek=False)

        except BaseException:
            src.close()
            raise
    if decord_reader._import_decord() is not None:
        try:
            return DecordReader(spath, size, max_side, num_threads, strict=av is not None, src=src)
        except _Unusable as e:
            if av is None:
                raise VideoError(spath, f"cannot decode with decord and PyAV is not installed: {e}") from None
    elif av is None:
        raise VideoError(spath, "no video backend installed (pip install decord or av)")
    return PyAVReader(spath, size, max_side, num_threads)


def probe_video(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Metadata of a video (frame count and times checked against what really decodes)."""
    with open_video(path, backend=backend) as reader:
        return reader.info


def open_clip(path: str | os.PathLike, start: float | None = None, end: float | None = None,
              backend: str = "auto", max_side: int | None = None, access: str = "dense") -> VideoReader:
    """Open a video, or the ``[start, end)`` range of it when either bound is given (``access``:
    see :func:`open_video`)."""
    reader = open_video(path, backend=backend, max_side=max_side, access=access)
    if start is None and end is None:
        return reader
    try:
        return ClipView(reader, start, end, owns_base=True)
    except BaseException:
        reader.close()
        raise

