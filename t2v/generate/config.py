"""``t2v generate``'s settings: the config models (:class:`GenerateConfig`, :class:`GenerateModelConfig`),
loading a config file or preset, the family defaults, and the settings resolved against them."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from densecap.config import StrictModel
from densecap.errors import CaptionerError
from t2v.model_ref import FamilyModelRef

Dtype = Literal["float32", "bfloat16", "float16"]


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


class GenerateError(CaptionerError):
    """Generation cannot run: a bad setting, a missing or invalid model / LoRA / transformer, a prompts
    file that cannot be read, an output that would overwrite another generation's."""


class GenerateModelConfig(FamilyModelRef):
    """The model to generate with: a base pipeline, optionally a LoRA or a fine-tuned transformer, or a
    trainer output folder (``run``) that names both."""

    family: str | None = Field(
        None, description="a registered model family (t2v.families); with run: taken from the run's base_model.json")
    id: str | None = Field(
        None, description="hub id, local folder or tiny://NAME; default: the family's default (or the run's)")
    run: str | None = Field(None, description="a `t2v train` output folder (base_model.json + lora/ or transformer/)")
    lora: str | None = Field(None, description="LoRA in diffusers format: a folder or a .safetensors file")
    lora_scale: float = Field(1.0, description="weight of the LoRA (set_adapters)")
    transformer: str | None = Field(None, description="a fine-tuned transformer folder (t2v train, full mode)")

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
