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

Every failure a file can cause is raised as :class:`~densecap.errors.VideoError` naming the file
and the reason.

Modules: ``reader`` (the interface, metadata, clip views), ``avsource`` (PyAV plumbing),
``pyav_reader``, ``decord_reader`` (one per backend), ``opening`` (``open_video`` and what "auto"
picks), ``settings`` (constants, read at call time).
"""

from densecap.video.decord_reader import DecordReader
from densecap.video.opening import open_clip, open_video, probe_video
from densecap.video.pyav_reader import PyAVReader
from densecap.video.reader import ClipView, VideoInfo, VideoReader, output_size_for
from densecap.video.settings import ACCESS, BACKENDS, DEFAULT_NUM_THREADS

__all__ = [
    "ACCESS", "BACKENDS", "DEFAULT_NUM_THREADS", "ClipView", "DecordReader", "PyAVReader", "VideoInfo",
    "VideoReader", "open_clip", "open_video", "output_size_for", "probe_video",
]
