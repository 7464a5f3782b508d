"""The reader interface (:class:`VideoReader`), video metadata, clip views and file checks."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densecap.errors import VideoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows about a file, after checking what is really decodable.

    ``width``/``height`` are the display size (rotation metadata applied), at native resolution;
    ``duration`` runs from the first frame's start to the last frame's end, in seconds;
    ``fps`` is the average rate (``num_frames / duration`` unless the container's nominal rate agrees).
    """

    path: str
    size_bytes: int
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    codec: str | None
    backend: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class VideoReader(ABC):
    """An open video. Use as a context manager, or call :meth:`close`.

    Frame indices run over the *decodable* frames in presentation order, ``0 .. num_frames - 1``;
    times are real presentation times in seconds, the first frame at 0.
    """

    backend: str = ""

    def __init__(self, path: str, size_bytes: int) -> None:
        self.path = path
        self._size_bytes = size_bytes
        self._closed = False
        # filled by subclasses through _set_table()
        self._times = np.zeros(0, dtype=np.float64)
        self._duration = 0.0
        self._fps = 0.0
        self._width = 0
        self._height = 0
        self._codec: str | None = None
        self.output_size: tuple[int, int] = (0, 0)  # (width, height) frames come out at

    # -- subclass hooks -------------------------------------------------------------------------

    @abstractmethod
    def _decode_into(self, indices: list[int], out: np.ndarray) -> None:
        """Decode the frames ``indices`` (sorted, unique, validated) into ``out[k]``."""

    @abstractmethod
    def _release(self) -> None:
        """Free the decoder."""

    # -- table ----------------------------------------------------------------------------------

    def _set_table(self, times: np.ndarray, last_duration: float | None, nominal_fps: float | None) -> None:
        times = np.asarray(times, dtype=np.float64)
        if times.size == 0:
            raise VideoError(self.path, "no decodable frames")
        times = np.round(times - times[0], 9)  # 5.300000000000001 -> 5.3
        if times.size > 1:
            step = float(np.median(np.diff(times)))
        else:
            step = 1.0 / nominal_fps if nominal_fps and nominal_fps > 0 else 0.0
        if last_duration is None or not math.isfinite(last_duration) or last_duration <= 0:
            last_duration = step
        self._times = times
        self._duration = float(times[-1] + last_duration)
        n = times.size
        fps = n / self._duration if self._duration > 0 else (nominal_fps or 0.0)
        if nominal_fps and nominal_fps > 0 and fps > 0 and abs(nominal_fps - fps) / fps < 0.01:
            fps = float(nominal_fps)
        self._fps = float(fps)

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(
            path=self.path, size_bytes=self._size_bytes, fps=self._fps, num_frames=int(self._times.size),
            duration=self._duration, width=self._width, height=self._height, codec=self._codec,
            backend=self.backend,
        )

    @property
    def num_frames(self) -> int:
        return int(self._times.size)

    @property
    def duration(self) -> float:
        return self._duration

    # -- queries --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise VideoError(self.path, "reader is closed")

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        n = self.num_frames
        out: list[int] = []
        for i in indices:
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
                raise VideoError(self.path, f"frame index {i!r} is not an integer")
            i = int(i)
            if not 0 <= i < n:
                raise VideoError(self.path, f"frame index {i} out of range (video has {n} decodable frames)")
            out.append(i)
        return out

    def frame_times(self, indices: Sequence[int]) -> list[float]:
        """Real presentation time (s) of each frame."""
        return [float(self._times[i]) for i in self._check_indices(indices)]

    def index_at(self, times: Sequence[float]) -> list[int]:
        """Index of the decodable frame whose start time is nearest each time (ties: the earlier)."""
        out = []
        tol = 1e-6 + 1e-9 * self._duration
        for t in times:
            try:
                t = float(t)
            except (TypeError, ValueError):
                raise VideoError(self.path, f"time {t!r} is not a number") from None
            if not math.isfinite(t) or t < -tol or t > self._duration + tol:
                raise VideoError(self.path, f"time {t:.3f}s outside the video (0 .. {self._duration:.3f}s)")
            k = int(np.searchsorted(self._times, t, side="left"))
            if k >= self._times.size:
                k = self._times.size - 1
            elif k > 0 and (t - self._times[k - 1]) <= (self._times[k] - t):
                k -= 1
            out.append(k)
        return out

    def enable_cache(self, max_bytes: int) -> None:
        """Keep up to ``max_bytes`` of recently decoded frames, so reading a frame again (keyframe
        images after keyframe selection) costs no decoding; 0 turns the cache off."""
        self._cache_limit = max(0, int(max_bytes))
        cache = getattr(self, "_cache", None)
        if cache is None:
            self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._trim_cache()

    def _trim_cache(self) -> None:
        cache = getattr(self, "_cache", None)
        if cache is None:
            return
        w, h = self.output_size
        keep = self._cache_limit // max(1, w * h * 3)
        while len(cache) > keep:
            cache.popitem(last=False)

    def read_indices(self, indices: Sequence[int]) -> np.ndarray:
        """Frames ``(N, H, W, 3)`` uint8 RGB at :attr:`output_size`, in the order asked."""
        self._check_open()
        idx = self._check_indices(indices)
        w, h = self.output_size
        uniq = sorted(set(idx))
        buf = np.empty((len(uniq), h, w, 3), dtype=np.uint8)
        cache = getattr(self, "_cache", None) if getattr(self, "_cache_limit", 0) else None
        if cache is not None:
            missing = [i for i in uniq if i not in cache]
            if missing:
                fresh = np.empty((len(missing), h, w, 3), dtype=np.uint8)
                self._decode_into(missing, fresh)
                for i, frame in zip(missing, fresh):
                    cache[i] = frame
            for k, i in enumerate(uniq):
                buf[k] = cache[i]
                cache.move_to_end(i)
            self._trim_cache()
        elif uniq:
            self._decode_into(uniq, buf)
        if idx == uniq:
            return buf
        pos = {v: k for k, v in enumerate(uniq)}
        return buf[[pos[i] for i in idx]]

    def read_at(self, times: Sequence[float]) -> tuple[np.ndarray, list[int], list[float]]:
        """Frames nearest ``times``, with their indices and real times."""
        idx = self.index_at(times)
        return self.read_indices(idx), idx, self.frame_times(idx)

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the decoder now (its native buffers are freed when the last reference goes;
        no ``gc.collect()``, which costs ~0.1 s per call once torch is loaded)."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path!r} {self.num_frames} frames "
                f"{self._duration:.2f}s out={self.output_size[0]}x{self.output_size[1]}>")


