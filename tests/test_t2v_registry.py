"""The family registry: a new model family is one ModelSpec subclass and one ``register_family`` line.

The fake family here is a Wan variant with its own recommended settings and pipeline-call argument;
once registered, the configs accept it, generation fills in its defaults and passes its arguments,
and a video comes out of the tiny Wan pipeline through it. Nothing outside the spec is told about it.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from captioner.errors import ConfigError
from t2v.families import check_family, family_names, get_family, register_family, unregister_family
from t2v.families.wan import WanSpec


class WanLikeSpec(WanSpec):
    name = "wanlike"
    generation_defaults = {**WanSpec.generation_defaults, "num_inference_steps": 3, "fps": 12.0}

    def pipeline_call_kwargs(self, settings):
        return {"max_sequence_length": 64}  # an argument WanPipeline.__call__ takes


@pytest.fixture
def wanlike():
    register_family(WanLikeSpec)
    yield WanLikeSpec
    unregister_family("wanlike")


def test_registry_lookup_and_names():
    assert family_names()[:3] == ("wan", "cogvideox", "ltx")
    assert isinstance(get_family("LTX"), type(get_family("ltx")))
    with pytest.raises(ValueError, match="unknown model family 'sdxl'; available: wan, cogvideox, ltx"):
        check_family("sdxl")


def test_a_registered_family_is_a_family_everywhere(wanlike):
    assert family_names() == ("wan", "cogvideox", "ltx", "wanlike")
    assert isinstance(get_family("WanLike"), WanLikeSpec)
    register_family(WanLikeSpec)  # the same class again: fine

    class Other(WanSpec):
        name = "wanlike"

    with pytest.raises(ValueError, match="'wanlike' is already registered"):
        register_family(Other)

    from t2v.cache import PrepareConfig
    from t2v.train import load_train_config

    assert load_train_config("tiny", ["model.family=wanlike", "model.id=tiny://wan"]).model.family == "wanlike"
    assert PrepareConfig.model_fields["model"].annotation(family="WANLIKE").family == "wanlike"
    with pytest.raises(ConfigError, match="unknown model family 'nope'; available: wan, cogvideox, ltx, wanlike"):
        load_train_config("tiny", ["model.family=nope"])


def test_generation_through_a_registered_family(wanlike, t2v_tiny_models, tmp_path):
    from t2v.generate import generate_videos, load_generate_config, resolved_settings

    cfg = load_generate_config("tiny", ["model.family=wanlike", "model.id=tiny://wan",
                                        "num_inference_steps=null", "fps=null"])
    settings = resolved_settings(cfg, "wanlike")
    assert (settings["num_inference_steps"], settings["fps"]) == (3, 12.0)  # the spec's defaults
    assert settings["extra_call_kwargs"] == {"max_sequence_length": 64}
    (video,) = generate_videos(cfg, ["A white cockatoo raises its crest."], tmp_path)
    assert not video.skipped and video.frames.shape == (9, 32, 32, 3)
    assert video.record["model"]["family"] == "wanlike"
    assert video.record["settings"]["extra_call_kwargs"] == {"max_sequence_length": 64}
    assert video.path.is_file()


def test_expansion_target_takes_a_registered_family(wanlike, t2v_tiny_models):
    from t2v.expansion import load_expand_config, target_budget

    cfg = load_expand_config("tiny", ["target.family=wanlike", "target.model=tiny://wan"])
    budget = target_budget(cfg)
    assert budget is not None and budget.max_tokens == WanSpec.max_text_tokens
    with pytest.raises(ConfigError, match="target.family: unknown model family 'nope'"):
        target_budget(load_expand_config("tiny", ["target.family=nope", "target.model=tiny://wan"]))


def test_cli_family_option_checks_the_registry(wanlike):
    from t2v.cli import cli

    r = CliRunner().invoke(cli, ["expand", "a cat", "--family", "nope"])
    assert r.exit_code == 2 and "unknown model family 'nope'" in r.output and "wanlike" in r.output
