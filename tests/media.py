"""Test media made with the ffmpeg binary that imageio-ffmpeg ships (no downloads).

Each maker writes one file and returns its path; sizes and rates are small so the whole set builds
in a few seconds on 2 cores.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()

# Visually distinct lavfi sources, one per scene.
SCENE_SOURCES = [
    "testsrc2=size={w}x{h}:rate={fps}",
    "smptebars=size={w}x{h}:rate={fps}",
    "mandelbrot=size={w}x{h}:rate={fps}",
    "color=c=0x2050d0:size={w}x{h}:rate={fps},drawbox=x=20:y=20:w=60:h=60:color=yellow:t=fill",
    "cellauto=size={w}x{h}:rate={fps}:rule=110",
]


def run_ffmpeg(args: list[str]) -> None:
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def make_multiscene(
    path: Path,
    scene_seconds: list[float] = (4.0, 4.0, 4.0),
    size: tuple[int, int] = (160, 120),
    fps: int = 10,
    codec_args: tuple[str, ...] = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10"),
) -> Path:
    """Concatenate len(scene_seconds) distinct synthetic scenes with hard cuts between them."""
    w, h = size
    inputs: list[str] = []
    for i, secs in enumerate(scene_seconds):
        src = SCENE_SOURCES[i % len(SCENE_SOURCES)].format(w=w, h=h, fps=fps)
        inputs += ["-f", "lavfi", "-t", f"{secs}", "-i", src]
    n = len(scene_seconds)
    chains = "".join(f"[{i}:v]format=yuv420p,setsar=1[v{i}];" for i in range(n))
    concat = "".join(f"[v{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=0[out]"
    run_ffmpeg([*inputs, "-filter_complex", chains + concat, "-map", "[out]", "-r", str(fps), *codec_args, str(path)])
    return path


def make_static(path: Path, seconds: float = 8.0, size: tuple[int, int] = (160, 120), fps: int = 10) -> Path:
    """A still picture (one testsrc2 frame) held for ``seconds``."""
    w, h = size
    src = f"testsrc2=size={w}x{h}:rate={fps}"
    run_ffmpeg(["-f", "lavfi", "-i", src, "-vf", "select='eq(n,0)',loop=loop=-1:size=1:start=0,setpts=N/FRAME_RATE/TB",
                "-t", f"{seconds}", "-r", str(fps), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)])
    return path


def make_testsrc(path: Path, seconds: float = 120.0, size: tuple[int, int] = (320, 240), fps: int = 10) -> Path:
    """A long, cheap H.264 video: ffmpeg's moving ``testsrc2`` pattern, x264 ``ultrafast`` with its
    default keyframe interval (250 frames). 320x240 at 10 fps is ~3 MB a minute and takes well under
    a second per minute to make (the memory test and benchmarks/bench_memory.py)."""
    w, h = size
    run_ffmpeg(["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}", "-t", f"{seconds:g}",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)])
    return path


def make_webm(path: Path, codec: str = "libvpx-vp9", seconds: float = 3.0, size: tuple[int, int] = (160, 120), fps: int = 10) -> Path:
    w, h = size
    run_ffmpeg(["-f", "lavfi", "-t", f"{seconds}", "-i", f"testsrc2=size={w}x{h}:rate={fps}",
                "-c:v", codec, "-b:v", "200k", "-pix_fmt", "yuv420p", str(path)])
    return path


def make_solid_lead(path: Path, lead_seconds: float = 1.0, seconds: float = 6.0, size: tuple[int, int] = (160, 120), fps: int = 10) -> Path:
    """A black lead-in (fade from black) followed by real content."""
    w, h = size
    inputs = ["-f", "lavfi", "-t", f"{lead_seconds}", "-i", f"color=c=black:size={w}x{h}:rate={fps}",
              "-f", "lavfi", "-t", f"{seconds}", "-i", f"testsrc2=size={w}x{h}:rate={fps}"]
    graph = "[0:v]format=yuv420p,setsar=1[a];[1:v]format=yuv420p,setsar=1[b];[a][b]concat=n=2:v=1:a=0[out]"
    run_ffmpeg([*inputs, "-filter_complex", graph, "-map", "[out]", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)])
    return path


# --- broken and unusual files (for the reader's error handling) -----------------------------------


def make_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An .mp4 holding only an AAC sine tone: no video stream."""
    run_ffmpeg(["-f", "lavfi", "-t", f"{seconds}", "-i", "sine=frequency=440", "-c:a", "aac", str(path)])
    return path


