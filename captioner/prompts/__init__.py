"""Prompt files: versioned YAML templates shipped with the package or supplied by the user.

``load_prompts("diffsw-v1")`` reads the built-in file ``captioner/prompts/diffsw-v1.yaml``;
``load_prompts("my/prompts.yaml")`` reads a user's file. Every file must carry a ``version`` that
is recorded in the outputs, so captions made with different wording are never mixed up silently.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml

from densecap.errors import ConfigError

BUILTIN_DIR = Path(__file__).parent

# Sections and keys every DiffSW prompt file must define, with the placeholders each may use.
DIFFSW_SCHEMA: dict[str, dict[str, set[str]]] = {
    "first_frame": {"system": set(), "user": {"time"}},
    "differential": {
        "system": set(),
        "user": {"pair_layout", "t_start", "t_end", "context"},
        "two_images": set(),
        "stacked": set(),
        "context": {"t_prev", "t_start", "previous"},
    },
    "summary": {
        "system": set(),
        "user": {"duration", "time", "first_caption", "differences"},
        "difference_line": {"t_start", "t_end", "text"},
    },
}


def builtin_prompt_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_prompt_file(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    candidate = BUILTIN_DIR / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and candidate.is_file():
        return candidate
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise ConfigError(
        f"prompt file {text!r} not found; use a path to a YAML file or a built-in name: "
        + ", ".join(builtin_prompt_names())
    )


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def load_prompts(name_or_path: str | Path, schema: dict[str, dict[str, set[str]]] = DIFFSW_SCHEMA) -> dict[str, Any]:
    """Load and check a prompt file against ``schema``; errors name the file and the key."""
    path = resolve_prompt_file(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'version' and prompt sections")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ConfigError(f"{path}: missing 'version' (a non-empty string recorded in every output)")
    for section, keys in schema.items():
        block = data.get(section)
        if not isinstance(block, dict):
            raise ConfigError(f"{path}: missing section {section!r} (needs keys: {', '.join(sorted(keys))})")
        for key, allowed in keys.items():
            template = block.get(key)
            if not isinstance(template, str):
                raise ConfigError(f"{path}: {section}.{key} must be a string")
            unknown = _placeholders(template) - allowed
            if unknown:
                raise ConfigError(
                    f"{path}: {section}.{key} uses unknown placeholder(s) {sorted(unknown)}; "
                    f"allowed: {sorted(allowed) or 'none'}"
                )
    data["_path"] = str(path)
    return data
