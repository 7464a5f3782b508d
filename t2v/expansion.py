"""Prompt expansion for a given video model: resolves the expansion config's ``target`` (family + model)
into the pipeline's own tokenizer and text-encoder limit, then hands over to :mod:`captioner.expand`.

    from t2v.expansion import load_expander
    with load_expander("tiny") as expander:          # configs/expand/tiny.yaml, or a YAML path
        print(expander.expand_one("a red fox in the snow").text)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from captioner.expand import ExpandConfig, Expander, TokenBudget
from densecap.errors import ConfigError

__all__ = ["expand_for_generation", "load_expand_config", "load_expander", "target_budget"]


def load_expand_config(config: str | Path, overrides: Sequence[str] = ()) -> ExpandConfig:
    """An expansion config from a YAML path or a preset name (``configs/expand/<name>.yaml``)."""
    from densecap.config import load_config, resolve_config

    return load_config(ExpandConfig, resolve_config("expand", str(config)), list(overrides))


def target_budget(cfg: ExpandConfig, family: str | None = None, model_id: str | None = None,
                  revision: str | None = None) -> TokenBudget | None:
    """The token budget of the target pipeline: its ``tokenizer`` subfolder and the family's text-encoder
    limit (``target.max_tokens`` overrides it). ``family``/``model_id`` (from a generation config) win
    over the config's ``target``; an explicit ``target.tokenizer`` is used as it is."""
    from t2v.families import get_family
    from t2v.tiny import resolve_t2v_model

    t = cfg.target
    family = family or t.family
    model_id = model_id or t.model
    if t.tokenizer and not (family and model_id):
        return None  # captioner's Expander loads target.tokenizer itself
    if not family:
        return None
    try:
        spec = get_family(family)
    except ValueError as e:
        raise ConfigError(f"target.family: {e}") from None
    model_id = model_id or spec.default_model_id
    max_tokens = t.max_tokens or spec.max_text_tokens
    path = resolve_t2v_model(model_id)
    budget = TokenBudget.from_pretrained(path, max_tokens, subfolder="tokenizer", revision=revision or t.revision)
    budget.name = f"{model_id}/tokenizer"
    return budget


def load_expander(config: str | Path | ExpandConfig, overrides: Sequence[str] = (), *, family: str | None = None,
                  model_id: str | None = None, revision: str | None = None) -> Expander:
    """An :class:`~captioner.expand.Expander` whose budget is the target video model's tokenizer."""
    cfg = config if isinstance(config, ExpandConfig) else load_expand_config(config, overrides)
    return Expander(cfg, budget=target_budget(cfg, family, model_id, revision))


def expand_for_generation(config_ref: str, prompts: list[str], *, family: str, model_id: str,
                          overrides: Sequence[str] = (), revision: str | None = None) -> list[dict]:
    """Expand ``prompts`` for the video model ``family``/``model_id``; one dict per prompt (the
    :class:`~captioner.expand.Expansion` fields; ``text`` is what the pipeline gets)."""
    with load_expander(config_ref, overrides, family=family, model_id=model_id, revision=revision) as expander:
        return [e.to_dict() for e in expander.expand(list(prompts))]
