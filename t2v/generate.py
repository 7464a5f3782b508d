"""Text-to-video generation with a family's diffusers pipeline: ``t2v generate``.

    t2v generate --config CFG (--prompt TEXT ... | --prompts FILE) [--out DIR] [--run DIR | --lora PATH]

The model is the family's pipeline class (``WanPipeline``, ``CogVideoXPipeline``, ``LTXPipeline``) loaded
with ``from_pretrained`` from a hub id, a local folder or ``tiny://NAME``, optionally with

* a fine-tuned transformer (``model.transformer``: a folder saved by ``t2v train`` in full mode,
  loaded with the family's transformer class and handed to ``from_pretrained(transformer=...)``);
* a LoRA in diffusers' format (``model.lora``: a folder holding ``pytorch_lora_weights.safetensors`` or
  a ``.safetensors`` file), loaded with ``load_lora_weights`` and weighted with ``set_adapters``;
* or a trainer output folder (``model.run``): its ``base_model.json`` gives family, id and revision,
  and its ``lora/`` or ``transformer/`` is used as above.

For every prompt the pipeline runs with a fresh ``torch.Generator(device).manual_seed(seed)`` (the same
seed for every prompt, so a prompt's video does not depend on its position in the list; with
``videos_per_prompt: N``, N videos per prompt with seeds ``seed`` ... ``seed+N-1``, files ``-seedS``) and
``output_type="np"``; the frames go to ``OUT/{i:03d}-{slug}.mp4`` and a JSON sidecar of the same stem
records the prompt, the prompt actually fed to the pipeline (after an optional expansion), the model,
LoRA (with the sha256 of its file), every setting, timings and library versions.

Resuming. The sidecar is written last (mp4 first, both atomically), so it marks a finished video. A
prompt whose mp4 and sidecar exist and whose sidecar was made with the same *content settings* is
skipped: the prompt, the seed, the model (family, id, revision, the LoRA's sha256 and scale, the
transformer folder), frames, size, steps, guidance, negative prompt, fps, dtypes, the family's extra
call arguments and the expansion config (and, without an expansion config, the text fed to the
pipeline). Settings that change how, not what, is computed (device, CPU offload, VAE tiling and
slicing, attention backend) are recorded but not compared. A sidecar made with other content settings
is an error naming the file, unless ``overwrite`` is set.

Shapes are checked with the family's :meth:`~t2v.families.base.ModelSpec.check_shape`, and paths,
LoRA files and attention backends are checked, before any model is loaded.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from densecap.config import StrictModel, flatten_dict
from densecap.errors import CaptionerError
from densecap.files import file_sha256, write_json_atomic
from densecap.paths import check_output_dir
from t2v.videoio import write_mp4

__all__ = [
    "FAMILY_DEFAULTS",
    "GenerateConfig",
    "GenerateError",
    "GenerateModelConfig",
    "GeneratedVideo",
    "ResolvedModel",
    "generate_videos",
    "load_generate_config",
    "load_pipeline",
    "pipeline_kwargs",
    "file_sha256",
    "generator_device",
    "read_prompts",
    "resolve_device",
    "resolve_model",
    "resolved_settings",
    "run_pipeline",
    "slugify",
]

log = logging.getLogger(__name__)

Dtype = Literal["float32", "bfloat16", "float16"]
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE, as t2v.lora writes it
ADAPTER_NAME = "t2v_lora"
SIDECAR_VERSION = 1

class _FamilyDefaults(Mapping):
    """Family name -> the settings its authors recommend: a read-only view of the registry (each
    spec's ``generation_defaults``; see the family modules for the sources)."""

    def __getitem__(self, family: str) -> dict[str, Any]:
        from t2v.families import get_family

        try:
            return dict(get_family(family).generation_defaults)
        except ValueError:
            raise KeyError(family) from None

    def __iter__(self):
        from t2v.families import family_names

        return iter(family_names())

    def __len__(self) -> int:
        from t2v.families import family_names

        return len(family_names())


FAMILY_DEFAULTS: Mapping[str, dict[str, Any]] = _FamilyDefaults()

# settings compared when deciding whether an existing video can be kept (see the module doc)
_CONTENT_SETTINGS = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt",
                     "fps", "dtype", "vae_dtype", "extra_call_kwargs", "expand")


