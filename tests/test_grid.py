"""Grid mode: sampling times, grid geometry and labels, and one model call per video."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from captioner.backends.base import ChatBackend
from captioner.diffsw import run_sessions
from captioner.grid import (
    BACKGROUND,
    GridConfig,
    GridSession,
    caption_grid,
    grid_shape,
    grid_session,
    grid_times,
    load_grid_prompts,
    make_grid,
    read_grid_frames,
)
from densecap.video import open_clip, open_video

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200), (240, 240, 240)]


class RecordingBackend(ChatBackend):
    name = "recording"

    def __init__(self):
        self.calls = []

    def generate(self, conversations, *, max_new_tokens=None):
        self.calls.append((list(conversations), max_new_tokens))
        return [f" grid caption {i} " for i in range(len(conversations))]

    def describe(self):
        return {"backend": self.name}

    @property
    def supports_images(self):
        return True


def _frames(n, size=(64, 32)):
    return [Image.new("RGB", size, COLORS[i % len(COLORS)]) for i in range(n)]


@pytest.fixture(scope="module")
def prompts():
    return load_grid_prompts()


def test_grid_shape():
    assert grid_shape(1) == (1, 1)
    assert grid_shape(4) == (2, 2)
    assert grid_shape(7) == (3, 3)
    assert grid_shape(10) == (3, 4)
    assert grid_shape(5, columns=5) == (1, 5)
    assert grid_shape(3, columns=8) == (1, 3)  # never more columns than tiles
    assert grid_shape(5, columns=2) == (3, 2)


def test_grid_geometry_and_reading_order():
    cfg = GridConfig(tile_max_side=100, gap=4, label=False)
    frames = _frames(5)  # 64x32: tiles of 100x50, 3 columns x 2 rows
    grid = make_grid(frames, [0, 1, 2, 3, 4], cfg)
    assert grid.size == (3 * 100 + 4 * 4, 2 * 50 + 3 * 4)
    for i in range(5):
        r, c = divmod(i, 3)
        x0, y0 = 4 + c * 104, 4 + r * 54
        # the whole tile is the frame (aspect kept, so no letterbox), in reading order
        for dx, dy in ((0, 0), (99, 49), (50, 25)):
            assert grid.getpixel((x0 + dx, y0 + dy)) == COLORS[i]
        assert grid.getpixel((x0 - 1, y0)) == BACKGROUND  # the gap
    assert grid.getpixel((4 + 2 * 104 + 50, 4 + 54 + 25)) == BACKGROUND  # the empty sixth cell


def test_grid_of_portrait_frames_and_mixed_aspects():
    cfg = GridConfig(tile_max_side=80, gap=0, label=False, columns=2)
    portrait = make_grid(_frames(2, size=(30, 60)), [0, 1], cfg)
    assert portrait.size == (2 * 40, 80)
    # a wide frame in a portrait grid is scaled to fit and centred (its aspect kept)
    mixed = make_grid([Image.new("RGB", (30, 60), COLORS[0]), Image.new("RGB", (60, 30), COLORS[1])], [0, 1], cfg)
    assert mixed.size == (80, 80)
    # second tile: x 40..79; the 60x30 frame becomes 40x20, centred vertically at y 30..49
    assert mixed.getpixel((60, 40)) == COLORS[1]
    assert mixed.getpixel((60, 10)) == BACKGROUND and mixed.getpixel((60, 70)) == BACKGROUND


def test_labels_are_drawn_in_each_tiles_corner():
    frames, times = _frames(4, size=(160, 90)), [0.0, 2.0, 4.0, 6.5]
    plain = np.asarray(make_grid(frames, times, GridConfig(tile_max_side=160, gap=2, label=False)))
    labelled = np.asarray(make_grid(frames, times, GridConfig(tile_max_side=160, gap=2, label=True)))
    assert plain.shape == labelled.shape
    for i in range(4):
        r, c = divmod(i, 2)
        x0, y0 = 2 + c * 162, 2 + r * 92
        corner = (slice(y0, y0 + 20), slice(x0, x0 + 70))
        diff = np.any(plain[corner] != labelled[corner], axis=-1)
        assert diff.mean() > 0.3  # a label box with text
        assert tuple(labelled[y0 + 1, x0 + 1]) == (0, 0, 0)  # the dark backing box
        white = np.all(labelled[corner] > 200, axis=-1)
        assert white.sum() > 20  # light text on it
        # the rest of the tile is untouched
        assert np.array_equal(plain[y0 + 40 : y0 + 90, x0 : x0 + 160], labelled[y0 + 40 : y0 + 90, x0 : x0 + 160])
    # different timestamps draw different labels
    a = make_grid(frames[:1], [0.0], GridConfig(tile_max_side=160))
    b = make_grid(frames[:1], [7.0], GridConfig(tile_max_side=160))
    assert a.tobytes() != b.tobytes()


def test_grid_times_interval_and_num_frames():
    assert grid_times(14.0, GridConfig()) == [0, 2, 4, 6, 8, 10, 12]
    assert grid_times(4.0, GridConfig()) == [0, 2]  # strictly before the end
    assert grid_times(1.2, GridConfig()) == [0]
    # too many for max_frames: that many, spread from the first to the last frame
    times = grid_times(60.0, GridConfig(interval=1.0, max_frames=16))
    assert len(times) == 16 and times[0] == 0 and times[-1] == 60.0
    assert np.allclose(np.diff(times), 4.0)
    assert grid_times(8.0, GridConfig(num_frames=5)) == [0, 2, 4, 6, 8]
    assert len(grid_times(8.0, GridConfig(num_frames=40, max_frames=9))) == 9
    assert grid_times(8.0, GridConfig(num_frames=1)) == [0]


def test_read_grid_frames_returns_real_frame_times(samples_dir):
    cfg = GridConfig(tile_max_side=64)
    with open_video(samples_dir / "cockatoo.mp4", max_side=64) as reader:  # 20 fps, 14 s
        frames, times = read_grid_frames(reader, cfg)
        assert times == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        assert len(frames) == 7 and max(frames[0].size) == 64
        frames, times = read_grid_frames(reader, GridConfig(num_frames=3))
        last = reader.frame_times([reader.num_frames - 1])[0]
        assert times == [0.0, 7.0, last] and last == pytest.approx(13.95)
        expected = reader.read_indices([0, 140, reader.num_frames - 1])
        assert all(np.array_equal(np.asarray(f), e) for f, e in zip(frames, expected))
        session = grid_session(reader, GridConfig(num_frames=3))
        assert session.indices == [0, 140, reader.num_frames - 1] and session.times == times
    with open_video(samples_dir / "realshort.mp4") as reader:  # 30 fps, 1.2 s
        _, times = read_grid_frames(reader, GridConfig(num_frames=4))
        real = reader.frame_times(range(reader.num_frames))
        assert len(times) == 4 and all(t in real for t in times)
        assert times[0] == 0.0 and times[-1] == real[-1]


def test_read_grid_frames_drops_repeated_frames(samples_dir):
    with open_clip(samples_dir / "realshort.mp4", 0.0, 0.1) as clip:  # 4 frames at 30 fps
        frames, times = read_grid_frames(clip, GridConfig(num_frames=8))
        assert clip.num_frames == 4
        assert times == clip.frame_times(range(4))  # each frame once, in order
    assert len(frames) == 4


def test_grid_session_makes_one_call_with_one_image(prompts):
    cfg = GridConfig(tile_max_side=48, max_new_tokens=99)
    frames, times = _frames(3), [0.0, 2.0, 4.0]
    session = GridSession(frames, times, 5.5, prompts, cfg)
    backend = RecordingBackend()
    run_sessions([session], backend)
    assert session.done and session.summary == "grid caption 0"
    ((convs, max_new),) = backend.calls
    assert len(convs) == 1 and max_new == 99
    system, user = convs[0]
    assert system.role == "system" and not system.has_images
    assert user.images == [session.grid]
    text = user.text
    assert "grid of 3 frames" in text and "00:05.5 long" in text and "2 rows of 2" in text
    assert "1 at 00:00.0; 2 at 00:02.0; 3 at 00:04.0" in text
    assert session.model_calls == {"first": 0, "diff": 0, "summary": 1}
    assert session.ready_requests() == []


def test_grid_sessions_of_many_videos_share_one_call(prompts):
    cfg = GridConfig(tile_max_side=32)
    sessions = [GridSession(_frames(n), [float(i) for i in range(n)], float(n), prompts, cfg) for n in (1, 4, 6)]
    backend = RecordingBackend()
    run_sessions(sessions, backend)
    assert [len(c) for c, _ in backend.calls] == [3]
    assert [s.summary for s in sessions] == ["grid caption 0", "grid caption 1", "grid caption 2"]


def test_grid_session_rejects_mismatched_times(prompts):
    with pytest.raises(ValueError):
        GridSession(_frames(2), [0.0], 2.0, prompts, GridConfig())


def test_caption_grid_with_the_tiny_vlm(samples_dir, tiny_models):
    from captioner.backends import HFBackendConfig, build_backend

    backend = build_backend(HFBackendConfig(model=str(tiny_models["vlm"]), device="cpu", dtype="float32"))
    try:
        cfg = GridConfig(num_frames=4, tile_max_side=56, max_new_tokens=12)
        grid, times, text = caption_grid(samples_dir / "cockatoo.mp4", cfg, backend)
    finally:
        backend.close()
    assert text.strip()
    assert len(times) == 4 and times[0] == 0.0
    assert grid.size == (2 * 56 + 3 * cfg.gap, 2 * 32 + 3 * cfg.gap)  # 1280x720 -> 56x32 tiles (decoded even)
