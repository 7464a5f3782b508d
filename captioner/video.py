"""Reading frames from video files: one small interface over decord and PyAV.

:func:`open_video` returns a :class:`VideoReader` whose frame table (count, real presentation times)
has been checked against what can really be decoded, so sampling code can trust ``num_frames`` and
``frame_times`` and never asks a decoder for a frame that does not exist. (One exception, for speed:
files read in forward passes take the table from their packets; see :class:`PyAVReader`.)

Backends
--------
``"decord"``
    Fast random access for ordinary MP4/MKV/WebM(VP9). Imported lazily.
``"pyav"``
    Seek-based sparse reading over FFmpeg through PyAV; handles GIF (variable frame durations),
    streamed WebM without a duration, VP8, MP4 edit lists and partially truncated files. Imported
    lazily.
``"auto"`` (default)
    PyAV reads the header first (codec, rotation, "is there a video stream at all") and seeks once
    to the middle of the file: when the frames there come out corrupt, the file's keyframes are not
    clean restart points for a decoder that has not seen the file's start, which is what decord's
    is after a seek, and PyAV reads the file (see :class:`PyAVReader`). Otherwise decord is tried, and the file goes to PyAV when decord cannot open it, when its frame table is unreliable
    (frames before the stream start: an MP4 edit list, where decord's index-to-frame mapping is off),
    when its tail does not decode, and for codecs routed to PyAV up front (VP8, GIF). Files larger
    than ``DECORD_MAX_BYTES`` (32 MiB) go to PyAV as well: decord's memory grows with the file
    (it reads packets ahead without bound), PyAV's does not.

Every failure a file can cause is raised as :class:`~captioner.errors.VideoError` naming the file
and the reason.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import os
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densecap.errors import VideoError

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")
ACCESS = ("dense", "sparse")  # how a caller reads (open_video's ``access``)
DEFAULT_NUM_THREADS = 2
# decord: frames per get_batch call; bounds the native buffer decord allocates per call.
DECORD_BATCH = 32
# decord: stop decord's decoding thread when a read is done (see DecordReader._drop_readahead).
# Only the memory benchmark turns it off, to measure the reader as it was without it.
DECORD_DROP_READAHEAD = True
# auto mode: files larger than this (bytes) go to PyAV. While it seeks, decord 0.6.0 reads packets
# ahead of its decoder with no bound but the end of the file (see DecordReader._drop_readahead), so
# its memory grows with the file; below this size that is bounded by the size.
DECORD_MAX_BYTES = 32 * 2**20
# codecs sent to PyAV in auto mode without trying decord. VP8: decord 0.6.0 decoded our VP8 test
# files correctly, but VP8 WebM is the codec upstream reports of decord returning frames from the
# wrong place concern (dmlc/decord#91), it is cheap to decode, and PyAV's pts-based seeking cannot
# get it wrong. GIF: decord cannot open it at all.
PYAV_CODECS = frozenset({"vp8", "gif"})
# how many keyframe groups the "is the end of this file really decodable" check may try
MAX_TAIL_PROBES = 12
# tolerance (seconds) when matching decord's float32 timestamps to PyAV's
_TS_TOL = 2e-3
# Mean absolute difference (0-255) above which decord's and PyAV's decode of one frame disagree;
# different scalers differ by ~1-3, a wrong frame by tens.
SEEK_CHECK_MAX_DIFF = 12.0


# ----------------------------------------------------------------------------------------------
# public types


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


def _import_av():
    try:
        import av
    except ImportError:  # pragma: no cover - exercised only without PyAV
        return None
    return av


def _import_decord():
    try:
        import decord
    except ImportError:  # pragma: no cover - exercised only without decord
        return None
    # decord's bundled FFmpeg prints every concealed decoding error to stderr (dozens of lines per
    # damaged file); the reader reports what matters as VideoError. DENSECAP_DECODER_LOGS=1 keeps them.
    if not os.environ.get("DENSECAP_DECODER_LOGS"):
        decord.logging.set_level(decord.logging.QUIET)
    return decord


class _Unusable(Exception):
    """decord cannot serve this file (in auto mode: fall back to PyAV)."""


# ----------------------------------------------------------------------------------------------
# PyAV plumbing shared by both readers


class _AVSource:
    """A PyAV container and its first video stream, with error-tolerant seeking and decoding."""

    corrupt_after_seek = False  # a frame decoded since the last seek was flagged corrupt
    corrupt_seen = False  # ... since the caller last reset this (any of several seeks)
    seeked = False
    needs_prime = False  # decode the first frame before any seek (see prime)
    _geometry: tuple[int, int, int] | None = None

    def __init__(self, path: str, num_threads: int) -> None:
        self.av = _import_av()
        if self.av is None:
            raise VideoError(path, "PyAV is not installed (pip install av)")
        self.path = path
        self.num_threads = max(1, int(num_threads))
        self.container = None
        self.last_error: str | None = None
        self._gen: Iterator | None = None
        self._open()
        s = self.stream
        self.tb = float(s.time_base) if s.time_base else 0.0
        self.codec = s.codec_context.name
        self.format_name = self.container.format.name
        self.start_pts = s.start_time
        rate = s.average_rate or s.guessed_rate
        self.nominal_fps = float(rate) if rate else None

    def _open(self) -> None:
        av = self.av
        try:
            self.container = av.open(self.path, mode="r")
        except EOFError:
            raise VideoError(self.path, "stream is truncated or corrupt: unexpected end of file") from None
        except (av.FFmpegError, UnicodeDecodeError) as e:
            if _looks_like_container(self.path):
                raise VideoError(self.path, f"stream is truncated or corrupt: {_av_msg(e)}") from None
            raise VideoError(self.path, "not a video file (unrecognized format)") from None
        except OSError as e:
            raise VideoError(self.path, f"cannot open: {e}") from None
        if not self.container.streams.video:
            kinds = sorted({s.type for s in self.container.streams})
            self.container.close()
            self.container = None
            what = f"only {'/'.join(kinds)}" if kinds else "no streams"
            raise VideoError(self.path, f"not a video file (no video stream; {what})")
        self.stream = self.container.streams.video[0]
        self._fresh = True  # nothing read since opening
        self._primed = False
        if self.num_threads > 1:
            # frame threads only: on 2 cores "AUTO" (frame + slice threads) decoded samples/cockatoo.mp4
            # 15 % slower than frame threads alone (docs/benchmarks.md, keyframe extraction)
            self.stream.thread_type = "FRAME"
        self.stream.codec_context.thread_count = self.num_threads

    @property
    def threaded(self) -> bool:
        return self.num_threads > 1

    def single_thread(self) -> None:
        """Reopen with one decoder thread. Frame threading drops the frames in flight when a packet
        fails to decode, so after an error the single-threaded decoder gets more frames out."""
        self.num_threads = 1
        self.reopen()

    def reopen(self) -> None:
        self._stop_gen()
        if self.container is not None:
            self.container.close()
        self._open()

    def close(self) -> None:
        self._stop_gen()
        if self.container is not None:
            try:
                self.container.close()
            finally:
                self.container = None
                self.stream = None

    def _stop_gen(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def packets(self) -> tuple[list[tuple[int | None, int, bool]], str | None]:
        """Demux every packet of the stream (no decoding): ``(pts or dts, duration, keyframe)``.

        Packets the demuxer flags as discard (before an MP4 edit list's start) are left out; a demux
        error ends the list (what was read so far is returned) and is reported as the second value.
        """
        av = self.av
        out: list[tuple[int | None, int, bool]] = []
        err = None
        self._stop_gen()
        if not self._fresh:
            self.reopen()
        self._fresh = False
        try:
            for pkt in self.container.demux(self.stream):
                if pkt.size == 0:
                    continue
                if pkt.is_discard:
                    continue
                ts = pkt.pts if pkt.pts is not None else pkt.dts
                out.append((ts, int(pkt.duration or 0), bool(pkt.is_keyframe)))
        except (av.FFmpegError, EOFError) as e:
            err = _av_msg(e)
        return out, err

    def frames_from(self, pts: int | None) -> Iterator:
        """Decoded frames starting at the keyframe at or before ``pts`` (None: from the file start).

        Every frame is decoded. (Skipping the frames nothing refers to, ``skip_frame = NONREF`` for
        the packets not wanted, made a forward pass over samples/cockatoo.mp4 20 % slower with frame
        threads, not faster: the decoder threads wait on each other when the setting changes.)
        """
        av = self.av
        self._stop_gen()
        self.corrupt_after_seek = False
        self.seeked = pts is not None
        if pts is not None and self.needs_prime and not self._primed:
            self.prime()
        if pts is None:
            if not self._fresh:
                self.reopen()
        else:
            try:
                self.container.seek(int(pts), stream=self.stream, backward=True, any_frame=False)
            except (av.FFmpegError, EOFError):
                self.reopen()
        self._fresh = False
        self._gen = self._decode_gen()
        return self._gen

    def prime(self) -> None:
        """Decode the file's first frame, so that the decoder knows what only the start of the
        stream says before it seeks. On samples/cockatoo.mp4 that is the x264 build (in an SEI of the
        first packet): FFmpeg's H.264 decoder applies its workarounds for old x264 bugs only once it
        has seen it, and frames decoded after a seek on a decoder that has not are grey and smeared.
        The decoder keeps it across seeks (they flush frames, not this); a reopen loses it."""
        if not self._fresh:
            self.reopen()
        self._fresh = False
        self.seeked = False
        gen = self._decode_gen()
        next(gen, None)
        gen.close()
        self._primed = True

    def _decode_gen(self) -> Iterator:
        av = self.av
        ctx = self.stream.codec_context
        try:
            for pkt in self.container.demux(self.stream):
                try:
                    frames = ctx.decode(pkt)
                except (av.FFmpegError, EOFError) as e:
                    self.last_error = _av_msg(e)
                    continue
                for fr in frames:
                    if self.seeked and getattr(fr, "is_corrupt", False):
                        self.corrupt_after_seek = self.corrupt_seen = True
                    yield fr
            return
        except (av.FFmpegError, EOFError) as e:
            self.last_error = _av_msg(e)
        try:
            yield from ctx.decode(None)
        except (av.FFmpegError, EOFError):
            pass

    def scan(self, pts: int | None, first_only: bool = False, stop_after: int | None = None,
             corrupt_within: int = 0) -> list[int]:
        """Pts of the frames that decode from the keyframe at/before ``pts`` on (those >= pts).

        ``first_only``: stop at the first one. ``stop_after``: stop once a frame past this pts decodes.
        ``corrupt_within``: stop as soon as one of the first this many frames out of the seek is
        flagged corrupt (:attr:`corrupt_after_seek` tells; the keyframe is not a clean restart point).
        A scan that met decode errors is redone single-threaded (see :meth:`single_thread`).
        """
        self.last_error = None
        got = self._scan(pts, first_only, stop_after, corrupt_within)
        if self.last_error is not None and self.threaded and not self.corrupt_after_seek:
            self.single_thread()
            got = self._scan(pts, first_only, stop_after, corrupt_within)
        return got

    def _scan(self, pts: int | None, first_only: bool, stop_after: int | None, corrupt_within: int) -> list[int]:
        got: list[int] = []
        for n, fr in enumerate(self.frames_from(pts)):
            if n < corrupt_within and self.corrupt_after_seek:
                break
            fp = fr.pts
            if fp is None:
                continue
            if pts is not None and fp < pts:
                continue
            got.append(fp)
            if first_only or (stop_after is not None and fp >= stop_after):
                break
        self._stop_gen()
        return sorted(set(got))

    def seek_is_clean(self, frames: int = 4) -> bool:
        """Do the first ``frames`` frames after a seek to the middle of the file decode cleanly?

        Some real files (samples/cockatoo.mp4) flag keyframes that do not restart decoding cleanly:
        after a seek there the decoder marks its frames corrupt (grey, smeared). One seek and a few
        frames tell, at any file length. A file whose only keyframe is the first is clean.

        Ask it before anything is decoded: on cockatoo.mp4 the damage only shows on a decoder that
        has not decoded the file's first frame (whose SEI names the x264 build; FFmpeg applies its
        workarounds for old x264 bugs only once it has seen that), which is the state decord's
        decoder and a freshly opened PyAV one are in after a seek.
        """
        s = self.stream
        if s.duration:
            mid = (s.start_time or 0) + int(s.duration) // 2
        elif self.container.duration and self.tb > 0:
            mid = (s.start_time or 0) + int(self.container.duration / 1e6 / 2 / self.tb)
        else:
            return True  # nothing to aim at; reads still check (see PyAVReader._decode_into)
        self.corrupt_after_seek = False
        for n, fr in enumerate(self.frames_from(mid)):
            if self._geometry is None:  # saves reopening the file for first_frame_geometry
                self._geometry = (fr.width, fr.height, _rot_k(getattr(fr, "rotation", 0)))
            if self.corrupt_after_seek or n + 1 >= frames:
                break
        self._stop_gen()
        return not self.corrupt_after_seek

    def first_frame_geometry(self) -> tuple[int, int, int]:
        """(coded width, coded height, display rotation turns), from the first decodable frame (or
        the first that :meth:`seek_is_clean` decoded)."""
        if self._geometry is None:
            s = self.stream
            w, h, k = s.codec_context.width, s.codec_context.height, 0
            for fr in self.frames_from(None):
                w, h, k = fr.width, fr.height, _rot_k(getattr(fr, "rotation", 0))
                break
            self._stop_gen()
            self._geometry = (w, h, k)
        return self._geometry


def _av_msg(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg)


# ----------------------------------------------------------------------------------------------
# PyAV reader


class PyAVReader(VideoReader):
    """Sparse reading with PyAV; frames are matched to the table by their pts.

    Three ways to read, chosen when the file is opened:

    * seeking (the usual case): to the keyframe before each wanted frame, then decoding forward.
      When frames after a seek come out corrupt (see :meth:`_AVSource.seek_is_clean`), the decoder
      is primed with the file's first frame before it seeks (:meth:`_AVSource.prime`), which is all
      samples/cockatoo.mp4 needs;
    * forward, for files whose frames after a seek are corrupt even then: one pass from the start
      per read, up to the last wanted frame;
    * sequential by count, for streams without usable timestamps (GIF): one pass from the start.

    For the files that needed a remedy (the first two cases) and demuxed without error, the frame
    table is taken from the packets without decoding the file's last keyframe group (on
    cockatoo.mp4 half the file); a listed frame that then does not decode is stood in for by an
    earlier decoded frame (the last one a forward pass decoded), with one warning.
    """

    backend = "pyav"
    _forward = False  # even a primed decoder gives corrupt frames after a seek: read in forward passes
    _trusted = False  # the table is the packets' (see the class doc)
    _stand_in_warned = False

    def __init__(self, path: str, size_bytes: int, max_side: int | None = None,
                 num_threads: int = DEFAULT_NUM_THREADS, clean_seek: bool | None = None) -> None:
        """``clean_seek``: what :meth:`_AVSource.seek_is_clean` already said of this file (None: not
        asked yet; the reader checks its last keyframe itself)."""
        super().__init__(path, size_bytes)
        self._clean_seek = clean_seek
        self._src = _AVSource(path, num_threads)
        try:
            self._setup(max_side)
        except BaseException:
            self._src.close()
            raise

    def _setup(self, max_side: int | None) -> None:
        src = self._src
        self._codec = src.codec
        cw, ch, self._rot = src.first_frame_geometry()
        if not cw or not ch:
            raise VideoError(self.path, "no decodable frames (no frame size)")
        dw, dh = (ch, cw) if self._rot % 2 else (cw, ch)
        self._width, self._height = dw, dh
        self.output_size = output_size_for(dw, dh, max_side)

        pk, demux_err = src.packets()
        self._sequential = (
            not pk
            or src.format_name == "gif"
            or src.codec == "gif"
            or any(ts is None for ts, _, _ in pk)
            or src.tb <= 0
        )
        if self._sequential:
            self._build_by_decoding()
        else:
            self._build_from_packets(pk, demux_err)

    # -- frame table ----------------------------------------------------------------------------

    def _build_by_decoding(self) -> None:
        """Decode the whole stream once (GIFs, streams without timestamps): exact table."""
        src = self._src
        pts: list[int | None] = []
        durs: list[int] = []
        for fr in src.frames_from(None):
            pts.append(fr.pts)
            durs.append(int(getattr(fr, "duration", 0) or 0))
        src._stop_gen()
        if not pts:
            raise VideoError(self.path, _no_frames_reason(src))
        tb = src.tb
        if tb > 0 and all(p is not None for p in pts) and all(b > a for a, b in zip(pts, pts[1:])):
            times = np.array(pts, dtype=np.float64) * tb
            last = durs[-1] * tb if durs[-1] > 0 else None
        else:  # no usable timestamps: evenly spaced at the nominal rate
            fps = src.nominal_fps or 25.0
            times = np.arange(len(pts), dtype=np.float64) / fps
            last = 1.0 / fps
        self._pts = list(range(len(pts)))  # sequential mode: indices are decode order
        self._keys = [0]
        self._set_table(times, last, src.nominal_fps)

    def _build_from_packets(self, pk: list[tuple[int | None, int, bool]], demux_err: str | None) -> None:
        src = self._src
        pk = sorted({p[0]: p for p in reversed(pk)}.values(), key=lambda x: x[0])  # dedupe pts
        pts = [p for p, _, _ in pk]
        durs = {p: d for p, d, _ in pk}
        keys = [i for i, (_, _, k) in enumerate(pk) if k] or [0]
        k_last = len(keys) - 1
        lined_up, remedied = True, self._clean_seek is False
        decoded: list[int] | None = None  # pts that decode from the last keyframe on
        if k_last > 0:
            # frames after a seek to the last keyframe: corrupt means not a clean restart point
            if not remedied:  # the tail check below, cut short when its first frames are corrupt
                decoded = src.scan(pts[keys[k_last]], corrupt_within=4)
                remedied = src.corrupt_after_seek
                lined_up = not decoded or decoded[0] in durs
            if remedied:
                # prime the decoder before seeks; should frames still come out corrupt, the first
                # read finds out and reads in forward passes from then on (see _decode_into)
                log.debug("%s: frames after a seek are corrupt on a fresh decoder; priming it", self.path)
                src.needs_prime = True
        if remedied and demux_err is None and lined_up:
            # every packet demuxed: trust the table (reads check it as they go, see _decode_forward)
            self._trusted = True
            self._pts = pts
            self._keys = keys
            last = durs.get(pts[-1], 0) * src.tb
            self._set_table(np.array(pts, dtype=np.float64) * src.tb, last if last > 0 else None, src.nominal_fps)
            return
        # which frames from the last keyframe on really decode? (truncated files, over-reported
        # counts). If none, bisect over keyframes for the last group that does.
        good_from = None
        if decoded is None or remedied:
            decoded = src.scan(pts[keys[k_last]])
        if decoded:
            good_from = k_last
        else:
            lo, hi, probes = -1, k_last, 0
            while hi - lo > 1 and probes < MAX_TAIL_PROBES:
                mid = (lo + hi) // 2
                probes += 1
                if src.scan(pts[keys[mid]], first_only=True):
                    lo = mid
                else:
                    hi = mid
            if lo < 0 and hi > 0:  # ran out of probes before reaching the first group
                lo = 0 if src.scan(pts[keys[0]], first_only=True) else -1
            if lo < 0:
                raise VideoError(self.path, _no_frames_reason(src, demux_err))
            good_from = lo
            decoded = src.scan(pts[keys[lo]])
            if not decoded:
                raise VideoError(self.path, _no_frames_reason(src, demux_err))
        cut = pts[keys[good_from]]
        dset = set(decoded)
        table = [p for p in pts if p < cut] + [p for p in pts if p >= cut and p in dset]
        if not any(p in dset for p in pts if p >= cut):
            # decoded pts do not line up with packet pts: build the table by decoding everything
            self._sequential = True
            self._build_by_decoding()
            return
        self._pts = table
        pos = {p: i for i, p in enumerate(table)}
        self._keys = sorted({pos[pts[k]] for k in keys if pts[k] in pos} | {0})
        tb = src.tb
        times = np.array(table, dtype=np.float64) * tb
        last = durs.get(table[-1], 0) * tb
        self._set_table(times, last if last > 0 else None, src.nominal_fps)

    # -- decoding -------------------------------------------------------------------------------

    def _to_rgb(self, fr) -> np.ndarray:
        return _frame_to_rgb(fr, self.output_size, (self._width, self._height) if not self._rot % 2
                             else (self._height, self._width), self._rot)

    def _fail(self, i: int, why: str) -> VideoError:
        detail = f"frame {i} (t={self._times[i]:.3f}s) {why}"
        if self._src.last_error:
            detail += f"; decoder said: {self._src.last_error}"
        return VideoError(self.path, f"stream is truncated or corrupt: {detail}")

    def _decode_into(self, indices: list[int], out: np.ndarray) -> None:
        if self._sequential:
            self._decode_sequential(indices, out)
            return
        if self._forward:
            self._decode_forward(indices, out)
            return
        self._src.corrupt_seen = False
        try:
            self._decode_seeking(indices, out)
        except VideoError:
            if not self._trusted:
                raise
            # a frame of the packets' table does not decode: the forward pass stands in for it
            self._decode_forward(indices, out)
            return
        if self._src.corrupt_seen:
            # The decoder flagged frames as corrupt after a seek: the file's keyframes are not clean
            # restart points. Seeking gives wrong frames here, so this reader decodes forward from
            # the start from now on.
            log.debug("%s: frames decoded after a seek are corrupt; reading it from the start", self.path)
            self._forward = True
            self._decode_forward(indices, out)

    def _decode_forward(self, indices: list[int], out: np.ndarray) -> None:
        """One pass from the start to the last wanted frame; only the wanted ones are converted."""
        src = self._src
        src.last_error = None
        targets = [self._pts[i] for i in indices]
        slot, prev, missing = 0, None, []
        for fr in src.frames_from(None):
            fp = fr.pts
            if fp is None:
                continue
            while slot < len(targets) and fp > targets[slot]:  # that one never came out of the decoder
                missing.append(indices[slot])
                out[slot] = self._to_rgb(prev if prev is not None else fr)
                slot += 1
            if slot < len(targets) and fp == targets[slot]:
                out[slot] = self._to_rgb(fr)
                slot += 1
            if slot == len(targets):
                break
            prev = fr
        src._stop_gen()
        if slot < len(targets):
            if prev is None:
                raise self._fail(indices[slot], "cannot be decoded (no frame decodes)")
            missing += indices[slot:]
            rgb = self._to_rgb(prev)
            out[slot:] = rgb
        if missing and not self._stand_in_warned:
            self._stand_in_warned = True
            said = f" (decoder said: {src.last_error})" if src.last_error else ""
            log.warning("%s: %d listed frame(s) do not decode, the first at t=%.3fs; an earlier decoded "
                        "frame stands in for them%s", self.path, len(missing), self._times[missing[0]], said)

    def _decode_seeking(self, indices: list[int], out: np.ndarray) -> None:
        src = self._src
        src.last_error = None
        it = None  # frames decoding forward from the last seek
        pending = None  # a frame pulled from ``it`` but not used yet
        last = None  # pts of the last frame delivered from ``it``
        try:
            for slot, i in enumerate(indices):
                p = self._pts[i]
                kk = bisect.bisect_right(self._keys, i) - 1  # keyframe group holding frame i
                # keep decoding forward unless a keyframe lies between here and the target
                if it is not None and last is not None and p > last and self._pts[self._keys[kk]] <= last:
                    frame, pending, status, _ = _advance(it, pending, p)
                else:
                    frame, pending, status, it = self._seek_read(i, kk)
                if status != "ok" and src.last_error is not None and src.threaded:
                    src.single_thread()  # frame threading lost frames around a bad packet
                    frame, pending, status, it = self._seek_read(i, kk)
                if status != "ok":
                    raise self._fail(i, "cannot be decoded" if status == "late"
                                     else "cannot be decoded (stream ended early)")
                out[slot] = self._to_rgb(frame)
                last = p
        finally:
            src._stop_gen()

    def _seek_read(self, i: int, kk: int):
        """Seek to keyframe group ``kk`` and decode to frame ``i``; step back when a seek lands late."""
        src = self._src
        p = self._pts[i]
        starts = [self._pts[self._keys[k]] for k in range(kk, max(-1, kk - 3), -1)] + [None]
        for start in starts:
            it = src.frames_from(start)
            frame, pending, status, seen = _advance(it, None, p)
            if status == "late" and seen == 0:
                continue  # the first frame out is already past the target: start earlier
            return frame, pending, status, it
        return None, None, "late", it

    def _decode_sequential(self, indices: list[int], out: np.ndarray) -> None:
        src = self._src
        src.last_error = None
        want = iter(enumerate(indices))
        slot, target = next(want)
        for n, fr in enumerate(src.frames_from(None)):
            if n == target:
                out[slot] = self._to_rgb(fr)
                nxt = next(want, None)
                if nxt is None:
                    src._stop_gen()
                    return
                slot, target = nxt
        src._stop_gen()
        raise self._fail(target, "cannot be decoded (stream ended early)")

    def _release(self) -> None:
        self._src.close()


def _frame_to_rgb(fr, output_size: tuple[int, int], coded: tuple[int, int], rot: int) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB at ``output_size`` (display orientation), scaled with
    area averaging when it shrinks; ``coded`` is the stream's (width, height) before rotation."""
    ow, oh = output_size
    w, h = (oh, ow) if rot % 2 else (ow, oh)  # size to hand swscale, before rotation
    if (fr.width, fr.height) == (w, h) and fr.format.name == "rgb24":
        arr = fr.to_ndarray()
    else:
        interp = "AREA" if (w, h) != tuple(coded) else None
        arr = fr.reformat(width=w, height=h, format="rgb24", interpolation=interp).to_ndarray()
    if rot:
        arr = np.rot90(arr, rot)
    return arr