class GenerateError(CaptionerError):
    """Generation cannot run: a bad setting, a missing or invalid model / LoRA / transformer, a prompts
    file that cannot be read, an output that would overwrite another generation's."""


# ----------------------------------------------------------------------------------------------
# config


class GenerateModelConfig(StrictModel):
    """The model to generate with: a base pipeline, optionally a LoRA or a fine-tuned transformer, or a
    trainer output folder (``run``) that names both."""

    family: str | None = Field(
        None, description="a registered model family (t2v.families); with run: taken from the run's base_model.json")
    id: str | None = Field(
        None, description="hub id, local folder or tiny://NAME; default: the family's default (or the run's)")
    revision: str | None = None
    run: str | None = Field(None, description="a `t2v train` output folder (base_model.json + lora/ or transformer/)")
    lora: str | None = Field(None, description="LoRA in diffusers format: a folder or a .safetensors file")
    lora_scale: float = Field(1.0, description="weight of the LoRA (set_adapters)")
    transformer: str | None = Field(None, description="a fine-tuned transformer folder (t2v train, full mode)")

    @field_validator("family")
    @classmethod
    def _registered_family(cls, v):
        from t2v.families import check_family

        return v if v is None else check_family(v)

    @model_validator(mode="after")
    def _check_source(self) -> GenerateModelConfig:
        if self.run is None and self.family is None:
            from t2v.families import family_names

            raise ValueError(f"give model.family ({', '.join(family_names())}) or model.run (a `t2v train` output folder)")
        if self.run is not None and (self.lora is not None or self.transformer is not None):
            raise ValueError("model.run brings its own lora/ or transformer/: leave model.lora and "
                             "model.transformer unset")
        return self


def _attention_backends() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(m.value for m in AttentionBackendName)


class GenerateConfig(StrictModel):
    """``t2v generate``'s settings. Generation settings left ``null`` take the family's recommended
    value (the family spec's ``generation_defaults``)."""

    model: GenerateModelConfig
    seed: int = Field(0, ge=0, description="the generator seed of every prompt")
    videos_per_prompt: int = Field(1, ge=1, le=1000, description="videos per prompt, with seeds seed, seed+1, ...")
    num_frames: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    negative_prompt: str | None = None
    fps: float | None = Field(None, gt=0, description="frame rate of the written mp4 (LTX: also told to the model)")
    dtype: Dtype = Field("bfloat16", description="dtype the pipeline is loaded in")
    vae_dtype: Dtype | None = Field(None, description="dtype of the VAE; default: dtype")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N")
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_backend: str = Field("native", description="diffusers attention backend; native = PyTorch SDPA")
    overwrite: bool = False
    out_dir: str = "outputs"
    expand: str | None = Field(None, description="prompt-expansion config (path or preset); null: no expansion")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("attention_backend")
    @classmethod
    def _check_attention(cls, v: str) -> str:
        v = v.strip().lower()
        known = _attention_backends()
        if v not in known:
            public = [k for k in known if not k.startswith("_")]
            raise ValueError(f"unknown attention backend {v!r}; the installed diffusers accepts: {', '.join(public)} "
                             "(and variants whose names start with _, e.g. _native_flash)")
        if v == "xformers" and importlib.util.find_spec("xformers") is None:
            raise ValueError("attention backend 'xformers' needs the xformers package (pip install xformers), "
                             "which is not installed; use native (PyTorch SDPA)")
        return v


def load_generate_config(config: str | os.PathLike | None, overrides: Sequence[str] = ()) -> GenerateConfig:
    """The config from a YAML file or a ``configs/generate/`` preset name, plus ``KEY=VALUE`` overrides."""
    from densecap.config import load_config, resolve_config

    if config is None:
        raise GenerateError("give --config (a YAML file, or a preset: tiny, wan, cogvideox, ltx)")
    return load_config(GenerateConfig, resolve_config("generate", str(config)), list(overrides))


