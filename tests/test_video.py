"""densecap.video (captioner.video): metadata, frame reading, backend routing and failures, on real files."""

from __future__ import annotations

import math
import os
import time

import av
import numpy as np
import pytest

from captioner.errors import VideoError
from densecap.video import VideoInfo, open_video, output_size_for, probe_video


def reference_frames(path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame and its time, decoded straight through with PyAV (independent of the reader)."""
    frames, times = [], []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        decoded = []
        try:
            for pkt in c.demux(s):
                try:
                    decoded += s.decode(pkt)
                except av.error.InvalidDataError:  # a cut-off packet: keep going
                    pass
        except av.error.InvalidDataError:  # demuxing past the cut of a truncated file
            decoded += s.decode(None)
        for fr in decoded:
            frames.append(np.rot90(fr.to_ndarray(format="rgb24"), int(round((fr.rotation or 0) / 90)) % 4))
            times.append(float(fr.time))
    t0 = times[0]
    return frames, [t - t0 for t in times]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_cockatoo_metadata(samples_dir, backend):
    info = probe_video(samples_dir / "cockatoo.mp4", backend=backend)
    assert isinstance(info, VideoInfo)
    assert info.num_frames == 280
    assert info.fps == pytest.approx(20.0)
    assert (info.width, info.height) == (1280, 720)
    assert info.duration == pytest.approx(14.0, abs=1e-3)
    assert info.codec == "h264"
    # auto: decord's frames after a seek are wrong on this file, so it is read with PyAV
    assert info.backend == ("pyav" if backend == "auto" else backend)
    assert info.size_bytes == (samples_dir / "cockatoo.mp4").stat().st_size
    d = info.to_dict()
    assert d["num_frames"] == 280 and d["path"].endswith("cockatoo.mp4")


def test_auto_mode_avoids_decords_wrong_frames_after_seeking(samples_dir):
    """decord decodes grey, smeared frames after seeking into cockatoo.mp4's later keyframe groups
    (a real file that ffmpeg and PyAV decode correctly); auto mode must return the real frames."""
    path = samples_dir / "cockatoo.mp4"
    wanted = [90, 120, 200]
    with open_video(path, backend="pyav", max_side=336) as ref:
        expected = ref.read_indices(wanted)
    assert min(float(f.reshape(-1, 3).std(0).max()) for f in expected) > 30  # real, textured frames
    with open_video(path, backend="decord", max_side=336) as forced:
        wrong = forced.read_indices(wanted)
    assert max(mad(a, b) for a, b in zip(wrong, expected)) > 20  # the decord bug this guards against
    with open_video(path, max_side=336) as auto:
        got = auto.read_indices(wanted)
    assert max(mad(a, b) for a, b in zip(got, expected)) < 3


def test_keyframes_that_need_the_first_frame_are_read_with_a_primed_decoder(samples_dir, media):
    """After a seek on a decoder that has not decoded the file's first frame, cockatoo.mp4's later
    keyframes come out corrupt (the first packet's SEI names the x264 build, whose bugs FFmpeg works
    around only once it knows it). One seek on a fresh decoder tells (auto mode then goes straight
    to PyAV); the PyAV reader primes its decoder with the first frame before it seeks, and every
    frame equals a plain full decode: sparse, dense, in the last keyframe group."""
    from densecap.video.avsource import _AVSource

    for path, clean in ((samples_dir / "cockatoo.mp4", False), (media["multiscene"], True)):
        src = _AVSource(str(path), 2)
        try:
            assert src.seek_is_clean() is clean, path
        finally:
            src.close()
    path = samples_dir / "cockatoo.mp4"
    ref, times = reference_frames(path)
    wanted = [0, 40, 80, 97, 98, 99, 151, 200, 240, 278, 279]
    for backend in ("auto", "pyav"):
        with open_video(path, backend=backend) as r:
            assert r.backend == "pyav" and r._src.needs_prime and not r._forward
            assert r.num_frames == len(ref) == 280
            got = r.read_indices(wanted)
            assert r.frame_times(wanted) == pytest.approx([times[i] for i in wanted], abs=1e-6)
            assert max(mad(a, ref[i]) for a, i in zip(got, wanted)) == 0.0
            dense = r.read_indices(list(range(230, 250)))  # from the keyframe at 7.25 s (frame 145)
            assert max(mad(a, ref[i]) for a, i in zip(dense, range(230, 250))) == 0.0
            assert not r._forward  # priming was enough: it kept seeking


def test_keyframes_corrupt_even_for_a_primed_decoder_are_read_in_forward_passes(samples_dir, monkeypatch):
    """Should priming not help (simulated: priming does nothing, and the first read stays out of the
    first keyframe group, whose decoding would prime the decoder by itself), the read sees corrupt
    frames after its seeks, reads again in one pass from the start, and so does every later read:
    the frames are exact."""
    from densecap.video.avsource import _AVSource

    monkeypatch.setattr(_AVSource, "prime", lambda self: setattr(self, "_primed", True))
    path = samples_dir / "cockatoo.mp4"
    ref, _ = reference_frames(path)
    wanted = [97, 98, 99, 100, 151, 200, 278, 279]
    with open_video(path) as r:
        assert r.backend == "pyav" and r.num_frames == 280 and not r._forward
        got = r.read_indices(wanted)
        assert r._forward
        assert max(mad(a, ref[i]) for a, i in zip(got, wanted)) == 0.0
        again = r.read_indices([0, 5, 279])  # a second read: a second pass, same frames
        assert max(mad(a, ref[i]) for a, i in zip(again, [0, 5, 279])) == 0.0


def test_unclean_file_with_a_broken_tail_reads_with_stand_ins(samples_dir, tmp_path, caplog):
    """A primed file's table comes from its packets (checking the tail would cost half a full
    decode). When listed frames turn out not to decode (here: the file's last three packets
    overwritten), an earlier decoded frame stands in, with one warning naming the file."""
    path = tmp_path / "broken_tail.mp4"
    path.write_bytes((samples_dir / "cockatoo.mp4").read_bytes())
    with av.open(str(path)) as c:
        packets = sorted(((p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size), reverse=True)[:3]
    with path.open("r+b") as f:
        for pos, size in packets:
            f.seek(pos)
            f.write(b"\xff" * size)
    ref, ref_times = reference_frames(path)  # what does decode
    by_time = {round(t, 3): f for t, f in zip(ref_times, ref)}
    with caplog.at_level("WARNING", logger="densecap.video"), open_video(path) as r:
        assert r.num_frames == 280
        times = [round(t, 3) for t in r.frame_times(range(280))]
        broken = [i for i, t in enumerate(times) if t not in by_time]
        assert broken and broken[-1] == 279
        wanted = [100, 250, *broken]
        got = r.read_indices(wanted)
        assert r.read_indices([279]).shape == (1, 720, 1280, 3)  # again: one warning per reader
    assert mad(got[0], ref[100]) == 0.0 and mad(got[1], ref[250]) == 0.0
    for frame, i in zip(got[2:], broken):  # an earlier decodable frame, a few frames back at most
        earlier = [t for t in by_time if times[i] - 0.3 < t < times[i]]
        assert earlier and min(mad(frame, by_time[t]) for t in earlier) == 0.0
    warned = [rec.getMessage() for rec in caplog.records if "stands in" in rec.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0] and f"{len(broken)} listed frame(s)" in warned[0]


def test_realshort_metadata(samples_dir):
    for backend in ("auto", "pyav"):
        info = probe_video(samples_dir / "realshort.mp4", backend=backend)
        assert info.num_frames == 36
        assert (info.width, info.height) == (320, 240)
        assert info.fps == pytest.approx(30.02, abs=0.01)
        assert info.duration == pytest.approx(1.2, abs=0.01)


# --- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_read_at_times_real_times(samples_dir, backend):
    asked = [0.0, 0.26, 3.333, 7.0, 10.51, 13.94]
    with open_video(samples_dir / "cockatoo.mp4", backend=backend, max_side=320) as r:
        frames, idx, times = r.read_at(asked)
        half = 0.5 / r.info.fps
        assert frames.shape == (len(asked), 180, 320, 3) and frames.dtype == np.uint8
        for t, got in zip(asked, times):
            assert abs(got - t) <= half + 1e-6
        assert idx == [round(t * 20) for t in asked]  # 20 fps CFR: nearest frame
        assert times == r.frame_times(idx)
        assert idx[-1] == r.index_at([r.info.duration])[0] == 279


def test_index_at_nearest_and_ties(media):
    with open_video(media["multiscene"]) as r:  # 10 fps
        assert r.index_at([0.0, 0.04, 0.06, 0.05, 11.95, 12.0]) == [0, 0, 1, 0, 119, 119]


def test_max_side_resizes_at_decode(samples_dir):
    assert output_size_for(1280, 720, 448) == (448, 252)
    assert output_size_for(3840, 2160, 512) == (512, 288)
    assert output_size_for(720, 1280, 448) == (252, 448)
    assert output_size_for(1280, 720, None) == (1280, 720)
    assert output_size_for(320, 240, 448) == (320, 240)
    w, h = output_size_for(641, 359, 101)
    assert w % 2 == 0 and h % 2 == 0 and max(w, h) <= 101
    for backend in ("auto", "pyav"):
        with open_video(samples_dir / "cockatoo.mp4", backend=backend, max_side=448) as r:
            assert r.output_size == (448, 252)
            assert (r.info.width, r.info.height) == (1280, 720)  # info keeps the native size
            f = r.read_indices([0, 140])
            assert f.shape == (2, 252, 448, 3)
            assert f.shape[2] / f.shape[1] == pytest.approx(1280 / 720, rel=0.01)


def test_rotation_applied_like_decord(media):
    ref, _ = reference_frames(media["rotated"])
    assert ref[0].shape == (160, 120, 3)
    for backend in ("auto", "pyav", "decord"):
        with open_video(media["rotated"], backend=backend) as r:
            assert (r.info.width, r.info.height) == (120, 160)
            assert mad(r.read_indices([45])[0], ref[45]) < 1.0
        with open_video(media["rotated"], backend=backend, max_side=80) as r:
            assert r.output_size == (60, 80)
            assert r.read_indices([3]).shape == (1, 80, 60, 3)


def test_multiscene_frames_differ_between_scenes_and_match_pyav(media):
    ref, ref_t = reference_frames(media["multiscene"])
    assert len(ref) == 120
    idx = [85, 5, 45, 5]  # scenes 3, 1, 2; out of order with a repeat
    with open_video(media["multiscene"]) as r:
        assert r.backend == "decord"
        f = r.read_indices(idx)
        assert f.shape == (4, 120, 160, 3)
        for k, i in enumerate(idx):
            assert mad(f[k], ref[i]) < 1.0
        assert np.array_equal(f[1], f[3])
        assert mad(f[0], f[1]) > 20 and mad(f[0], f[2]) > 20 and mad(f[1], f[2]) > 20
        assert r.frame_times(idx) == pytest.approx([ref_t[i] for i in idx], abs=1e-6)
    with open_video(media["multiscene"], backend="pyav") as p:
        g = p.read_indices(idx)
        assert all(mad(g[k], ref[i]) < 1.0 for k, i in enumerate(idx))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_reads_every_frame_in_bounded_batches(media, backend):
    ref, _ = reference_frames(media["multiscene"])
    with open_video(media["multiscene"], backend=backend) as r:
        allf = r.read_indices(range(120))  # > one 32-frame decord batch
    assert max(mad(a, b) for a, b in zip(allf, ref)) < 1.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc")
def test_decord_does_no_work_between_reads(tmp_path):
    """decord 0.6.0 queues packets far ahead of its decoder while it seeks (issue 12). Left alone
    after ``get_batch`` returned, its thread went on decoding that backlog into RGB frames that
    nobody read: 0.6 s of CPU and +270 MB in 0.6 s of idling after reading 3 frames of this
    2-minute video, and peak memory that grew with the video's length. The reader stops it."""
    try:
        import media as M
    except ImportError:  # pragma: no cover
        from tests import media as M

    path = M.make_testsrc(tmp_path / "long.mp4", seconds=120)
    with open_video(path, backend="decord", max_side=336) as r:
        assert r.backend == "decord" and r.info.num_frames == 1200
        idx = r.index_at([k * 2.0 for k in range(60)])
        first = r.read_indices(idx[:3])  # frames 0, 20, 40: one keyframe group, most of the file left
        cpu0, rss0 = time.process_time(), _rss_mb()
        time.sleep(0.6)
        cpu, grown = time.process_time() - cpu0, _rss_mb() - rss0
        assert cpu < 0.15, f"the process used {cpu:.2f} s of CPU while idle after a read"
        assert grown < 30, f"RSS grew {grown:.0f} MB while idle after a read"
        # reads after the decoder was stopped still land on the right frames
        again = r.read_indices([idx[2], idx[1], idx[40]])
    with open_video(path, backend="pyav", max_side=336) as p:
        want = p.read_indices([idx[1], idx[2], idx[40]])
    assert mad(again[1], first[1]) == 0 and mad(again[0], first[2]) == 0
    assert mad(again[1], want[0]) < 1.0 and mad(again[0], want[1]) < 1.0 and mad(again[2], want[2]) < 1.0


