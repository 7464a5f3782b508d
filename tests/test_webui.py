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
    handle_expand,
    handle_generate,
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
