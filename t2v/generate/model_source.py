"""What a generate config's ``model`` section names, checked before anything is loaded: the trainer run
folder (``base_model.json``), the LoRA file, the fine-tuned transformer folder, the base pipeline
reference (``tiny://NAME`` built on first use) and the attention backend's requirements."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densecap.files import file_sha256
from t2v.generate.config import GenerateConfig, GenerateError, resolved_settings

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE, as t2v.lora writes it


@dataclass(frozen=True)
class ResolvedModel:
    """What a config's ``model`` section names, checked: ``path`` is what ``from_pretrained`` gets
    (a tiny model's folder, a local folder, or the hub id), ``lora`` the LoRA's safetensors file."""

    family: str
    id: str
    revision: str | None
    path: str
    run: Path | None = None
    lora: Path | None = None
    lora_scale: float = 1.0
    transformer: Path | None = None

    def record(self) -> dict[str, Any]:
        """The model, LoRA and transformer entries of a sidecar (the LoRA's sha256 included)."""
        local = Path(self.path)
        return {
            "model": {"family": self.family, "id": self.id, "revision": self.revision,
                      "local_path": str(local.resolve()) if local.exists() else None,
                      "run": str(self.run) if self.run else None},
            "lora": ({"path": str(self.lora), "scale": self.lora_scale, "sha256": file_sha256(self.lora)}
                     if self.lora else None),
            "transformer": str(self.transformer) if self.transformer else None,
        }


def _read_run(run: str) -> tuple[dict[str, Any], Path]:
    """A trainer output folder's ``base_model.json`` (checked) and the folder."""
    folder = Path(run).expanduser().resolve()
    if not folder.is_dir():
        raise GenerateError(f"model.run: {folder} is not a folder")
    path = folder / "base_model.json"
    if not path.is_file():
        raise GenerateError(f"model.run: {path} not found: {folder} is not a `t2v train` output folder")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GenerateError(f"{path}: unreadable ({e})") from None
    missing = [k for k in ("model_id", "family", "output") if not isinstance(info, dict) or k not in info]
    if missing:
        raise GenerateError(f"{path}: missing {', '.join(missing)} (not written by `t2v train`?)")
    if info["output"] not in ("lora", "transformer"):
        raise GenerateError(f"{path}: output must be lora or transformer, got {info['output']!r}")
    return info, folder


def _run_source(cfg: GenerateConfig) -> tuple[str, str, str | None, Path | None, Path | None, Path | None]:
    """(family, id, revision, run folder, lora path, transformer path) from the config, the run's
    ``base_model.json`` taking the place of family / id / revision when ``model.run`` is set."""
    m = cfg.model
    if m.run is None:
        from t2v.families import get_family

        family = m.family
        model_id = m.id or get_family(family).default_model_id
        return family, model_id, m.revision, None, None, None
    info, folder = _read_run(m.run)
    src = folder / "base_model.json"
    for key, theirs in (("family", info["family"]), ("id", info["model_id"]), ("revision", info.get("revision"))):
        mine = getattr(m, key)
        if mine is not None and mine != theirs:
            raise GenerateError(f"model.{key} is {mine!r} but the run was trained from {theirs!r} ({src}); "
                                f"leave model.{key} unset with model.run")
    if info["output"] == "lora":
        lora = folder / "lora"
        if not (lora / LORA_FILE).is_file():
            raise GenerateError(f"model.run: {lora / LORA_FILE} not found: the run has not finished (the LoRA is "
                                "written at the end of training; continue it with t2v train --resume latest)")
        return info["family"], info["model_id"], info.get("revision"), folder, lora, None
    transformer = folder / "transformer"
    if not transformer.is_dir():
        raise GenerateError(f"model.run: {transformer} not found: the run has not finished (the transformer is "
                            "written at the end of training; continue it with t2v train --resume latest)")
    return info["family"], info["model_id"], info.get("revision"), folder, None, transformer


def _lora_file(path: Path) -> Path:
    """The LoRA's safetensors file: ``path`` itself, or the folder's ``pytorch_lora_weights.safetensors``
    (or its only ``.safetensors`` file); its keys are checked to be LoRA weights."""
    if not path.exists():
        raise GenerateError(f"model.lora: {path} does not exist")
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if (path / LORA_FILE).is_file():
            path = path / LORA_FILE
        elif len(found) == 1:
            path = found[0]
        elif found:
            raise GenerateError(f"model.lora: {path} holds no {LORA_FILE} and several .safetensors files "
                                f"({', '.join(p.name for p in found)}); name the file")
        else:
            raise GenerateError(f"model.lora: {path} holds no .safetensors file (expected {LORA_FILE})")
    elif path.suffix != ".safetensors":
        raise GenerateError(f"model.lora: {path} is not a .safetensors file (diffusers' LoRA format)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types for damaged files
        raise GenerateError(f"model.lora: {path} is not a readable safetensors file ({e})") from None
    if not keys:
        raise GenerateError(f"model.lora: {path} holds no weights")
    bad = [k for k in keys if "lora" not in k]
    if bad:
        raise GenerateError(f"model.lora: {path} is not a LoRA (weight {bad[0]!r} is not a lora_A/lora_B weight)")
    return path


def _check_transformer_folder(path: Path, spec) -> Path:
    """A ``save_pretrained`` folder of the family's transformer class."""
    expected = spec.classes()["transformer"].__name__
    config = path / "config.json"
    if not path.is_dir():
        raise GenerateError(f"model.transformer: {path} is not a folder")
    if not config.is_file():
        raise GenerateError(f"model.transformer: {config} not found: not a saved transformer folder")
    try:
        name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise GenerateError(f"model.transformer: {config} is unreadable ({e})") from None
    if name != expected:
        raise GenerateError(f"model.transformer: {path} holds a {name}, not the {spec.name} family's {expected}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise GenerateError(f"model.transformer: {path} holds no weights (*.safetensors)")
    return path


def _check_pipeline_folder(path: str, spec) -> None:
    """A local pipeline folder must be the family's pipeline (from its ``model_index.json``)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        if Path(path).is_dir():
            raise GenerateError(f"model.id: {path} holds no model_index.json: not a diffusers pipeline folder")
        return
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise GenerateError(f"model.id: {index} is unreadable ({e})") from None
    if name != spec.pipeline_class_name:
        raise GenerateError(f"model.id: {path} is a {name}, not a {spec.pipeline_class_name} "
                            f"(model.family: {spec.name})")


def resolve_model(cfg: GenerateConfig) -> ResolvedModel:
    """Check everything that can be checked without loading a model and say what will be loaded.

    In order: the run folder (``base_model.json``), the video shape (the family's ``check_shape``), the
    attention backend's requirements, the LoRA file and transformer folder, then the base model
    reference (``tiny://NAME`` is built here on first use; a local folder must be the family's pipeline).
    """
    from t2v.families import get_family
    from t2v.tiny import resolve_t2v_model

    family, model_id, revision, run, lora, transformer = _run_source(cfg)
    spec = get_family(family)
    s = resolved_settings(cfg, family)
    try:
        spec.check_shape(s["num_frames"], s["height"], s["width"])
    except ValueError as e:
        raise GenerateError(f"video shape ({s['num_frames']} frames, {s['height']}x{s['width']}): {e}") from None
    _check_attention_requirements(cfg.attention_backend)
    if cfg.model.lora is not None:
        lora = Path(cfg.model.lora).expanduser().resolve()
    if lora is not None:
        lora = _lora_file(lora)
    if cfg.model.transformer is not None:
        transformer = Path(cfg.model.transformer).expanduser().resolve()
    if transformer is not None:
        transformer = _check_transformer_folder(transformer, spec)
    path = resolve_t2v_model(model_id)
    _check_pipeline_folder(path, spec)
    return ResolvedModel(family=family, id=model_id, revision=revision, path=path, run=run, lora=lora,
                         lora_scale=cfg.model.lora_scale, transformer=transformer)


def _check_attention_requirements(name: str) -> None:
    """Fail now, not after loading, when the backend's package is missing (diffusers' own check)."""
    try:
        from diffusers.models.attention_dispatch import (
            AttentionBackendName,
            _check_attention_backend_requirements,
        )
    except ImportError:  # a diffusers without the check: set_attention_backend will report it
        return
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ValueError) as e:
        raise GenerateError(f"attention_backend: {e}") from None
