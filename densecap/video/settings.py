"""Tunable constants of the video readers, read at call time (tests and benchmarks change them here)."""

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
TS_TOL = 2e-3
# Mean absolute difference (0-255) above which decord's and PyAV's decode of one frame disagree;
# different scalers differ by ~1-3, a wrong frame by tens.
SEEK_CHECK_MAX_DIFF = 12.0


