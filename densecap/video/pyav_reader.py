"""The PyAV reader: sparse reading by seeking, primed decoders, forward passes (see :class:`PyAVReader`)."""

from __future__ import annotations

import bisect
import logging

import numpy as np

from densecap.errors import VideoError
from densecap.video import settings
from densecap.video.avsource import (
    _advance,
    _AVSource,
    _frame_to_rgb,
    _no_frames_reason,
)
from densecap.video.reader import VideoReader, output_size_for
from densecap.video.settings import DEFAULT_NUM_THREADS

log = logging.getLogger(__name__)


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
            while hi - lo > 1 and probes < settings.MAX_TAIL_PROBES:
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


