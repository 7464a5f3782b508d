"""Prompt expansion: short user prompts -> detailed captions in the style of the training captions.

    from captioner.expand import ExpandConfig, Expander
    with Expander(cfg) as expander:
        result = expander.expand_one("a cat on a windowsill, time-lapse")
        result.text, result.status, result.tokens

``t2v`` resolves the video model whose tokenizer bounds the length (``t2v.expansion.load_expander``,
``t2v expand``, ``t2v generate --expand``). See :mod:`captioner.expand.expander` for the steps.
"""

from captioner.expand.budget import TokenBudget, split_sentences
from captioner.expand.checks import check_expansion, clean_answer
from captioner.expand.config import (
    ChecksConfig,
    ExamplesConfig,
    ExpandConfig,
    TargetConfig,
)
from captioner.expand.examples import Example, ExampleIndex
from captioner.expand.expander import EXPAND_SCHEMA, Expander, Expansion, ExpansionCache

__all__ = [
    "EXPAND_SCHEMA",
    "ChecksConfig",
    "Example",
    "ExampleIndex",
    "ExamplesConfig",
    "ExpandConfig",
    "Expander",
    "Expansion",
    "ExpansionCache",
    "TargetConfig",
    "TokenBudget",
    "check_expansion",
    "clean_answer",
    "split_sentences",
]
