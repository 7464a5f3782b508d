"""Shared pieces of the pydantic config models: strict models, YAML loading, CLI overrides."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from densecap.assets import configs_dir
from densecap.errors import CaptionerError, ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _candidates(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (one for a plain field, several for a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found.extend(_candidates(arg))
    return found


def _tag_of(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    return field.default if field is not None else None


def _walk_loc(root: type[BaseModel] | None, loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """Follow an error location through the models; returns the user-facing key path (union tags
    such as ``hf`` dropped) and the model that holds the last key."""
    keys: list[str] = []
    models = [root] if root is not None else []
    holder: type[BaseModel] | None = root
    for part in loc:
        tagged = [m for m in models if _tag_of(m) == part and str(part) not in m.model_fields]
        if tagged:  # a discriminated-union tag in the location, not a key the user wrote
            models = tagged
            continue
        keys.append(str(part))
        holder = next((m for m in models if str(part) in m.model_fields), models[0] if models else None)
        field = holder.model_fields.get(str(part)) if holder is not None else None
        models = _candidates(field.annotation) if field is not None else []
    return keys, holder


def _format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        keys, holder = _walk_loc(model, tuple(e["loc"]))
        key = ".".join(keys) or "<root>"
        kind = e["type"]
        if kind == "extra_forbidden":
            allowed = sorted(holder.model_fields) if holder is not None else []
            msg = "unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
        elif kind == "literal_error":
            expected = (e.get("ctx") or {}).get("expected", "")
            msg = f"got {e.get('input')!r}; allowed: {expected}"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            ctx = e.get("ctx") or {}
            tags = ctx.get("expected_tags", "")
            got = ctx.get("tag")
            msg = (f"type {got!r} is not supported" if got is not None else "missing 'type'") + f"; allowed types: {tags}"
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (so ``0.9``, ``true``, ``[1, 2]`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. keyframes.threshold=0.9")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def _fill_missing_sections(data: dict, full: dict, keys: list[str]) -> dict | None:
    """Copy default sections into ``data`` along ``keys``; returns the key's parent section if it
    was filled from defaults (not written by the user), else None."""
    node, ref, filled = data, full, None
    for part in keys[:-1]:
        if not isinstance(ref, dict):
            return None
        ref = ref.get(part)
        if part not in node and isinstance(ref, dict):
            node[part] = dict(ref)
            filled = node[part]
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            return None
        node = nxt
    return node if filled is not None else None


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
) -> M:
    """Build ``model`` from a YAML file (or ``base``/defaults) plus ``KEY=VALUE`` overrides.

    Errors name the file (or ``command line``), the key and what is allowed.
    """
    data: dict = dict(base or {})
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of keys at the top level, got {type(loaded).__name__}")
        data = loaded
    try:
        validated = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, model, source)) from None
    if not overrides:
        return validated
    # An override of a section the file leaves out starts from that section's defaults.
    full = validated.model_dump(mode="json")
    for text in overrides:
        keys, value = parse_override(text)
        filled = _fill_missing_sections(data, full, keys)
        if filled is not None and keys[-1] == "type" and filled.get("type") != value:
            filled.clear()  # switching a section's kind: the old kind's defaults do not apply
        _set_path(data, keys, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, model, source + " with --set overrides")) from None


def flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": value}`` (for comparing settings key by key and naming what changed)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten_dict(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# ---------------------------------------------------------------------------------------------------
# presets

try:  # the presets: the checkout's configs/, or the copy inside an installed wheel
    CONFIGS_DIR = configs_dir()
except FileNotFoundError:  # a broken install: files given by path still work, presets say they are missing
    CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config(command: str, value: str | None) -> Path | None:
    """``--config`` takes a file path or a preset name (``tiny`` -> ``configs/<command>/tiny.yaml``).

    A value that looks like a path (it has a ``/``, starts with ``~`` or ends in ``.yaml``/``.yml``) is
    a file. A bare name is the preset of that name, even when a file of that name is in the working
    directory (write ``./tiny`` for the file; the choice is logged at --verbose); a bare name that is
    no preset is a file when one exists."""
    if value is None:
        return None
    value = os.fspath(value)
    path = Path(value).expanduser()
    seps = tuple(s for s in (os.sep, os.altsep, "/") if s)
    if any(s in value for s in seps) or value.startswith("~") or value.endswith((".yaml", ".yml")):
        return path
    preset = CONFIGS_DIR / command / f"{value}.yaml"
    if preset.is_file():
        if path.is_file():
            logging.getLogger(__name__).info(
                "--config %s: the preset %s (not the file %s in the working directory: write ./%s for it)",
                value, preset, path, value)
        return preset
    if path.is_file():
        return path
    known = sorted(p.stem for p in (CONFIGS_DIR / command).glob("*.yaml"))
    raise CaptionerError(
        f"config {value!r}: no such file, and no preset of that name for '{command}'"
        + (f" (presets: {', '.join(known)})" if known else "")
    )