def test_auto_sends_big_files_to_pyav(media, monkeypatch):
    """decord's read-ahead is bounded only by the end of the file: auto mode leaves files above
    DECORD_MAX_BYTES to PyAV (whose memory does not depend on the file)."""
    import densecap.video.settings as V

    ref, _ = reference_frames(media["multiscene"])
    size = media["multiscene"].stat().st_size
    assert V.DECORD_MAX_BYTES >= 32 * 2**20
    with open_video(media["multiscene"]) as r:
        assert r.backend == "decord"
    monkeypatch.setattr(V, "DECORD_MAX_BYTES", size - 1)
    with open_video(media["multiscene"]) as r:
        assert r.backend == "pyav" and r.info.num_frames == 120
        assert mad(r.read_indices([50])[0], ref[50]) < 1.0
    with open_video(media["multiscene"], backend="decord") as r:  # forcing decord still works
        assert r.backend == "decord"


def test_auto_picks_the_reader_by_access(media):
    """Sparse reads (keyframe candidates, keyframe images) go to PyAV, dense ones (training clips)
    to decord; both give the same frames."""
    ref, _ = reference_frames(media["multiscene"])
    with open_video(media["multiscene"], access="sparse") as s, open_video(media["multiscene"]) as d:
        assert (s.backend, d.backend) == ("pyav", "decord")
        assert s.num_frames == d.num_frames == len(ref)
        for a, b, i in zip(s.read_indices([0, 55, 119]), d.read_indices([0, 55, 119]), [0, 55, 119]):
            assert mad(a, ref[i]) < 1.0 and mad(b, ref[i]) < 1.0
    with open_video(media["multiscene"], backend="decord", access="sparse") as forced:
        assert forced.backend == "decord"  # a forced backend wins
    with pytest.raises(ValueError, match="access"):
        open_video(media["multiscene"], access="random")


