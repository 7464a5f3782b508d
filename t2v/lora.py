"""LoRA adapters through peft: inject into a family's transformer, save in diffusers' LoRA format (and,
on request, ComfyUI's key layout).

diffusers format: ``pytorch_lora_weights.safetensors`` written by the family pipeline's own
``save_lora_weights`` (e.g. ``WanPipeline.save_lora_weights``), as diffusers' LoRA training scripts
do: the peft state dict of the transformer (``get_peft_model_state_dict``: the adapter name dropped,
``blocks.0.attn1.to_q.lora_A.weight``), packed under the ``transformer.`` prefix, with the adapter's
peft config (rank, alpha, target modules) in the safetensors metadata so that ``load_lora_weights``
restores the alpha/rank scale. Load it with ``pipe.load_lora_weights(DIR)``.

ComfyUI layout (``lora_comfyui.safetensors``): the original checkpoint's module names under
``diffusion_model.`` (Wan: ``blocks.0.self_attn.q``; LTX-Video: the same names as diffusers), with
the alpha/rank scale folded into ``lora_B`` (no ``.alpha`` keys, so every loader applies scale 1).
CogVideoX has no native ComfyUI loader, so it has no such layout here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "COMFY_FILE",
    "LORA_FILE",
    "add_lora",
    "lora_state_dict",
    "save_lora",
    "to_comfy",
]

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
COMFY_FILE = "lora_comfyui.safetensors"
ADAPTER = "default"


def add_lora(
    transformer: torch.nn.Module,
    *,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: list[str],
    init: str = "default",
) -> Any:
    """Freeze ``transformer`` and inject a LoRA (peft) into ``target_modules``; the LoRA weights are made
    trainable, in float32. Returns the peft ``LoraConfig``. Raises ``ValueError`` when no module matches."""
    from peft import LoraConfig

    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=float(dropout),
        target_modules=list(target_modules),
        init_lora_weights=True if init == "default" else init,
    )
    transformer.requires_grad_(False)
    try:
        transformer.add_adapter(config, adapter_name=ADAPTER)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"LoRA target_modules {list(target_modules)} match no layer of "
                         f"{type(transformer).__name__} ({e}); linear layer names include: "
                         f"{', '.join(names[:20])}") from None
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            if p.dtype != torch.float32:
                p.data = p.data.float()
    return config


def lora_state_dict(transformer: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's naming (``blocks.0.attn1.to_q.lora_A.weight``), on CPU, contiguous."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in sd.items()}


def adapter_metadata(transformer: torch.nn.Module) -> dict[str, Any]:
    """The adapter's peft config as a plain dict (what diffusers stores in the safetensors metadata)."""
    cfg = transformer.peft_config[ADAPTER].to_dict()
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    # Dropout is for training only. A loader recreates the adapter from this config, and its new dropout
    # modules start in train mode even in an eval-mode pipeline: inference would drop activations.
    meta["lora_dropout"] = 0.0
    return meta


def pipeline_class(spec) -> type:
    import diffusers

    return getattr(diffusers, spec.pipeline_class_name)


def save_lora(
    out_dir: str | Path,
    transformer: torch.nn.Module,
    spec,
    *,
    dtype: torch.dtype | None = None,
    comfy: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the transformer's LoRA to ``out_dir/pytorch_lora_weights.safetensors`` with the family
    pipeline's ``save_lora_weights`` (and ``out_dir/lora_comfyui.safetensors`` when ``comfy``).
    ``state_dict``: the peft-named weights to write instead of the transformer's current ones (EMA)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else lora_state_dict(transformer)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    meta = adapter_metadata(transformer)
    pipeline_class(spec).save_lora_weights(
        out, transformer_lora_layers=sd, weight_name=LORA_FILE, transformer_lora_adapter_metadata=meta
    )
    if comfy:
        from safetensors.torch import save_file

        scale = float(meta["lora_alpha"]) / float(meta["r"])
        save_file(to_comfy(sd, spec, scale), str(out / COMFY_FILE), metadata={"format": "pt"})
    from densecap.files import normal_mode

    normal_mode(*(out / name for name in (LORA_FILE, COMFY_FILE) if (out / name).is_file()))  # safetensors: 0600
    return out


# --------------------------------------------------------------------------------------------------
# ComfyUI layout

def to_comfy(sd: dict[str, torch.Tensor], spec, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """peft-named LoRA weights -> ComfyUI keys (``diffusion_model.<original name>.lora_A/B.weight``, the
    name from the family's :meth:`~t2v.families.base.ModelSpec.comfy_module_name`), the alpha/rank
    ``scale`` folded into ``lora_B``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = re.match(r"^(.+)\.(lora_[AB])\.(weight|bias)$", key)
        if m is None:
            raise ValueError(f"unexpected LoRA key {key!r}")
        module, part, kind = m.groups()
        name = spec.comfy_module_name(module)
        t = value.float() * scale if part == "lora_B" else value.float()
        out[f"diffusion_model.{name}.{part}.{kind}"] = t.to(value.dtype).contiguous()
    return out
