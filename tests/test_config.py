"""Config validation: errors name the file, the key and what is allowed; overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.configbase import load_config, parse_override
from captioner.errors import ConfigError
from captioner.prompts import load_prompts

ROOT = Path(__file__).resolve().parent.parent


def _caption_config():
    from captioner.caption import CaptionConfig

    return CaptionConfig


def test_every_shipped_config_validates():
    """Every preset of every command loads into its config model (real model ids are not fetched)."""
    from captioner.caption import CaptionConfig
    from captioner.corpus import RunConfig
    from captioner.expand import ExpandConfig
    from captioner.expand.finetune import TrainExpanderConfig
    from captioner.filter import FilterConfig
    from captioner.keyframes import KeyframeConfig
    from captioner.pairs import PairsConfig
    from captioner.resummary import SummarizeConfig
    from t2v.cache import PrepareConfig
    from t2v.generate import GenerateConfig
    from t2v.train_config import TrainConfig

    models = {"caption": CaptionConfig, "keyframes": KeyframeConfig, "run": RunConfig, "filter": FilterConfig,
              "summarize": SummarizeConfig, "pairs": PairsConfig, "expand": ExpandConfig,
              "train-expander": TrainExpanderConfig, "prepare": PrepareConfig, "train": TrainConfig,
              "generate": GenerateConfig}
    shipped = {p.name for p in (ROOT / "configs").iterdir() if p.is_dir()} - {"accelerate"}
    assert shipped == set(models), f"configs without a test here: {sorted(shipped - set(models))}"
    found = 0
    for command, model in models.items():
        presets = sorted((ROOT / "configs" / command).glob("*.yaml"))
        assert any(p.stem == "tiny" for p in presets), f"configs/{command} lacks a tiny preset"
        for path in presets:
            load_config(model, path)
            found += 1
    assert found >= 28


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("keyframes:\n  intervall: 2.0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(_caption_config(), cfg)
    msg = str(exc.value)
    assert str(cfg) in msg
    assert "keyframes.intervall" in msg
    assert "unknown key" in msg and "interval" in msg.split("allowed keys here:")[1]


def test_wrong_literal_lists_allowed_values(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("diffsw:\n  pair_mode: sidebyside\n")
    with pytest.raises(ConfigError) as exc:
        load_config(_caption_config(), cfg)
    msg = str(exc.value)
    assert "diffsw.pair_mode" in msg and "'two_images'" in msg and "'stacked'" in msg and "sidebyside" in msg


def test_wrong_type_and_range(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("keyframes:\n  interval: -1\ncaptioner:\n  type: hf\n  model: x\n  batch_size: many\n")
    with pytest.raises(ConfigError) as exc:
        load_config(_caption_config(), cfg)
    msg = str(exc.value)
    assert "keyframes.interval: Input should be greater than 0" in msg
    assert "captioner.batch_size:" in msg and "'many'" in msg


def test_unknown_backend_type(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("captioner:\n  type: llamacpp\n  model: x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(_caption_config(), cfg)
    msg = str(exc.value)
    assert "captioner: type 'llamacpp' is not supported" in msg and "'hf'" in msg and "'openai'" in msg


def test_overrides_apply_and_are_validated(tmp_path):
    cfg = load_config(_caption_config(), None, ["keyframes.threshold=0.8", "diffsw.previous_context=false"])
    assert cfg.keyframes.threshold == 0.8 and cfg.diffsw.previous_context is False
    with pytest.raises(ConfigError) as exc:
        load_config(_caption_config(), None, ["keyframes.treshold=0.8"])
    assert "--set" in str(exc.value) and "keyframes.treshold: unknown key" in str(exc.value)


def test_override_of_a_section_the_file_omits_starts_from_defaults(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("keyframes:\n  interval: 1.5\n")
    cfg = load_config(_caption_config(), cfg_file, ["captioner.batch_size=2"])
    assert cfg.keyframes.interval == 1.5
    assert cfg.captioner.batch_size == 2 and cfg.captioner.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    # Switching the backend kind drops the old kind's defaults; what the new kind needs is asked for.
    with pytest.raises(ConfigError, match="captioner.model: Field required"):
        load_config(_caption_config(), cfg_file, ["captioner.type=openai"])
    cfg = load_config(_caption_config(), cfg_file, ["captioner.type=openai", "captioner.model=m"])
    assert cfg.captioner.type == "openai" and cfg.captioner.max_in_flight == 8


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(_caption_config(), tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_caption_config(), bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_caption_config(), broken)


def test_prompt_files_are_checked(tmp_path):
    assert load_prompts("diffsw-v1")["version"] == "diffsw-v1"
    bad = tmp_path / "p.yaml"
    bad.write_text("version: mine\nfirst_frame: {system: s, user: 'at {when}'}\n")
    with pytest.raises(ConfigError) as exc:
        load_prompts(bad)
    assert str(bad) in str(exc.value) and "when" in str(exc.value)
    with pytest.raises(ConfigError, match="built-in name"):
        load_prompts("no-such-prompts")
