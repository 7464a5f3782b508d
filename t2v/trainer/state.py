"""What the trainer's steps share: the :class:`Run`, the result of a call, its error, the config as
plain data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from densecap.errors import CaptionerError
from t2v.train_config import TrainConfig

__all__ = ["MIXED", "RESUME_KEYS", "Forward", "Run", "TrainResult", "TrainingError", "load_train_config",
           "resolved_config"]

#: the weights' dtype for each ``training.mixed_precision``
MIXED = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: config keys that must not change when a run is resumed (the data is checked by the sampler)
RESUME_KEYS = ("model.family", "model.id", "model.revision", "training.mode", "lora.rank", "lora.alpha",
               "lora.target_modules", "optimizer.name")


class TrainingError(CaptionerError):
    """Training cannot start or go on: a bad setting, a checkpoint that does not fit, a non-finite loss."""


@dataclass
class TrainResult:
    """What a :func:`t2v.train.train` call did."""

    out_dir: Path
    global_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss, steps run by this call
    stopped_early: bool = False  # ended by stop_after_step (no final export)
    resumed_from: Path | None = None
    lora_dir: Path | None = None
    transformer_dir: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)  # saved by this call


def load_train_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The config from a YAML file (or a ``configs/train/`` preset name) plus ``KEY=VALUE`` overrides."""
    from densecap.config import load_config, resolve_config

    return load_config(TrainConfig, resolve_config("train", path) if path is not None else None, list(overrides))


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """Every setting, defaults included, as plain data that loads back into the same config."""
    data = cfg.model_dump(mode="json")
    if data["data"].get("buckets") is not None:
        data["data"].pop("num_frames", None)  # only sets the default bucket; refused next to buckets
    return data


class Forward:
    """The transformer for :meth:`ModelSpec.predict`: calls go through the accelerate wrapper (DDP
    gradient sync, autocast), attributes (``config``, ``device``, ``dtype``) come from the model."""

    def __init__(self, wrapped: torch.nn.Module, model: torch.nn.Module) -> None:
        self.__dict__["_wrapped"] = wrapped
        self.__dict__["_model"] = model

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_model"], name)


@dataclass
class Run:
    """Everything the loop, checkpoints, validation and export share."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    spec: Any
    model_id: str
    c: Any  # Components (unwrapped transformer)
    source: Any
    sampler: Any
    loader: Any
    model: Any  # the prepared (wrapped) transformer
    transformer: torch.nn.Module  # unwrapped
    named_params: dict[str, torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    generator: torch.Generator
    train_c: Any = None  # the components with the wrapped transformer (what the spec trains with)
    global_step: int = 0
    position: dict | None = None  # sampler state after the last trained batch
    validation_texts: list[str] | None = None  # expanded validation prompts (validation.expand)
    data_info: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.named_params.values())

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def is_fsdp(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP
