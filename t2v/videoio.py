"""Writing generated frames as H.264 mp4 files (imageio-ffmpeg, libx264).

Used by the trainer's validation clips and by ``t2v generate``. Frames are what diffusers pipelines
return with ``output_type="np"``: an array (frames, height, width, 3), float in [0, 1] or uint8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["to_uint8", "write_mp4"]


def to_uint8(frames) -> np.ndarray:
    """(F, H, W, 3) frames as uint8: uint8 input unchanged, floats clipped to [0, 1] and scaled by 255
    (rounded). Raises ``ValueError`` for any other shape."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"expected frames of shape (frames, height, width, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float32, copy=False), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames, fps: float) -> Path:
    """Encode ``frames`` (see :func:`to_uint8`) into the mp4 ``path`` at ``fps`` frames per second.

    The file is written as ``.<stem>.tmp.mp4`` next to ``path`` and renamed over it once complete, so
    ``path`` is either the old file or the whole new one, never a partial write; the temporary file is
    removed when encoding fails. Returns ``path``.
    """
    import imageio.v2 as imageio

    path = Path(path)
    arr = to_uint8(frames)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    try:
        with imageio.get_writer(str(tmp), fps=float(fps), codec="libx264", quality=8, macro_block_size=1,
                                ffmpeg_log_level="error") as writer:
            for frame in arr:
                writer.append_data(frame)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