def test_gif_falls_back_to_pyav(samples_dir):
    gif = samples_dir / "newtonscradle.gif"
    _, ref_t = reference_frames(gif)
    with open_video(gif) as r:
        assert r.backend == "pyav"
        assert r.info.num_frames == 36 == len(ref_t)
        times = r.frame_times(range(36))
        assert times == pytest.approx(ref_t, abs=1e-9)
        assert times[:3] == pytest.approx([0.0, 0.05, 0.07])  # variable frame durations
        assert r.info.duration == pytest.approx(0.82)
        f, idx, got = r.read_at([0.0, 0.4, 0.8])
        assert f.shape == (3, 150, 200, 3)
        assert all(abs(a - b) <= 0.03 for a, b in zip(got, [0.0, 0.4, 0.8]))
    with pytest.raises(VideoError, match="newtonscradle.gif"):
        open_video(gif, backend="decord")


@pytest.mark.parametrize("name,auto_backend", [("webm_vp9", "decord"), ("webm_vp8", "pyav")])
def test_webm_auto_matches_pyav(media, name, auto_backend):
    ref, ref_t = reference_frames(media[name])
    idx = [29, 3, 17, 0, 11, 24]
    with open_video(media[name], backend="pyav") as p, open_video(media[name]) as a:
        assert a.backend == auto_backend
        assert a.info.codec == ("vp9" if name == "webm_vp9" else "vp8")
        assert a.info.num_frames == p.info.num_frames == len(ref) == 30
        fa, fp = a.read_indices(idx), p.read_indices(idx)
        for k, i in enumerate(idx):
            assert mad(fa[k], fp[k]) < 1.0
            assert mad(fp[k], ref[i]) < 1.0
        assert a.frame_times(idx) == pytest.approx([ref_t[i] for i in idx], abs=1e-6)
    # decord itself agrees on these files too (VP8 goes to PyAV only as a precaution)
    with open_video(media[name], backend="decord") as d:
        assert all(mad(x, ref[i]) < 1.0 for x, i in zip(d.read_indices(idx), idx))