def _advance(it: Iterator, pending, p: int):
    """Pull frames until pts ``p``: (frame, pending, "ok" | "late" | "eof", frames seen before p)."""
    seen = 0
    while True:
        fr = pending if pending is not None else next(it, None)
        pending = None
        if fr is None:
            return None, None, "eof", seen
        fp = fr.pts
        if fp is None or fp < p:
            seen += 1
            continue
        if fp == p:
            return fr, None, "ok", seen
        return None, fr, "late", seen


def _no_frames_reason(src: _AVSource, demux_err: str | None = None) -> str:
    detail = src.last_error or demux_err
    return "no decodable frames" + (f" (decoder said: {detail})" if detail else "")


# ----------------------------------------------------------------------------------------------
# decord reader


class DecordReader(VideoReader):
    """decord's VideoReader, with its frame table checked before any index reaches it.

    decord's frame count is its packet count; when packets do not decode (a cut tail, an MP4 edit
    list) ``get_batch`` can spin forever in native code. So the table is trimmed to the frames PyAV
    actually decodes at the end of the file, indices are range-checked here, and frames are fetched
    in batches of at most ``DECORD_BATCH``.

    When a read is done, decord's decoding thread is stopped (:meth:`_drop_readahead`): left
    running, it kept decoding packets that decord had queued ahead of need, and memory grew with the
    length of the video.
    """

    backend = "decord"

    def __init__(self, path: str, size_bytes: int, max_side: int | None = None,
                 num_threads: int = DEFAULT_NUM_THREADS, strict: bool = False,
                 src: _AVSource | None = None) -> None:
        """``strict``: raise :class:`_Unusable` when decord's table is unreliable (auto mode).
        ``src``: the file already open with PyAV (auto mode); the reader closes it when set up."""
        super().__init__(path, size_bytes)
        self._decord = _import_decord()
        if self._decord is None:
            if src is not None:
                src.close()
            raise _Unusable("decord is not installed")
        self._vr = None
        self._keys: list[int] = []  # decord's keyframe indices
        self._num_threads = max(1, int(num_threads))
        self._strict = strict
        self._max_side = max_side
        self._helper: PyAVReader | None = None  # auto mode: PyAV re-reads what decord fails on
        if src is None and _import_av() is not None:
            src = _AVSource(path, self._num_threads)  # raises VideoError for non-video files
        try:
            self._setup(max_side, src)
        except BaseException:
            self._release()
            raise
        finally:
            if src is not None:
                src.close()

    def _open_decord(self, width: int, height: int):
        d = self._decord
        try:
            return d.VideoReader(self.path, ctx=d.cpu(0), width=width, height=height,
                                 num_threads=self._num_threads)
        except Exception as e:  # decord raises DECORDError / RuntimeError with a C++ log line
            raise _Unusable(_decord_msg(e)) from None

    def _setup(self, max_side: int | None, src: _AVSource | None) -> None:
        if src is not None:
            self._codec = src.codec
            cw, ch, rot = src.first_frame_geometry()
            dw, dh = (ch, cw) if rot % 2 else (cw, ch)
            if dw and dh:
                ow, oh = output_size_for(dw, dh, max_side)
                self._vr = self._open_decord(ow, oh)
            else:
                self._vr = self._open_decord(-1, -1)
        else:
            self._vr = self._open_decord(-1, -1)
            dw = dh = 0
        vr = self._vr
        n = len(vr)
        if n <= 0:
            raise _Unusable("decord reports no frames")
        if not dw:
            dh, dw = vr[0].shape[:2] if n else (0, 0)
            self._drop_readahead()
            ow, oh = output_size_for(dw, dh, max_side)
            if (ow, oh) != (dw, dh):
                del self._vr
                self._vr = vr = self._open_decord(ow, oh)
        self._width, self._height = int(dw), int(dh)
        self.output_size = (int(ow), int(oh))
        self._keys = sorted(int(k) for k in np.asarray(vr.get_key_indices()).ravel())
        # decord keeps times as float32: round to the microsecond (10.199999809 -> 10.2)
        ts = np.round(np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64).reshape(n, 2), 6)
        if not np.all(np.isfinite(ts)) or ts[0, 0] < -_TS_TOL or ts[0, 0] > 1e6:
            # frames timed before the stream start: an edit list; decord's index<->frame map is off
            self._unreliable("frame timestamps start before the stream (edit list)")
        if n > 1 and np.any(np.diff(ts[:, 0]) <= 0):
            self._unreliable("frame timestamps are not increasing")
        if src is not None:
            n = self._check_tail(src, ts, n)
        ts = ts[:n]
        last = float(ts[-1, 1] - ts[-1, 0])
        self._set_table(ts[:, 0], last if last > 0 else None, float(vr.get_avg_fps() or 0) or None)
        if self._strict and src is not None:
            self._verify_seek(src, ts, (cw, ch, rot))

    def _verify_seek(self, src: _AVSource, ts: np.ndarray, geometry: tuple[int, int, int]) -> None:
        """Check one frame that decord reaches by seeking against PyAV's decode of it.

        decord returns wrong (grey, smeared) frames after a seek on some real H.264 files that PyAV
        and ffmpeg decode correctly (samples/cockatoo.mp4 is one): its seek lands on a packet that
        is flagged as a keyframe but does not restart decoding cleanly. One frame early in the
        second keyframe group is decoded both ways (the damage shows within a few frames of a bad
        restart point, and the frame is cheap to reach for PyAV); in auto mode a mismatch moves the
        file to PyAV.
        """
        n = self.num_frames
        keys = [int(k) for k in np.asarray(self._vr.get_key_indices()).ravel() if 0 < int(k) < n]
        if not keys:
            return  # a single keyframe group: no seek ever happens
        end = keys[1] if len(keys) > 1 else n
        j = keys[0] + min(3, end - 1 - keys[0])
        got = self._vr.get_batch([j])
        got = got.asnumpy() if hasattr(got, "asnumpy") else np.asarray(got)
        self._vr.seek(0)
        ref = None
        if src.tb > 0:  # the same frame by its time, from PyAV's decoder (which has seen the first frame)
            target = (src.start_pts or 0) + int(round(float(ts[j, 0]) / src.tb))
            for fr in src.frames_from(target):
                if fr.pts is not None and fr.pts >= target - max(1, int(_TS_TOL / src.tb)):
                    cw, ch, rot = geometry
                    ref = _frame_to_rgb(fr, self.output_size, (cw, ch), rot)
                    break
            src._stop_gen()
        if ref is None:
            return  # PyAV cannot check it; keep decord's answer
        diff = float(np.abs(got[0].astype(np.int16) - ref.astype(np.int16)).mean())
        if diff > SEEK_CHECK_MAX_DIFF and self._strict:
            raise _Unusable(f"decord's frame {j} after a seek differs from PyAV's (mean abs diff {diff:.1f})")

    def _unreliable(self, why: str) -> None:
        if self._strict:
            raise _Unusable(why)

    def _check_tail(self, src: _AVSource, ts: np.ndarray, n: int) -> int:
        """Count of decord's frames that PyAV can really decode, checked on the last keyframe group."""
        keys = [int(k) for k in np.asarray(self._vr.get_key_indices()).ravel() if 0 <= int(k) < n] or [0]
        start = src.start_pts or 0
        tb = src.tb
        if tb <= 0:
            return n
        to_pts = lambda t: start + int(round(t / tb))  # noqa: E731
        for attempt, k in enumerate(reversed(keys)):
            if attempt >= 4:
                break
            key_t = float(ts[k, 0])
            got = src.scan(to_pts(key_t), stop_after=to_pts(float(ts[n - 1, 0])) - 1)
            got_t = [(g - start) * tb for g in got]
            if not got_t:
                continue
            end_t = max(got_t)
            real = int(np.searchsorted(ts[:, 0], end_t + _TS_TOL, side="right"))
            in_tail = int(np.sum((ts[:, 0] >= key_t - _TS_TOL) & (ts[:, 0] <= end_t + _TS_TOL)))
            if len(got_t) < in_tail:
                # holes inside the group: decord would count frames that never come out
                self._unreliable("frames inside the last keyframe group do not decode")
            if real < n:
                self._unreliable(f"only {real} of {n} frames decode")
                return max(1, min(real, k + len(got_t)))
            return n
        self._unreliable("the end of the stream does not decode")
        # forced decord: keep only what precedes the earliest group tried
        real = keys[-min(4, len(keys))]
        if real <= 0:
            raise VideoError(self.path, "no decodable frames")
        return real

    def _drop_readahead(self) -> None:
        """Stop decord's decoding thread and drop what it queued; the next read seeks.

        decord 0.6.0's ``get_batch`` hands packets to its decoding thread in a loop that does not
        wait when the thread has no frame out yet: while the thread decodes one frame the loop reads
        and queues dozens of packets (keyframe extraction on a 60-minute file of 36,000 frames read
        767,000 packets under a memory profiler; see docs/benchmarks.md). After the call returns,
        the thread goes on decoding that backlog into RGB frames nobody asked for (while the caller
        encodes the batch, say), from a buffer pool that never shrinks while the reader is open, so
        peak memory rose batch after batch with the length of the video (374 MB for 2 minutes of
        320x240, 1.3 GB for 60). ``seek(0)`` joins the thread and clears its queues (frame 0 is
        always a keyframe, so it is exact). The packets read ahead during a call are still bounded
        only by the end of the file: that is why auto mode leaves files above ``DECORD_MAX_BYTES``
        to PyAV.
        """
        if not DECORD_DROP_READAHEAD or self._vr is None:
            return
        try:
            self._vr.seek(0)
        except Exception as e:  # a decoder in an error state: the next read reports what is wrong
            log.debug("%s: decord seek(0) after a read failed: %s", self.path, _decord_msg(e))

    def _group(self, i: int) -> int:
        """Which keyframe group (per decord's index) frame ``i`` is in."""
        return bisect.bisect_right(self._keys, i)

    def _decode_into(self, indices: list[int], out: np.ndarray) -> None:
        vr = self._vr
        for s in range(0, len(indices), DECORD_BATCH):
            chunk = indices[s:s + DECORD_BATCH]
            nxt = indices[s + DECORD_BATCH] if s + DECORD_BATCH < len(indices) else None
            try:
                arr = vr.get_batch(chunk)
            except Exception as e:
                self._drop_readahead()
                if not self._strict or _import_av() is None:
                    raise VideoError(self.path, f"stream is truncated or corrupt: decord failed on frames "
                                                f"{chunk[0]}..{chunk[-1]}: {_decord_msg(e)}") from None
                # auto mode: let PyAV decode this batch, matched by time; it names the bad frame
                out[s:s + len(chunk)] = self._read_with_pyav(chunk)
                continue
            if nxt is None or self._group(nxt) != self._group(chunk[-1]):
                # done, or the next batch starts in a later keyframe group (decord seeks there anyway);
                # within one group it goes on decoding where it stopped
                self._drop_readahead()
            arr = arr.asnumpy() if hasattr(arr, "asnumpy") else np.asarray(arr)
            if arr.shape[1:3] != out.shape[1:3]:
                raise VideoError(self.path, f"decoder returned frames of {arr.shape[2]}x{arr.shape[1]}, "
                                            f"expected {out.shape[2]}x{out.shape[1]}")
            out[s:s + len(chunk)] = arr
            del arr

    def _read_with_pyav(self, chunk: list[int]) -> np.ndarray:
        if self._helper is None:
            self._helper = PyAVReader(self.path, self._size_bytes, self._max_side, self._num_threads)
            if self._helper.output_size != self.output_size:
                raise VideoError(self.path, "decord and PyAV disagree on the frame size")
        h = self._helper
        idx = h.index_at([min(float(self._times[i]), h.duration) for i in chunk])
        return h.read_indices(idx)

    def _release(self) -> None:
        if getattr(self, "_helper", None) is not None:
            self._helper.close()
            self._helper = None
        if getattr(self, "_vr", None) is not None:
            vr = self._vr
            self._vr = None
            del vr


def _decord_msg(e: BaseException) -> str:
    lines = [m for m in str(e).strip().splitlines() if m.strip() and not m.startswith("Stack trace")]
    text = lines[0] if lines else type(e).__name__
    # "[12:00:00] /src/video_reader.cc:270: [file] Failed to ..." -> "Failed to ..."
    prefix = re.compile(r"^(\[[0-9:]+\]\s*|\S+\.(cc|h|cpp):\d+:\s*|\[[^\]]*\]\s*)")
    while True:  # messages nest: "[t] a.cc:1: [t] b.cc:2: Check failed ..."
        stripped = prefix.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return text.strip() or type(e).__name__


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
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown video backend {backend!r}; expected 'auto', 'decord' or 'pyav'")
    if access not in ACCESS:
        raise ValueError(f"unknown access {access!r}; expected one of {', '.join(ACCESS)}")
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
    av = _import_av()
    if av is not None and access == "sparse":
        return PyAVReader(spath, size, max_side, num_threads)
    src = None
    if av is not None:
        src = _AVSource(spath, num_threads)  # non-video files fail here with a clear VideoError
        try:
            if src.codec in PYAV_CODECS or src.format_name == "gif" or size > DECORD_MAX_BYTES:
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
    if _import_decord() is not None:
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
