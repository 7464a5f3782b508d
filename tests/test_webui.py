"""``t2v ui`` (t2v.webui): the page's handlers called directly, and the page itself driven in Debian's
Chromium with Playwright -- prompt, Expand (the tiny LLM's gibberish is rejected: "fallback", with the
reason), a bad setting shown in the page, Generate, the <video> served and the sidecar shown.

The browser test needs /usr/bin/chromium (Debian's ``chromium`` package; Playwright's own browser
download is not used), the ``playwright`` and ``gradio`` packages; it is skipped, saying which is
missing, without them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
from click.testing import CliRunner

from captioner.errors import CaptionerError
from t2v.expansion import load_expand_config
from t2v.generate import load_generate_config
from t2v.webui import (
    CONTROLS,
    GenerationSession,
    PageLimits,
    handle_expand,
    handle_generate,
    parse_limits,
    require_gradio,
    ui_command,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "A red fox trots through fresh snow at dawn."
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TINY = {"seed": 0, "num_inference_steps": 2, "guidance_scale": 5.0, "num_frames": 9, "height": 32, "width": 32}


def _values(**changes):
    return [changes.get(k, TINY[k]) for k, _ in CONTROLS]


@pytest.fixture(scope="module")
def configs(tmp_path_factory, t2v_tiny_models):
    """The tiny generate config (tiny://wan) and the tiny expansion config (tiny://llm), with their
    outputs and cache in a temporary folder."""
    root = tmp_path_factory.mktemp("webui")
    gen = load_generate_config("tiny", [f"out_dir={json.dumps(str(root / 'unused'))}"])
    exp = load_expand_config("tiny", [f"cache_dir={json.dumps(str(root / 'expand-cache'))}"])
    return gen, exp


# --------------------------------------------------------------------------------------------------
# without a browser


def test_handlers(configs, tmp_path):
    gen, exp = configs
    session = GenerationSession(gen, exp, tmp_path / "out", expand_ref="tiny")
    assert session.control_defaults() == TINY

    text, line, state, status = handle_expand(session, PROMPT)
    assert text == PROMPT and state["status"] == "fallback" and "English" in state["reason"]
    assert line.startswith("fallback · 9 words · ") and "/512 tokens" in line and "English" in line
    assert "preview" in status

    # a bad setting: the config model's message, naming the page's control; nothing is loaded or written
    *rest, status = handle_generate(session, PROMPT, True, state, *_values(num_frames=0))
    assert rest == [None] * 5 and status.startswith("error: invalid settings: Frames: ") and "greater than or equal to 1 (got 0)" in status
    *_, status = handle_generate(session, PROMPT, True, state, *_values(num_inference_steps="many"))
    assert "Steps: " in status and "integer" in status
    *_, status = handle_generate(session, PROMPT, True, state, *_values(num_frames=10))
    assert status.startswith("error: video shape (10 frames, 32x32)")
    assert "Traceback" not in status and session._pipeline is None and not (tmp_path / "out").exists()
    assert handle_generate(session, "  ", True, state, *_values())[-1] == "error: type a prompt first"

    # the previewed expansion is what the model gets, recorded in the sidecar as the CLI writes it
    path, rec, fed, line2, state2, status = handle_generate(session, PROMPT, True, state, *_values(seed=3))
    assert status.startswith("wrote ") and Path(path).is_file() and Path(path).parent.parent == tmp_path / "out"
    assert iio.imread(path, plugin="pyav").shape == (9, 32, 32, 3)
    assert rec == json.loads(Path(path).with_suffix(".json").read_text())
    assert rec["seed"] == 3 and rec["pipeline_prompt"] == fed == PROMPT and rec["settings"]["expand"] == "tiny"
    assert rec["expansion"] == state == state2 and line2 == line
    pipe = session._pipeline

    # the same request again: the finished video is reused; other settings: a new folder, same pipeline
    again = handle_generate(session, PROMPT, True, state, *_values(seed=3))
    assert again[0] == path and again[-1].startswith("reused")
    other = handle_generate(session, PROMPT, False, None, *_values(seed=3, num_inference_steps=1))
    assert other[0] != path and other[1]["expansion"] is None and other[1]["settings"]["num_inference_steps"] == 1
    assert other[3] == "not expanded (Expand the prompt is off)" and session._pipeline is pipe
    session.close()


def test_without_expansion_config(configs, tmp_path):
    gen, _ = configs
    session = GenerationSession(gen, None, tmp_path)
    assert not session.can_expand
    assert handle_expand(session, PROMPT)[-1].startswith("error: no expansion config")
    with pytest.raises(CaptionerError, match="invalid settings: Guidance: "):
        session.request_config(guidance_scale=-1)


class _Holder:
    """Holds a session's model lock from another thread (another user's request) until released."""

    def __init__(self, session):
        self.session, self.held, self.release = session, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with self.session.models():
            self.held.set()
            self.release.wait(30)

    def __enter__(self):
        self.thread.start()
        assert self.held.wait(10)
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(10)


def test_limits_are_checked_before_waiting_for_the_models(configs, tmp_path):
    """steps=100000 (or frames, size, videos, a huge prompt) is refused at once with a message naming
    the limit, even while another request holds the models; nothing is loaded or written."""
    gen, exp = configs
    session = GenerationSession(gen, exp, tmp_path / "out", limits=PageLimits(busy_wait_s=5))
    with _Holder(session):
        t0 = time.monotonic()
        *rest, status = handle_generate(session, PROMPT, False, None, *_values(num_inference_steps=100000))
        assert rest == [None] * 5 and status == ("error: over the page's limits: Steps 100000 > 100 (max_steps) "
                                                 "(t2v ui --limit KEY=VALUE sets them)")
        *_, status = handle_generate(session, PROMPT, False, None,
                                     *_values(num_frames=4001, height=4096, width=4096, num_inference_steps=101))
        for part in ("Steps 101 > 100 (max_steps)", "Frames 4001 > 257 (max_frames)", "Height 4096 > 1280 (max_height)",
                     "Width 4096 > 1280 (max_width)"):
            assert part in status
        *_, status = handle_generate(session, "a fox " * 1000, False, None, *_values())
        assert status == ("error: the prompt has 5999 characters; the page's limit is 2000 "
                          "(t2v ui --limit max_prompt_chars=N)")
        assert handle_expand(session, "a fox " * 1000)[-1].startswith("error: the prompt has 5999 characters")
        many = GenerationSession(gen.model_copy(update={"videos_per_prompt": 50}), None, tmp_path / "out")
        *_, status = handle_generate(many, PROMPT, False, None, *_values())
        assert "videos per request 50 > 4 (max_videos)" in status
        assert time.monotonic() - t0 < 5  # none of them waited for the models
    assert session._pipeline is None and not (tmp_path / "out").exists()


def test_a_busy_page_says_so_instead_of_waiting_forever(configs, tmp_path):
    gen, exp = configs
    session = GenerationSession(gen, exp, tmp_path / "out", limits=PageLimits(busy_wait_s=0.3))
    with _Holder(session):
        t0 = time.monotonic()
        *rest, status = handle_generate(session, PROMPT, False, None, *_values())
        assert rest == [None] * 5
        assert status.startswith("error: busy: another request is using the models (waited 0.3 s)")
        assert "try again" in status
        assert handle_expand(session, PROMPT)[-1].startswith("error: busy: ")
        assert time.monotonic() - t0 < 5
    assert session._pipeline is None


def test_a_generation_past_the_time_limit_is_stopped(configs, tmp_path):
    gen, _ = configs
    session = GenerationSession(gen, None, tmp_path / "out", limits=PageLimits(time_limit_s=1e-6))
    *rest, status = handle_generate(session, PROMPT, False, None, *_values(num_inference_steps=50))
    assert rest == [None] * 5
    assert status.startswith("error: time limit: the generation was stopped after denoising step 1, past the page's "
                             "limit of 1e-06 s per request") and "nothing was written" in status
    assert not list((tmp_path / "out").rglob("*.mp4")) and not list((tmp_path / "out").rglob("*.json"))
    # within the limit the same request is made, with the same pipeline
    pipe = session._pipeline
    session.limits = PageLimits()
    path, rec, *_, status = handle_generate(session, PROMPT, False, None, *_values())
    assert status.startswith("wrote ") and Path(path).is_file() and session._pipeline is pipe
    session.close()


def test_limits_from_the_command_line():
    assert parse_limits([]) == PageLimits()
    lim = parse_limits(["max_steps=20", "time_limit_s=60", "busy_wait_s=0"])
    assert (lim.max_steps, lim.time_limit_s, lim.busy_wait_s) == (20, 60.0, 0.0)
    with pytest.raises(CaptionerError, match=r"--limit: max_steps: .*greater than or equal to 1"):
        parse_limits(["max_steps=0"])
    with pytest.raises(CaptionerError, match=r"--limit: .*max_stepz.*limits: max_steps, "):
        parse_limits(["max_stepz=3"])


def test_gradio_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(CaptionerError, match=re.escape('pip install -e ".[ui]"')):
        require_gradio()


def test_ui_command(configs, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from t2v import webui

    launched = {}
    monkeypatch.setattr(webui, "launch_app", lambda app, **kw: launched.update(app=app, **kw))
    r = CliRunner().invoke(ui_command, ["--config", "tiny", "--expand-config", "tiny", "--out", str(tmp_path),
                                        "--port", "7999"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    session = launched["app"].t2v_session
    assert launched["port"] == 7999 and launched["host"] == "127.0.0.1" and launched["share"] is False
    assert session.can_expand and session.expand_ref == "tiny" and session.out_dir == tmp_path.resolve()

    assert session.limits == PageLimits()
    r = CliRunner().invoke(ui_command, ["--config", "tiny", "--no-expand", "--out", str(tmp_path),
                                        "--limit", "max_steps=8", "--limit", "time_limit_s=30"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert launched["app"].t2v_session.limits == PageLimits(max_steps=8, time_limit_s=30)
    r = CliRunner().invoke(ui_command, ["--config", "tiny", "--limit", "max_steps=-1"])
    assert r.exit_code == 1 and "error: --limit: max_steps: " in r.output and "Traceback" not in r.output

    r = CliRunner().invoke(ui_command, ["--config", "tiny", "--set", "num_frames=10"])
    assert r.exit_code == 1 and "error: video shape (10 frames" in r.output
    r = CliRunner().invoke(ui_command, ["--config", "tiny", "--no-expand", "--expand-config", "tiny"])
    assert r.exit_code == 2 and "exclude each other" in r.output


# --------------------------------------------------------------------------------------------------
# in the browser


def _browser_requirements() -> str | None:
    missing = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
    if missing:
        return f"needs the Python package(s) {', '.join(missing)} (pip install -e \".[dev]\")"
    if not CHROMIUM.exists():
        return f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(configs, tmp_path, monkeypatch):
    """The page on 127.0.0.1 (a free port); yields (url, out_dir)."""
    reason = _browser_requirements()
    if reason:
        pytest.skip(reason)
    from t2v.webui import build_app, launch_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    gen, exp = configs
    out = tmp_path / "out"
    app = build_app(gen, exp, out_dir=out, expand_ref="tiny")
    port = _free_port()
    launch_app(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", out
    finally:
        app.close()
        app.t2v_session.close()


def test_page_in_chromium(served):
    from playwright.sync_api import expect, sync_playwright

    url, out = served
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            field = {name: page.locator(f"#{name}").locator("textarea, input").first
                     for name in ("prompt", "expansion", "expansion-status", "status", "frames")}
            expect(field["frames"]).to_have_value("9")

            field["prompt"].fill(PROMPT)
            page.locator("#expand-button").click()
            expect(field["expansion-status"]).to_have_value(re.compile(r"^fallback · 9 words · .*English"),
                                                            timeout=60_000)
            expect(field["expansion"]).to_have_value(PROMPT)

            # a bad setting is shown in the status box
            field["frames"].fill("10")
            page.locator("#generate-button").click()
            expect(field["status"]).to_have_value(re.compile(r"^error: video shape \(10 frames"), timeout=30_000)
            expect(page.locator("#video video")).to_have_count(0)

            field["frames"].fill("9")
            page.locator("#generate-button").click()
            expect(field["status"]).to_have_value(re.compile(r"^wrote "), timeout=60_000)
            player = page.locator("#video video")
            expect(player).to_have_attribute("src", re.compile(r"\.mp4"))
            src = player.get_attribute("src")

            # the mp4 on disk is the CLI's, and the page serves those very bytes
            [mp4] = out.glob("*/000-*.mp4")
            assert iio.imread(mp4, plugin="pyav").shape == (9, 32, 32, 3)
            served_mp4 = page.request.get(src)
            assert served_mp4.ok and served_mp4.body() == mp4.read_bytes()
            page.wait_for_function("document.querySelector('#video video').readyState >= 1", timeout=30_000)
            duration = page.evaluate("document.querySelector('#video video').duration")
            assert duration == pytest.approx(9 / 8, abs=0.15)

            # the sidecar shown in the page records the expansion
            sidecar = json.loads(mp4.with_suffix(".json").read_text())
            assert sidecar["expansion"]["status"] == "fallback" and sidecar["pipeline_prompt"] == PROMPT
            shown = page.locator("#sidecar").inner_text()
            for needle in ("expansion", "fallback", "pipeline_prompt", mp4.name, "English"):
                assert needle in shown, needle
        finally:
            browser.close()