def process_share() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of this process when started by ``accelerate launch`` or
    ``torchrun`` (their ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), ``(0, 1, 0)`` otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return 0, 1, 0
    if world < 1 or not 0 <= rank < world:
        return 0, 1, 0
    return rank, world, local


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; others unchanged (checked to exist). Under a
    multi-process launch, ``auto`` and ``cuda`` mean this process's GPU (``cuda:LOCAL_RANK``)."""
    import torch

    _, world, local = process_share()
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenerateError(f"device: {device}, but torch sees no CUDA device (use cpu or auto)")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise GenerateError(f"device: {device}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolved_settings(cfg: GenerateConfig, family: str) -> dict[str, Any]:
    """Every generation setting with the family's defaults filled in (plain JSON data)."""
    from t2v.families import get_family

    spec = get_family(family)
    defaults = spec.generation_defaults
    s: dict[str, Any] = {}
    for key in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "fps"):
        value = getattr(cfg, key)
        s[key] = defaults[key] if value is None else value
    s["guidance_scale"] = float(s["guidance_scale"])
    s["fps"] = float(s["fps"])
    s["negative_prompt"] = cfg.negative_prompt
    s["dtype"] = cfg.dtype
    s["vae_dtype"] = cfg.vae_dtype or cfg.dtype
    s["extra_call_kwargs"] = spec.pipeline_call_kwargs(s)
    s["expand"] = cfg.expand
    s["device"] = cfg.device
    s["cpu_offload"] = cfg.cpu_offload
    s["vae_tiling"] = cfg.vae_tiling
    s["vae_slicing"] = cfg.vae_slicing
    s["attention_backend"] = cfg.attention_backend
    return s


# ----------------------------------------------------------------------------------------------
# the model: base pipeline, run folder, LoRA, transformer


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






# ----------------------------------------------------------------------------------------------
# loading


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_pipeline(cfg: GenerateConfig, resolved: ResolvedModel | None = None, *, progress_bar: bool = False):
    """The family's diffusers pipeline for ``cfg``, ready to call.

    ``from_pretrained(path, torch_dtype=dtype, revision=...)`` of the family's pipeline class, with the
    fine-tuned transformer (``transformer=``) and a VAE in ``vae_dtype`` when they are set; then the LoRA
    (``load_lora_weights`` + ``set_adapters`` at ``lora_scale``), the device or CPU offload, VAE tiling
    and slicing, the attention backend, and the per-step progress bar (off unless ``progress_bar``).
    ``resolved``: the result of :func:`resolve_model` (made here when not given).
    """
    import diffusers

    from t2v.families import get_family

    resolved = resolved or resolve_model(cfg)
    spec = get_family(resolved.family)
    device = resolve_device(cfg.device)
    if cfg.cpu_offload != "none" and not device.startswith("cuda"):
        raise GenerateError(f"cpu_offload: {cfg.cpu_offload} moves weights between the CPU and a GPU; "
                            f"device {device} has none (use cpu_offload: none)")
    cls = getattr(diffusers, spec.pipeline_class_name)
    dtype = _torch_dtype(cfg.dtype)
    vae_dtype = _torch_dtype(cfg.vae_dtype or cfg.dtype)
    rev = {"revision": resolved.revision} if resolved.revision else {}
    kw: dict[str, Any] = {_pipeline_dtype_arg(): dtype, **rev}
    if resolved.transformer is not None:
        kw["transformer"] = _load_transformer(spec, resolved.transformer, dtype)
    try:
        if vae_dtype != dtype:
            vae_cls = spec.classes()["vae"]
            kw["vae"] = vae_cls.from_pretrained(resolved.path, subfolder="vae", torch_dtype=vae_dtype, **rev)
        pipe = cls.from_pretrained(resolved.path, **kw)
    except (OSError, ValueError) as e:
        raise GenerateError(f"model.id {resolved.id}: cannot load the {spec.pipeline_class_name} ({e})") from None
    spec.after_pipeline_load(pipe, dtype, vae_dtype)
    if resolved.lora is not None:
        _load_lora(pipe, resolved)
    if cfg.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif cfg.cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if cfg.vae_tiling:
        pipe.vae.enable_tiling()
    if cfg.vae_slicing:
        pipe.vae.enable_slicing()
    _set_attention_backend(pipe.transformer, cfg.attention_backend)
    pipe.set_progress_bar_config(disable=not progress_bar, leave=False)
    return pipe


