"""The expander trainer's config (``configs/train-expander/*.yaml``) and the result of a run: data
only, shared by the training recipe and its outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from densecap.config import StrictModel

__all__ = ["IGNORED_ON_RESUME", "LoraSettings", "TrainExpanderConfig", "TrainExpanderResult"]

#: Config keys that may change between a checkpoint and its resume (they do not change the losses).
IGNORED_ON_RESUME = frozenset({"save_every", "device", "gradient_checkpointing"})


class LoraSettings(StrictModel):
    """The LoRA adapter (peft ``LoraConfig``)."""

    rank: int = Field(16, ge=1, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0.0, description="lora_alpha (the update is scaled by alpha / rank)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' (every linear layer but the output head) or module names"
    )


class TrainExpanderConfig(StrictModel):
    """Config of ``captioner train-expander`` (configs/train-expander/*.yaml)."""

    base_model: str = Field("Qwen/Qwen2.5-1.5B-Instruct", min_length=1,
                            description="instruct model: hub id, local folder or tiny://llm")
    revision: str | None = None
    prompts: str = Field("expand-v1", description="the expansion prompt file the conversations are built with")
    target_words: int = Field(100, ge=10, le=1000, description="fills the system prompt, as at inference")
    full: bool = Field(False, description="train every weight instead of a LoRA adapter (far more memory)")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    lr: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="share of the steps spent warming up")
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8, description="tokens; longer examples are dropped (and counted)")
    max_grad_norm: float = Field(1.0, gt=0.0)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on a GPU that supports it, else float32")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~30% slower")
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of the pairs held out for eval_loss")
    save_every: int | None = Field(200, ge=1, description="checkpoint every N steps (and at the last step)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N (got {v!r})")
        return v


@dataclass
class TrainExpanderResult:
    out: Path
    model_dir: Path | None
    adapter_dir: Path | None
    expand_config: Path | None
    step: int
    total_steps: int
    train_pairs: int
    eval_pairs: int
    dropped: int
    final_loss: float | None
    eval_loss: float | None
    interrupted: bool = False
    resumed_from: Path | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
