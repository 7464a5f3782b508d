"""t2v.tiny: tiny random Wan / CogVideoX / LTX pipelines of the real diffusers classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from captioner.errors import ConfigError
from t2v import tiny
from t2v.tiny import TINY_FAMILIES, is_complete, make_tiny, resolve_t2v_model

PIPELINES = {"wan": "WanPipeline", "cogvideox": "CogVideoXPipeline", "ltx": "LTXPipeline"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny-model folder (``DENSECAP_TINY_DIR``) whose ``t2v`` subfolder holds the three pipelines."""
    root = tmp_path_factory.mktemp("tiny-t2v")
    make_tiny(root / "t2v")
    return root


@pytest.fixture()
def tiny_env(tiny_root, monkeypatch) -> Path:
    monkeypatch.setenv("DENSECAP_TINY_DIR", str(tiny_root))
    return tiny_root / "t2v"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _files(path: Path) -> dict[str, bytes]:
    """Every weight and tokenizer/config file of a build, by relative path (the marker aside)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.startswith(".densecap")
    }


# --------------------------------------------------------------------------------------------------
# building, caching


def test_make_tiny_layout(tiny_root):
    folder = tiny_root / "t2v"
    for family in TINY_FAMILIES:
        path = folder / family
        assert is_complete(path, family)
        assert not is_complete(path, "other")
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == PIPELINES[family]
        for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert (path / part).is_dir(), part
        assert _dir_size(path) < 2 * 1024 * 1024, f"{family} is {_dir_size(path)} bytes"
    assert not [p for p in folder.iterdir() if ".building-" in p.name]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_loads_with_plain_pipeline_and_generates(tiny_root, family):
    import diffusers

    cls = getattr(diffusers, PIPELINES[family])
    pipe = cls.from_pretrained(tiny_root / "t2v" / family)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt="A small boat sails on a quiet river at dawn.",
        negative_prompt="blurry",
        num_frames=9,
        height=32,
        width=64,
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    frames = out.frames
    assert frames.shape == (1, 9, 32, 64, 3)
    assert frames.min() >= 0.0 and frames.max() <= 1.0


def test_tokenizer_is_a_real_t5_tokenizer(tiny_root):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_root / "t2v" / "wan", subfolder="tokenizer")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("A dog runs along the river!").input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "A dog runs along the river!"
    assert 300 < len(tok) < 2000


def test_builds_are_deterministic(tiny_root, tmp_path):
    for family in TINY_FAMILIES:
        again = tiny._BUILDERS[family](tmp_path / "again" / family, seed=0)
        assert _files(again) == _files(tiny_root / "t2v" / family), family
    other = _files(tiny.build_tiny_wan(tmp_path / "seed1", seed=1))
    same = _files(tiny_root / "t2v" / "wan")
    assert other["tokenizer/tokenizer.json"] == same["tokenizer/tokenizer.json"]
    assert (
        other["transformer/diffusion_pytorch_model.safetensors"]
        != same["transformer/diffusion_pytorch_model.safetensors"]
    )


def test_make_tiny_skips_complete_and_redoes_incomplete(tmp_path, monkeypatch):
    calls: list[str] = []

    def fake(family):
        def build(path, seed=0):
            calls.append(family)
            return tiny._build_atomically(path, family, seed, lambda d: (d / "weights").write_text(family))

        return build

    monkeypatch.setattr(tiny, "_BUILDERS", {f: fake(f) for f in TINY_FAMILIES})
    paths = make_tiny(tmp_path)
    assert calls == list(TINY_FAMILIES) and set(paths) == set(TINY_FAMILIES)
    make_tiny(tmp_path)
    assert len(calls) == 3  # all complete: nothing rebuilt
    (paths["ltx"] / tiny._MARKER).unlink()  # an interrupted build has no marker
    make_tiny(tmp_path, families=["wan", "ltx"])
    assert calls[3:] == ["ltx"]
    make_tiny(tmp_path, force=True, families=["cogvideox"])
    assert calls[4:] == ["cogvideox"]
    with pytest.raises(ValueError, match="unknown tiny model family 'sdxl'"):
        make_tiny(tmp_path, families=["sdxl"])


# --------------------------------------------------------------------------------------------------
# references and CLI


def test_resolve_t2v_model(tiny_env, tmp_path, monkeypatch):
    assert resolve_t2v_model("tiny://wan") == str(tiny_env / "wan")
    assert resolve_t2v_model("tiny://ltx") == str(tiny_env / "ltx")
    with pytest.raises(ConfigError, match="unknown tiny model 'sdxl'"):
        resolve_t2v_model("tiny://sdxl")
    assert resolve_t2v_model("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    assert resolve_t2v_model("~/models") == str(tmp_path / "models")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_t2v_model("~/missing")


def test_default_tiny_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSECAP_TINY_DIR", str(tmp_path / "x"))
    assert tiny.default_tiny_root() == tmp_path / "x" / "t2v"


def test_cli_make_tiny(tiny_env, tmp_path):
    from t2v.cli import cli

    result = CliRunner().invoke(cli, ["make-tiny", "--family", "wan", "--family", "ltx"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"wan: {tiny_env / 'wan'}", f"ltx: {tiny_env / 'ltx'}"]
    result = CliRunner().invoke(cli, ["make-tiny", "--out", str(tiny_env), "--family", "cogvideox"])
    assert result.exit_code == 0 and result.output.strip() == f"cogvideox: {tiny_env / 'cogvideox'}"
    result = CliRunner().invoke(cli, ["make-tiny", "--family", "sdxl"])
    assert result.exit_code != 0 and "sdxl" in result.output
