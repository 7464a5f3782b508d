"""Model cards (``README.md``) of trained outputs: YAML front matter that the Hugging Face Hub reads
(base model, library, tags), a body, and the run's every setting as a YAML block, so a card says how
to load the result and how it was made."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["model_card", "settings_block"]


def settings_block(settings: dict[str, Any]) -> str:
    """``settings`` as a fenced YAML block, keys in the config's order."""
    return "```yaml\n" + yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).rstrip() + "\n```\n"


def model_card(*, base_model: str, library: str, tags: list[str], body: str, settings: dict[str, Any]) -> str:
    """The card: front matter, ``body`` (markdown, from its title on), then a ``## Settings`` section."""
    front = yaml.safe_dump({"base_model": base_model, "library_name": library, "tags": list(tags)},
                           sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n{body.rstrip()}\n\n## Settings\n\n{settings_block(settings)}"
