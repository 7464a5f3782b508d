"""What a finished run leaves: the LoRA (diffusers' format, optionally ComfyUI's too) or the fine-tuned
transformer folder, ``base_model.json`` (the base plain diffusers loads the result onto) and the model
card ``README.md``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from densecap.devices import torch_dtype
from densecap.files import normal_mode
from densecap.files import write_json_atomic as write_text_atomic  # it writes any text
from densecap.training import model_card, write_json
from t2v.train_config import TrainConfig
from t2v.trainer.checkpoint import trainable_state
from t2v.trainer.state import Run, resolved_config

__all__ = ["cast_for_save", "export", "load_trainable_into", "loadable_model_ref", "model_card_text", "write_base_model"]


def loadable_model_ref(model_id: str) -> str:
    """What ``DiffusionPipeline.from_pretrained`` accepts for ``model_id``: the absolute local folder
    for a ``tiny://`` reference or a local path, the hub id unchanged."""
    from t2v.tiny import resolve_t2v_model

    resolved = resolve_t2v_model(model_id)
    return str(Path(resolved).resolve()) if Path(resolved).exists() else resolved


def write_base_model(out: Path, cfg: TrainConfig, spec, model_id: str) -> None:
    write_json(out / "base_model.json", {
        "model_id": model_id,  # as given in the config (e.g. tiny://wan)
        # what plain diffusers loads: DiffusionPipeline.from_pretrained(this, revision=revision)
        "pretrained_model_name_or_path": loadable_model_ref(model_id),
        "revision": cfg.model.revision,
        "family": spec.name,
        "pipeline_class": spec.pipeline_class_name,
        "mode": cfg.training.mode,
        "output": "lora" if cfg.training.mode == "lora" else "transformer",
    })


def model_card_text(run: Run, model_id: str, data: dict, final_loss: float | None) -> str:
    """The README.md of the run folder: how to load the result with plain diffusers, the data, every setting."""
    cfg, spec = run.cfg, run.spec
    lora = cfg.training.mode == "lora"
    base = loadable_model_ref(model_id)
    pipe_cls = spec.pipeline_class_name
    if lora:
        usage = (f"```python\nimport torch\nfrom diffusers import {pipe_cls}\n\n"
                 f"pipe = {pipe_cls}.from_pretrained(\"{base}\")\n"
                 f"pipe.load_lora_weights(\"{run.out / 'lora'}\")\n```\n")
        what = (f"A LoRA (rank {cfg.lora.rank}, alpha {cfg.lora.alpha or cfg.lora.rank}) on "
                f"{', '.join(cfg.lora.target_modules or spec.lora_target_modules)} of the transformer, "
                "in diffusers' format (`lora/pytorch_lora_weights.safetensors`)")
    else:
        cls = type(run.transformer).__name__
        usage = (f"```python\nfrom diffusers import {pipe_cls}, {cls}\n\n"
                 f"transformer = {cls}.from_pretrained(\"{run.out / 'transformer'}\")\n"
                 f"pipe = {pipe_cls}.from_pretrained(\"{base}\", transformer=transformer)\n```\n")
        what = "A fully fine-tuned transformer (`transformer/`, diffusers format)"
    buckets = ", ".join(f"{b}: {n}" for b, n in data.get("buckets", {}).items())
    cache = f" (cache `{data['cache_dir']}`)" if data.get("cache_dir") else ""
    loss = f" (final loss {final_loss:.4g})." if final_loss is not None else "."
    body = (
        f"# {run.out.name}\n\n"
        f"{what}, fine-tuned from `{model_id}` ({spec.name} family) with densecap-t2v's trainer for "
        f"{run.global_step} steps{loss}\n\n"
        "## Data\n\n"
        f"- source: {data.get('source')}\n- path: `{data.get('path')}`{cache}\n- samples: {data.get('num_samples')}\n"
        f"- buckets (frames x height x width: samples): {buckets}\n\n"
        f"## Use\n\n{usage}"
    )
    tags = ["text-to-video", spec.name, "lora" if lora else "full-fine-tune"]
    return model_card(base_model=model_id, library="diffusers", tags=tags, body=body, settings=resolved_config(cfg))


def export(run: Run, model_id: str, data: dict, final_loss: float | None) -> tuple[Path | None, Path | None]:
    from t2v.lora import save_lora

    acc, cfg = run.accelerator, run.cfg
    dtype = torch_dtype(cfg.training.save_dtype)
    lora_dir = transformer_dir = None
    trainable = trainable_state(run) if run.is_fsdp else None
    if acc.is_main_process:
        if run.ema is not None:
            run.ema.copy_to(run.params)
        if cfg.training.mode == "lora":
            lora_dir = run.out / "lora"
            from t2v.lora import lora_state_dict

            sd = None
            if trainable is not None:  # FSDP: gathered weights, renamed to peft's names
                sd = {k.replace(".default.", "."): v for k, v in trainable.items()}
            else:
                sd = lora_state_dict(run.transformer)
            save_lora(lora_dir, run.transformer, run.spec, dtype=dtype, comfy=cfg.lora.comfy, state_dict=sd)
        else:
            transformer_dir = run.out / "transformer"
            model = run.transformer
            if trainable is not None:
                load_trainable_into(model, trainable)
            cast_for_save(model, dtype)
            tmp = run.out / ".tmp-transformer"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            normal_mode(tmp)  # safetensors writes owner-only files
            shutil.rmtree(transformer_dir, ignore_errors=True)
            os.replace(tmp, transformer_dir)
        write_text_atomic(run.out / "README.md", model_card_text(run, model_id, data, final_loss))
    acc.wait_for_everyone()
    return lora_dir, transformer_dir


def cast_for_save(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the weights to ``dtype``, except the modules the model class keeps in float32 (as
    ``from_pretrained(torch_dtype=...)`` does)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not keep.intersection(name.split(".")):
            t.data = t.data.to(dtype)


def load_trainable_into(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in sd.items():
            if k in params:
                params[k].copy_(v.to(params[k].device, params[k].dtype))