# ----------------------------------------------------------------------------------------------
# helpers


def _check_file(path: str | os.PathLike) -> tuple[str, int]:
    p = Path(path)
    spath = str(path)
    if not p.exists():
        raise VideoError(spath, "file not found")
    if p.is_dir():
        raise VideoError(spath, "is a directory, not a video file")
    if not p.is_file():
        raise VideoError(spath, "not a regular file")
    try:
        size = p.stat().st_size
        with open(p, "rb"):
            pass
    except PermissionError:
        raise VideoError(spath, "cannot read file (permission denied)") from None
    except OSError as e:
        raise VideoError(spath, f"cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise VideoError(spath, "file is empty (0 bytes)")
    return spath, size


def _looks_like_container(path: str) -> bool:
    """Whether the first bytes carry the signature of a common video container."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free")
        or head[:4] == b"\x1a\x45\xdf\xa3"  # EBML: mkv / webm
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or head[:3] == b"FLV"
        or head[:4] in (b"OggS", b"\x00\x00\x01\xba")
        or (len(head) > 376 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47)  # mpeg-ts
    )


def output_size_for(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) with the longer side <= ``max_side``, aspect kept, both even; native if it fits."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    ow = max(2, int(round(width * s / 2)) * 2)
    oh = max(2, int(round(height * s / 2)) * 2)
    while max(ow, oh) > max_side and min(ow, oh) > 2:
        ow, oh = (ow - 2, oh) if ow >= oh else (ow, oh - 2)
    return ow, oh


def _rot_k(rotation: float | None) -> int:
    """np.rot90 turns for a frame's display rotation (degrees, counter-clockwise)."""
    if not rotation:
        return 0
    return int(round(float(rotation) / 90.0)) % 4


class ClipView(VideoReader):
    """A time range ``[start, end)`` of an open reader, seen as a video of its own.

    Indices run ``0 .. n-1`` over the frames whose start time lies in the range, times are relative
    to the range's first frame (so a clip's first keyframe is at 0), and reads go to the base reader.
    Closing the view closes the base reader when ``owns_base`` is true.
    """

    def __init__(self, base: VideoReader, start: float | None = None, end: float | None = None, owns_base: bool = False):
        super().__init__(base.path, base.info.size_bytes)
        self.backend = base.backend
        self.base = base
        self.owns_base = owns_base
        times = base._times
        lo_t = 0.0 if start is None else float(start)
        hi_t = base.duration if end is None else float(end)
        if not (math.isfinite(lo_t) and math.isfinite(hi_t)) or lo_t < 0 or hi_t <= lo_t:
            raise VideoError(base.path, f"clip range {lo_t:.3f}..{hi_t:.3f}s is empty or invalid")
        if lo_t >= base.duration:
            raise VideoError(base.path, f"clip starts at {lo_t:.3f}s, after the end of the video ({base.duration:.3f}s)")
        tol = 1e-6
        lo = int(np.searchsorted(times, lo_t - tol, side="left"))
        hi = int(np.searchsorted(times, hi_t - tol, side="left"))
        if hi <= lo:
            raise VideoError(base.path, f"clip range {lo_t:.3f}..{hi_t:.3f}s holds no frame")
        self._offset = lo
        self.clip_start = float(times[lo])
        self.clip_end = min(hi_t, base.duration)
        last = (times[hi] - times[hi - 1]) if hi < times.size else (base.duration - times[hi - 1])
        self._set_table(times[lo:hi], float(last), base.info.fps)
        bi = base.info
        self._width, self._height, self._codec = bi.width, bi.height, bi.codec
        self.output_size = base.output_size

    def _decode_into(self, indices: list[int], out: np.ndarray) -> None:
        out[:] = self.base.read_indices([i + self._offset for i in indices])

    def _release(self) -> None:
        if self.owns_base:
            self.base.close()