def make_live_webm(path: Path, codec: str = "libvpx-vp9", seconds: float = 4.0, size: tuple[int, int] = (160, 120), fps: int = 10) -> Path:
    """A WebM written as a live stream (no duration, no cues), like browser MediaRecorder output."""
    w, h = size
    run_ffmpeg(["-f", "lavfi", "-t", f"{seconds}", "-i", f"testsrc2=size={w}x{h}:rate={fps}",
                "-c:v", codec, "-b:v", "200k", "-g", "10", "-pix_fmt", "yuv420p", "-live", "1", "-f", "webm", str(path)])
    return path


def make_editlist(src: Path, path: Path, start: float = 1.25, seconds: float = 3.0) -> Path:
    """Stream-copy a cut that starts between keyframes: the MP4 gets an edit list whose leading
    packets decode but are never shown (decord counts them as frames)."""
    run_ffmpeg(["-ss", f"{start}", "-i", str(src), "-t", f"{seconds}", "-c", "copy", str(path)])
    return path


def make_truncated(src: Path, path: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of ``src``'s bytes."""
    data = Path(src).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return path


def make_corrupt(src: Path, path: Path, start: float = 0.45, length: float = 0.15, seed: int = 0) -> Path:
    """``src`` with a run of random bytes (``length`` of the file, from ``start``) written over it."""
    import random

    data = bytearray(Path(src).read_bytes())
    a = int(len(data) * start)
    n = int(len(data) * length)
    data[a:a + n] = random.Random(seed).randbytes(n)
    Path(path).write_bytes(bytes(data))
    return path


def make_zero_frames(src: Path, path: Path) -> Path:
    """``src`` (an MP4) with every byte of its media data zeroed: a video stream whose packets
    all exist but none decodes."""
    data = bytearray(Path(src).read_bytes())
    at = data.find(b"mdat")
    if at < 0:
        raise ValueError(f"{src}: no mdat box")
    size = int.from_bytes(data[at - 4:at], "big")
    end = at - 4 + size if size > 8 else len(data)
    data[at + 4:end] = bytes(end - at - 4)
    Path(path).write_bytes(bytes(data))
    return path


def make_random_bytes(path: Path, size: int = 20000, seed: int = 0) -> Path:
    import random

    Path(path).write_bytes(random.Random(seed).randbytes(size))
    return path


def make_text(path: Path) -> Path:
    Path(path).write_text("this is a text file, not a video\n" * 20)
    return path


def make_rotated(src: Path, path: Path, degrees: int = 90) -> Path:
    """Stream-copy ``src`` with display-rotation metadata (as phones write it)."""
    run_ffmpeg(["-display_rotation", str(degrees), "-i", str(src), "-c", "copy", str(path)])
    return path


def make_bad_tail(src: Path, path: Path, packets: int = 3) -> Path:
    """``src`` with its last ``packets`` video packets (in file order) zeroed: the container still
    lists them, but they do not decode (decord counts them as frames)."""
    import av

    with av.open(str(src)) as c:
        spans = sorted((p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size and p.pos is not None)
    data = bytearray(Path(src).read_bytes())
    for pos, size in spans[-packets:]:
        data[pos:pos + size] = bytes(size)
    Path(path).write_bytes(bytes(data))
    return path
