"""PyAV plumbing shared by both readers: an error-tolerant container + stream, frame conversion."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from densecap.errors import VideoError
from densecap.video.reader import _looks_like_container, _rot_k

log = logging.getLogger(__name__)


def _import_av():
    try:
        import av
    except ImportError:  # pragma: no cover - exercised only without PyAV
        return None
    return av


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