def _pipeline_dtype_arg() -> str:
    """``dtype`` where the installed diffusers' ``DiffusionPipeline.from_pretrained`` takes it (it warns
    on ``torch_dtype`` from 0.42), ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _load_transformer(spec, folder: Path, dtype):
    cls = spec.classes()["transformer"]
    try:
        return cls.from_pretrained(str(folder), torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise GenerateError(f"model.transformer: {folder}: cannot load the {cls.__name__} ({e})") from None


def _load_lora(pipe, resolved: ResolvedModel) -> None:
    """``load_lora_weights`` of the LoRA file, then ``set_adapters`` with the configured scale; a LoRA
    that matches no layer of the pipeline is an error (diffusers only warns)."""
    path = resolved.lora
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER_NAME)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise GenerateError(f"model.lora: {path}: cannot load it into the {type(pipe).__name__} ({e})") from None
    loaded = {name for names in pipe.get_list_adapters().values() for name in names}
    if ADAPTER_NAME not in loaded:
        raise GenerateError(f"model.lora: {path}: none of its weights fits a layer of the {type(pipe).__name__} "
                            f"({resolved.family} family): a LoRA of another model?")
    pipe.set_adapters([ADAPTER_NAME], adapter_weights=[float(resolved.lora_scale)])


def _set_attention_backend(transformer, name: str) -> None:
    """``set_attention_backend(name)``; an error when the transformer's attention processors do not go
    through diffusers' backend dispatch (CogVideoX's always use PyTorch SDPA) and ``name`` is not native."""
    from diffusers.utils import logging as dlogging

    processors = [m.processor for m in transformer.modules() if getattr(m, "processor", None) is not None]
    if not any(hasattr(p, "_attention_backend") for p in processors):
        if name != "native":
            raise GenerateError(f"attention_backend: {name}: the attention of {type(transformer).__name__} always "
                                "runs on PyTorch SDPA (it does not dispatch through diffusers' attention "
                                "backends); use native")
        return
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # "attention backends are an experimental feature" on every call
    try:
        transformer.set_attention_backend(name)
    except (RuntimeError, ValueError) as e:
        raise GenerateError(f"attention_backend: {e}") from None
    finally:
        dlogging.set_verbosity(level)


# ----------------------------------------------------------------------------------------------
# one pipeline call


def pipeline_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """The pipeline-call arguments for resolved ``settings`` (see :func:`resolved_settings`), other than
    the prompt and the generator: shape, steps, guidance, negative prompt, ``output_type="np"`` and the
    family's extra arguments (its spec's ``pipeline_call_kwargs``)."""
    return {
        "negative_prompt": settings["negative_prompt"],
        "num_frames": settings["num_frames"],
        "height": settings["height"],
        "width": settings["width"],
        "num_inference_steps": settings["num_inference_steps"],
        "guidance_scale": settings["guidance_scale"],
        "output_type": "np",
        **settings["extra_call_kwargs"],
    }


def generator_device(pipe) -> str:
    """Where the pipeline runs (the GPU under CPU offload), which is where its generator is made."""
    return str(getattr(pipe, "_execution_device", None) or pipe.device)


def run_pipeline(pipe, prompt: str, kwargs: dict[str, Any], seed: int, device: str | None = None) -> np.ndarray:
    """One video: ``pipe(prompt=prompt, generator=torch.Generator(device).manual_seed(seed), **kwargs)``;
    returns its frames (F, H, W, 3), float in [0, 1], as the pipeline made them. ``device``: where the
    pipeline runs (default: :func:`generator_device`, which walks the pipeline's modules)."""
    import torch

    generator = torch.Generator(device or generator_device(pipe)).manual_seed(int(seed))
    out = pipe(prompt=prompt, generator=generator, **kwargs)
    return np.asarray(out.frames[0])


# ----------------------------------------------------------------------------------------------
# prompts


def slugify(text: str, n: int = 40) -> str:
    """A file-name-safe short form of ``text``: lower case, runs of other characters as ``-``, at most
    ``n`` characters (``prompt`` when nothing is left)."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].strip("-") or "prompt"


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: one per line (blank lines and lines starting with ``#`` skipped), or, for a
    ``.jsonl`` file, one JSON object per line with a ``prompt`` string. Errors name the file and line."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenerateError(f"{p}: prompts file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenerateError(f"{p}: cannot read the prompts file ({e})") from None
    prompts: list[str] = []
    jsonl = p.suffix.lower() == ".jsonl"
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or (not jsonl and stripped.startswith("#")):
            continue
        if not jsonl:
            prompts.append(stripped)
            continue
        try:
            row = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise GenerateError(f"{p}:{no}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise GenerateError(f"{p}:{no}: expected a JSON object with a \"prompt\" key")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise GenerateError(f"{p}:{no}: \"prompt\" must be a non-empty string, got {row['prompt']!r}")
        prompts.append(row["prompt"].strip())
    if not prompts:
        raise GenerateError(f"{p}: no prompts in the file")
    return prompts


def _expand(cfg: GenerateConfig, prompts: list[str], family: str, model_id: str,
            revision: str | None = None) -> list[dict[str, Any]]:
    """Expansions of ``prompts`` for this video model (:func:`t2v.expansion.expand_for_generation`: the
    pipeline's own tokenizer bounds their length)."""
    from t2v import expansion

    result = expansion.expand_for_generation(cfg.expand, list(prompts), family=family, model_id=model_id,
                                             overrides=(), revision=revision)
    return _check_expansions(result, len(prompts), f"expand ({cfg.expand})")


def _check_expansions(expansions: Any, n: int, source: str) -> list[dict[str, Any]]:
    items = list(expansions) if expansions is not None else []
    if len(items) != n:
        raise GenerateError(f"{source}: {len(items)} expansions for {n} prompts")
    for i, e in enumerate(items):
        if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not e["text"].strip():
            raise GenerateError(f"{source}: expansion {i} must be a dict with a non-empty \"text\", got {e!r}")
    return items


# ----------------------------------------------------------------------------------------------
# outputs and resuming


@dataclass
class GeneratedVideo:
    """One prompt's result. ``frames``: the pipeline's output (F, H, W, 3), float in [0, 1], before mp4
    encoding (``None`` when skipped); ``record``: the sidecar's content."""

    index: int
    prompt: str
    pipeline_prompt: str | None
    path: Path
    sidecar: Path
    skipped: bool
    seed: int = 0
    assigned: bool = True  # False: another process of a multi-process launch makes this video
    frames: np.ndarray | None = None
    seconds: float | None = None
    record: dict[str, Any] = field(default_factory=dict)


def _resume_key(rec: dict[str, Any]) -> dict[str, Any]:
    """The part of a sidecar that decides the video's content (see the module doc)."""
    settings = rec.get("settings") or {}
    lora = rec.get("lora")
    model = rec.get("model") or {}
    key = {
        "prompt": rec.get("prompt"),
        "seed": rec.get("seed"),
        "model": {k: model.get(k) for k in ("family", "id", "revision")},
        "lora": {"sha256": lora.get("sha256"), "scale": lora.get("scale")} if isinstance(lora, dict) else None,
        "transformer": rec.get("transformer"),
        "settings": {k: settings.get(k) for k in _CONTENT_SETTINGS},
    }
    if not settings.get("expand"):
        key["pipeline_prompt"] = rec.get("pipeline_prompt")
    return key




def _is_done(mp4: Path, sidecar: Path, planned: dict[str, Any], overwrite: bool) -> bool:
    """True when ``mp4`` and ``sidecar`` hold this very video; raises when they hold another
    generation's (unless ``overwrite``). Without a sidecar the video is unfinished: made again."""
    if overwrite or not sidecar.is_file():
        return False
    try:
        old = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GenerateError(f"{sidecar}: an unreadable sidecar is in the way ({e}); remove it or pass "
                            "--overwrite") from None
    then, now = flatten_dict(_resume_key(old if isinstance(old, dict) else {})), flatten_dict(_resume_key(planned))
    diffs = [f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in sorted(set(then) | set(now))
             if then.get(k) != now.get(k)]
    if diffs:
        raise GenerateError(f"{sidecar}: holds a video generated with other settings ("
                            + "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")
                            + "); pass --overwrite (overwrite: true) to replace it, or choose another --out")
    return mp4.is_file()


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_json_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    """Versions of Python and the libraries that make the video (looked up once per process)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "densecap-t2v"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _prompt_tokens(pipe, text: str) -> int | None:
    """Tokens of ``text`` in the pipeline's tokenizer (special tokens included), None without one."""
    tok = getattr(pipe, "tokenizer", None)
    if tok is None:
        return None
    try:
        return len(tok(text, add_special_tokens=True)["input_ids"])
    except Exception:  # noqa: BLE001 -- only informative
        return None


def _plan(cfg: GenerateConfig, prompts: list[str], out: Path, expansions: list[dict] | None,
          model_rec: dict[str, Any], settings: dict[str, Any]) -> list[GeneratedVideo]:
    """One :class:`GeneratedVideo` per prompt and seed (``videos_per_prompt`` seeds from ``seed`` on; the
    file stem gets ``-seedN`` when there are several) with its file names, those already done marked
    skipped (with their sidecar as record); raises for a sidecar of other settings (see :func:`_is_done`)."""
    videos = []
    n = cfg.videos_per_prompt
    for i, prompt in enumerate(prompts):
        fed = expansions[i]["text"] if expansions is not None else prompt
        for seed in range(cfg.seed, cfg.seed + n):
            stem = f"{i:03d}-{slugify(prompt)}" + (f"-seed{seed}" if n > 1 else "")
            planned = {"prompt": prompt, "pipeline_prompt": fed, "seed": seed, **model_rec, "settings": settings}
            mp4, sidecar = out / f"{stem}.mp4", out / f"{stem}.json"
            done = _is_done(mp4, sidecar, planned, cfg.overwrite)
            record = json.loads(sidecar.read_text(encoding="utf-8")) if done else {}
            videos.append(GeneratedVideo(index=i, prompt=prompt, pipeline_prompt=record.get("pipeline_prompt"),
                                         path=mp4, sidecar=sidecar, skipped=done, record=record, seed=seed))
    return videos


def _sidecar(v: GeneratedVideo, fed: str, expansion: dict | None, frames: np.ndarray, seconds: float,
             tokens: int | None, *, cfg: GenerateConfig, spec, device: str, model_rec: dict[str, Any],
             settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON sidecar of one generated video."""
    return {
        "sidecar_version": SIDECAR_VERSION,
        "file": v.path.name,
        "prompt": v.prompt,
        "pipeline_prompt": fed,
        "expansion": expansion,
        "seed": v.seed,
        "generator_device": device,
        "process": dict(zip(("rank", "world_size"), process_share()[:2])),
        **model_rec,
        "settings": settings,
        "negative_prompt": settings["negative_prompt"],
        "frames": int(frames.shape[0]),
        "fps": settings["fps"],
        "duration_s": round(frames.shape[0] / settings["fps"], 6),
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "prompt_tokens": tokens,
        "max_text_tokens": spec.max_text_tokens,
        "truncated": bool(tokens is not None and tokens > spec.max_text_tokens),
        "seconds": round(seconds, 6),
        "versions": dict(_versions()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def generate_videos(
    cfg: GenerateConfig,
    prompts: Sequence[str],
    out_dir: str | os.PathLike | None = None,
    *,
    expansions: Sequence[dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
    pipeline=None,
    progress_bar: bool = False,
    call_kwargs: dict[str, Any] | None = None,
) -> list[GeneratedVideo]:
    """Generate one video per prompt into ``out_dir`` (default ``cfg.out_dir``); see the module doc.

    ``expansions``: one dict per prompt with at least ``"text"``, the prompt fed to the pipeline (the
    dict is recorded whole in the sidecar). Without it, ``cfg.expand`` (when set) expands the prompts
    that are not already done with :func:`t2v.expansion.expand_for_generation`. ``progress`` gets one
    line per video. ``pipeline``: an already loaded pipeline for ``cfg`` (e.g. from :func:`load_pipeline`;
    loaded here, only if some video is to be made, when not given; ``progress_bar``: show the pipeline's
    per-step progress bar then). ``call_kwargs``: more pipeline-call arguments, not part of the settings
    (e.g. ``callback_on_step_end``, which the web page uses for its time limit). Returns the videos in
    prompt order, skipped ones included.
    """
    from t2v.families import get_family

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise GenerateError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise GenerateError(f"prompt {i}: must be a non-empty string, got {p!r}")
    if expansions is not None:
        expansions = _check_expansions(expansions, len(prompts), "expansions")
    say = progress or (lambda _m: None)
    out = check_output_dir(out_dir if out_dir is not None else cfg.out_dir)
    resolved = resolve_model(cfg)
    spec = get_family(resolved.family)
    settings = resolved_settings(cfg, resolved.family)
    out.mkdir(parents=True, exist_ok=True)
    model_rec = resolved.record()

    videos = _plan(cfg, prompts, out, expansions, model_rec, settings)
    rank, world, _ = process_share()
    for k, v in enumerate(videos):
        v.assigned = k % world == rank  # several processes (accelerate launch): every world-th video
        if v.skipped and v.assigned:
            say(f"[{k + 1}/{len(videos)}] skipped {v.path} (already generated with these settings)")
    todo = [v for v in videos if v.assigned and not v.skipped]
    if not todo:
        return videos
    if expansions is None and cfg.expand:
        say(f"expanding {len(todo)} prompt(s) with {cfg.expand}")
        indices = sorted({v.index for v in todo})  # one expansion per prompt, shared by its seeds
        made = _expand(cfg, [prompts[i] for i in indices], resolved.family, resolved.id, resolved.revision)
        by_index = dict(zip(indices, made))
        todo_expansions = [by_index[v.index] for v in todo]
    else:
        todo_expansions = [expansions[v.index] if expansions is not None else None for v in todo]
    if pipeline is None:
        pipe, device = load_pipeline(cfg, resolved, progress_bar=progress_bar), resolve_device(cfg.device)
    else:
        pipe, device = pipeline, generator_device(pipeline)
    kwargs = {**pipeline_kwargs(settings), **(call_kwargs or {})}
    for v, exp in zip(todo, todo_expansions):
        fed = exp["text"] if exp else v.prompt
        tokens = _prompt_tokens(pipe, fed)
        if tokens is not None and tokens > spec.max_text_tokens:
            say(f"warning: prompt {v.index} has {tokens} tokens; the {spec.name} pipeline reads the first "
                f"{spec.max_text_tokens}")
        t0 = time.perf_counter()
        frames = run_pipeline(pipe, fed, kwargs, v.seed, device)
        seconds = time.perf_counter() - t0
        record = _sidecar(v, fed, exp, frames, seconds, tokens, cfg=cfg, spec=spec, device=device,
                          model_rec=model_rec, settings=settings)
        write_mp4(v.path, frames, settings["fps"])  # the sidecar last: it marks the video as finished
        _write_json_atomic(v.sidecar, record)
        v.pipeline_prompt, v.frames, v.seconds, v.record = fed, frames, seconds, record
        say(f"[{videos.index(v) + 1}/{len(videos)}] wrote {v.path} ({seconds:.1f} s)")
    return videos