def test_live_webm_without_duration_uses_pyav(media):
    with pytest.raises(VideoError, match="decord"):
        open_video(media["webm_live"], backend="decord")
    ref, _ = reference_frames(media["webm_live"])
    with open_video(media["webm_live"]) as r:
        assert r.backend == "pyav" and r.info.num_frames == len(ref) == 40
        assert r.info.duration == pytest.approx(4.0)
        assert mad(r.read_indices([37])[0], ref[37]) < 1.0


def test_editlist_mp4_goes_to_pyav_with_real_frames(media):
    # decord counts the edit list's hidden leading packets as frames (times < 0) and then returns
    # frames from the wrong place; auto mode must notice and use PyAV
    ref, ref_t = reference_frames(media["editlist"])
    with open_video(media["editlist"]) as r:
        assert r.backend == "pyav"
        assert r.info.num_frames == len(ref)
        assert r.frame_times(range(len(ref))) == pytest.approx(ref_t, abs=1e-6)
        idx = [0, len(ref) // 2, len(ref) - 1]
        for f, i in zip(r.read_indices(idx), idx):
            assert mad(f, ref[i]) < 1.0


# --- failures ----------------------------------------------------------------------------------


def open_and_read_all(path, backend):
    with open_video(path, backend=backend) as r:
        r.read_indices(range(r.info.num_frames))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("name,reason", [
    ("missing", "file not found"),
    ("directory", "directory"),
    ("empty", "file is empty (0 bytes)"),
    ("random_bytes", "not a video file"),
    ("text_mp4", "not a video file"),
    ("audio_only", "not a video file (no video stream"),
    ("truncated_noindex", "stream is truncated or corrupt"),
    ("corrupt", "stream is truncated or corrupt"),
    ("zero_frames", "no decodable frames"),
])
def test_bad_inputs_raise_video_error(media, name, reason, backend):
    path = media[name]
    with pytest.raises(VideoError) as ei:
        open_and_read_all(path, backend)
    msg = str(ei.value)
    assert path.name in msg and reason in msg
    assert ei.value.path == str(path)


def test_forced_decord_bad_inputs_raise_video_error(media):
    for name in ("missing", "empty", "random_bytes", "audio_only", "zero_frames", "corrupt"):
        with pytest.raises(VideoError, match=media[name].name):
            open_and_read_all(media[name], "decord")


@pytest.mark.timeout(60)
def test_truncated_reports_only_decodable_frames(media):
    ref, _ = reference_frames(media["truncated"])
    for backend in ("auto", "pyav"):
        with open_video(media["truncated"], backend=backend) as r:
            n = r.info.num_frames
            assert 0 < n < 120
            assert n >= len(ref) - 2  # everything a straight decode gets (bar a cut-off last packet)
            assert r.info.duration <= 12.0 * 0.75
            f = r.read_indices(range(n))  # must neither hang nor fail
            assert f.shape[0] == n
            assert mad(f[n - 1], ref[n - 1]) < 1.0
            with pytest.raises(VideoError, match="out of range"):
                r.read_indices([n])
    with pytest.raises(VideoError, match="truncated.mp4"):
        open_video(media["truncated"], backend="decord")


def test_out_of_range_requests(media):
    r = open_video(media["static"])
    assert r.info.num_frames == 80 and r.info.duration == pytest.approx(8.0)
    for bad in ([-1], [80], [1.5], [True]):
        with pytest.raises(VideoError, match="static.mp4"):
            r.read_indices(bad)
    for bad in ([-0.5], [8.2], [math.nan], ["x"]):
        with pytest.raises(VideoError, match="static.mp4"):
            r.read_at(bad)
    assert r.read_indices([]).shape == (0, 120, 160, 3)
    r.close()
    r.close()  # idempotent
    with pytest.raises(VideoError, match="closed"):
        r.read_indices([0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        open_video("x.mp4", backend="opencv")
    with pytest.raises(ValueError, match="max_side"):
        open_video("x.mp4", max_side=0)


@pytest.mark.timeout(60)
def test_over_reported_frame_count_is_trimmed(media):
    # the container lists 120 frames but the last packets do not decode; decord would count them
    ref, ref_t = reference_frames(media["bad_tail"])
    assert len(ref) < 120
    for backend in ("auto", "pyav"):
        with open_video(media["bad_tail"], backend=backend) as r:
            assert r.backend == "pyav"  # auto: decord's table has holes at the end
            n = r.info.num_frames
            assert n == len(ref), backend
            assert r.frame_times(range(n)) == pytest.approx(ref_t, abs=1e-6)
            f = r.read_indices(range(n))
            assert max(mad(a, b) for a, b in zip(f, ref)) < 1.0
    # forced decord: the count is trimmed so no index past the decodable end reaches decord
    # (which could spin forever); reading may still fail on the bad packets, but clearly
    with open_video(media["bad_tail"], backend="decord") as r:
        n = r.info.num_frames
        assert n <= len(ref)
        try:
            assert r.read_indices(range(n)).shape[0] == n
        except VideoError as e:
            assert "bad_tail.mp4: stream is truncated or corrupt" in str(e)


def test_works_with_only_one_backend_installed(media, samples_dir, monkeypatch):
    import densecap.video.avsource as V
    import densecap.video.decord_reader as D

    ref, _ = reference_frames(media["multiscene"])
    monkeypatch.setattr(V, "_import_av", lambda: None)  # a decord-only install
    with open_video(media["multiscene"], max_side=80) as r:
        assert r.backend == "decord" and r.info.num_frames == 120 and r.info.codec is None
        assert r.output_size == (80, 60) and (r.info.width, r.info.height) == (160, 120)
    with open_video(media["multiscene"]) as r:
        assert mad(r.read_indices([50])[0], ref[50]) < 1.0
    with pytest.raises(VideoError, match="newtonscradle.gif"):
        open_video(samples_dir / "newtonscradle.gif")
    monkeypatch.undo()
    monkeypatch.setattr(D, "_import_decord", lambda: None)  # a PyAV-only install
    with open_video(media["multiscene"]) as r:
        assert r.backend == "pyav"
        assert mad(r.read_indices([50])[0], ref[50]) < 1.0
