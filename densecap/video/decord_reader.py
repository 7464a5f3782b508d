"""The decord reader, with its frame table checked against PyAV before any index reaches decord."""

from __future__ import annotations

import bisect
import logging
import os
import re

import numpy as np

from densecap.errors import VideoError
from densecap.video import settings
from densecap.video import avsource
from densecap.video.avsource import _AVSource, _frame_to_rgb
from densecap.video.pyav_reader import PyAVReader
from densecap.video.reader import VideoReader, output_size_for
from densecap.video.settings import DEFAULT_NUM_THREADS

log = logging.getLogger(__name__)


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
        if src is None and avsource._import_av() is not None:
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
        if not np.all(np.isfinite(ts)) or ts[0, 0] < -settings.TS_TOL or ts[0, 0] > 1e6:
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
                if fr.pts is not None and fr.pts >= target - max(1, int(settings.TS_TOL / src.tb)):
                    cw, ch, rot = geometry
                    ref = _frame_to_rgb(fr, self.output_size, (cw, ch), rot)
                    break
            src._stop_gen()
        if ref is None:
            return  # PyAV cannot check it; keep decord's answer
        diff = float(np.abs(got[0].astype(np.int16) - ref.astype(np.int16)).mean())
        if diff > settings.SEEK_CHECK_MAX_DIFF and self._strict:
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
            real = int(np.searchsorted(ts[:, 0], end_t + settings.TS_TOL, side="right"))
            in_tail = int(np.sum((ts[:, 0] >= key_t - settings.TS_TOL) & (ts[:, 0] <= end_t + settings.TS_TOL)))
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
        if not settings.DECORD_DROP_READAHEAD or self._vr is None:
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
        for s in range(0, len(indices), settings.DECORD_BATCH):
            chunk = indices[s:s + settings.DECORD_BATCH]
            nxt = indices[s + settings.DECORD_BATCH] if s + settings.DECORD_BATCH < len(indices) else None
            try:
                arr = vr.get_batch(chunk)
            except Exception as e:
                self._drop_readahead()
                if not self._strict or avsource._import_av() is None:
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


