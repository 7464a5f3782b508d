"""The family's diffusers pipeline: loading it for a generate config (dtypes, fine-tuned transformer,
LoRA, device or CPU offload, VAE tiling and slicing, attention backend) and calling it for one video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from densecap.devices import resolve_device, torch_dtype
from t2v.generate.config import GenerateConfig, GenerateError
from t2v.generate.model_source import ResolvedModel, resolve_model

ADAPTER_NAME = "t2v_lora"


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
    dtype = torch_dtype(cfg.dtype)
    vae_dtype = torch_dtype(cfg.vae_dtype or cfg.dtype)
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
    """The pipeline-call arguments for resolved ``settings`` (see
    :func:`~t2v.generate.config.resolved_settings`), other than the prompt and the generator: shape, steps,
    guidance, negative prompt, ``output_type="np"`` and the family's extra arguments (its spec's
    ``pipeline_call_kwargs``)."""
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


def _prompt_tokens(pipe, text: str) -> int | None:
    """Tokens of ``text`` in the pipeline's tokenizer (special tokens included), None without one."""
    tok = getattr(pipe, "tokenizer", None)
    if tok is None:
        return None
    try:
        return len(tok(text, add_special_tokens=True)["input_ids"])
    except Exception:  # noqa: BLE001 -- only informative
        return None
